"""The one entry point: ``tomsparse <command> ...``.

Commands follow the pipeline: ``info`` (model and data facts), ``tasks`` / ``eval`` (ToM
evaluation), ``perplexity``, ``scores`` (sensitivity scores), ``sweep`` (masks, perturbation
and evaluation over m), ``summarize`` (tables and report of a sweep folder), ``run`` (the main
job: all of it).
Every command prints the library versions and its resolved options first. Every failure of
every command goes through ``main``'s one handler: bad input, a file-system problem (missing,
not a folder, not writable, disk full, read-only) or a damaged file ends in one line on stderr,
``tomsparse: error: ...``, with exit code 2 (``errors.user_message``); an unexpected error shows
its traceback and asks for a bug report, exit code 1; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import traceback

from tomsparse import __version__
from tomsparse.cli import (
    analyze,
    cache,
    compare,
    frontier,
    info,
    perplexity,
    plant,
    run,
    scores,
    sweep,
    tasks,
)
from tomsparse.cli import eval as eval_cmd
from tomsparse.cli.options import recorded_options
from tomsparse.errors import UserError, bug_report_line, user_message
from tomsparse.manifest import library_versions


def _print_header(args: argparse.Namespace) -> None:
    versions = library_versions()
    print(f"tomsparse {__version__} | " + " ".join(f"{k} {v}" for k, v in versions.items()
                                                    if k not in ("tomsparse", "platform")))
    options = {k: v for k, v in recorded_options(args).items() if k != "command"}
    print("options: " + json.dumps(options, sort_keys=True, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tomsparse",
        description="Find, perturb and analyse the sparse weights a causal LM's Theory-of-Mind "
                    "ability depends on (Wu et al., npj AI 2025).")
    parser.add_argument("--version", action="version", version=f"tomsparse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (info.add_parser, tasks.add_parser, eval_cmd.add_parser, perplexity.add_parser,
                scores.add_parser, sweep.add_sweep_parser, sweep.add_summarize_parser,
                run.add_parser, analyze.add_parser, compare.add_parser, frontier.add_parser,
                cache.add_parser, plant.add_parser):
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # bad options: argparse's usage error, exit code 2
    try:
        _print_header(args)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("tomsparse: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        if not _stdout_is_gone():
            return report_error(exc)
        # `tomsparse ... | head`: the reader is gone, nothing to say (and nothing to flush)
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 141
    except Exception as exc:  # the one error path of every command
        return report_error(exc)


def _stdout_is_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, no file descriptor
        return False


def report_error(exc: BaseException) -> int:
    """One line and exit code 2 for what the user can fix (``errors.user_message``); for
    anything else the traceback and a line asking for a bug report, exit code 1."""
    try:
        sys.stdout.flush()  # what the command printed comes before the error
    except OSError:
        pass
    message = user_message(exc)
    if message is not None:
        print(f"tomsparse: error: {message}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, UserError) else 2
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(bug_report_line(__version__), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
