"""``tomsparse cache verify``: check the converted offline models in full (every file's
sha256 against its completion record), and with ``--rebuild`` convert again the ones found
damaged. Loading a model hashes each file in full once per process; this reads every byte
again, whatever the process saw."""

from __future__ import annotations

import argparse

from tomsparse.lm.gguf import OFFLINE_MODELS, convert_offline_model, verify_cache


def cmd_cache(args: argparse.Namespace) -> int:
    names = [args.model] if args.model else list(OFFLINE_MODELS)
    damaged = []
    for name in names:
        report = verify_cache(name)
        print(report.summary())
        if report.status in ("damaged", "incomplete"):
            damaged.append(name)
    if damaged and args.rebuild:
        for name in damaged:  # the load path's own check finds the damage and rebuilds
            convert_offline_model(name)
            after = verify_cache(name)
            print(after.summary())
            if not after.ok:
                return 1
        print(f"rebuilt {len(damaged)} converted model(s): {', '.join(damaged)}")
        return 0
    if damaged:
        print(f"{len(damaged)} converted model(s) are damaged ({', '.join(damaged)}); run "
              "`tomsparse cache verify --rebuild` to rebuild them now, or the next load of "
              "each will (every load hashes the converted files in full)")
    return 1 if damaged else 0


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="check the converted offline models (full sha256)")
    p.add_argument("action", choices=["verify"])
    p.add_argument("--model", default=None, choices=list(OFFLINE_MODELS),
                   help="one offline model (default: all)")
    p.add_argument("--rebuild", action="store_true",
                   help="convert again, now, every model found damaged (needs its GGUF "
                        "package installed)")
    p.set_defaults(handler=cmd_cache)
