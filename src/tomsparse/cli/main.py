"""The one entry point: ``tomsparse <command> ...``.

Commands follow the pipeline: ``info`` (model and data facts), ``tasks`` / ``eval`` (ToM
evaluation), ``perplexity``, ``scores`` (sensitivity scores), ``sweep`` (masks, perturbation
and evaluation over m), ``summarize`` (tables and report of a sweep folder), ``run`` (the main
job: all of it).
Every command prints the library versions and its resolved options first, and turns bad
input into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from tomsparse import __version__
from tomsparse.cli import (
    analyze,
    compare,
    frontier,
    info,
    perplexity,
    run,
    scores,
    sweep,
    tasks,
)
from tomsparse.cli import eval as eval_cmd
from tomsparse.cli.options import recorded_options
from tomsparse.errors import UserError
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
                run.add_parser, analyze.add_parser, compare.add_parser, frontier.add_parser):
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _print_header(args)
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"tomsparse: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tomsparse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
