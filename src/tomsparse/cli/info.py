"""``tomsparse info``: a model's facts (parameters, target matrices per role, attention
geometry, RoPE) and the registered corpora."""

from __future__ import annotations

import argparse

from tomsparse.cli.options import add_model_args, load_model_from
from tomsparse.data.corpora import REGISTERED, load_corpus
from tomsparse.errors import UserError
from tomsparse.lm.registry import print_model_facts


def cmd_info(args: argparse.Namespace) -> int:
    lm = load_model_from(args)
    print_model_facts(lm)
    print("corpora:")
    for name, what in REGISTERED.items():
        if name.startswith("wiki-offline"):
            try:
                c = load_corpus(name)
                print(f"  {name:26s} {len(c.texts):>6,} docs {c.num_chars / 1e6:6.2f}M chars  {what}")
            except UserError as exc:
                print(f"  {name:26s} unavailable: {exc}")
        else:
            print(f"  {name:26s} {what}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="model facts (parameters, matrices per role, RoPE) and corpora")
    add_model_args(p)
    p.set_defaults(handler=cmd_info)
