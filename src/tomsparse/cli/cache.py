"""``tomsparse cache verify``: check the converted offline models in full (every file's
sha256 against its completion record). Loading a model checks a sample of each file; this
checks all of it."""

from __future__ import annotations

import argparse

from tomsparse.lm.gguf import OFFLINE_MODELS, verify_cache


def cmd_cache(args: argparse.Namespace) -> int:
    names = [args.model] if args.model else list(OFFLINE_MODELS)
    damaged = 0
    for name in names:
        report = verify_cache(name)
        print(report.summary())
        damaged += report.status in ("damaged", "incomplete")
    if damaged:
        print(f"{damaged} converted model(s) are damaged; the next load of each rebuilds it")
    return 1 if damaged else 0


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="check the converted offline models (full sha256)")
    p.add_argument("action", choices=["verify"])
    p.add_argument("--model", default=None, choices=list(OFFLINE_MODELS),
                   help="one offline model (default: all)")
    p.set_defaults(handler=cmd_cache)
