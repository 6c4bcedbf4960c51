"""``tomsparse perplexity``: a model's perplexity on a corpus, optionally written with its
manifest to a JSON file."""

from __future__ import annotations

import argparse

from tomsparse.cli.options import (
    add_batch_size,
    add_model_args,
    load_model_from,
    positive_int,
    recorded_options,
    window_len,
)
from tomsparse.data.corpora import DEFAULT_EVAL, load_corpus
from tomsparse.errors import UserError
from tomsparse.evaluate.perplexity import PROTOCOLS, REFERENCE_BATCH, perplexity
from tomsparse.files import check_output_file, write_json
from tomsparse.manifest import build_manifest
from tomsparse.lm.registry import model_identity

DEFAULT_BATCH = 4


def cmd_perplexity(args: argparse.Namespace) -> int:
    if args.out:
        check_output_file(args.out, example="perplexity.json")  # before any work
    # The reference protocol averages over batches of 2 windows: its batch size is part of
    # the number, so another one is refused rather than silently replaced.
    if args.protocol == "reference":
        if args.batch_size not in (None, REFERENCE_BATCH):
            raise UserError(f"--protocol reference averages over batches of {REFERENCE_BATCH} "
                            f"windows, so --ppl-batch-size {args.batch_size} would change "
                            "its number; leave --ppl-batch-size out")
        args.batch_size = REFERENCE_BATCH
    elif args.batch_size is None:
        args.batch_size = DEFAULT_BATCH  # recorded as it ran
    corpus = load_corpus(args.corpus)
    lm = load_model_from(args)
    res = perplexity(lm.model, lm.tokenizer, corpus, seqlen=args.seqlen,
                     max_tokens=args.max_tokens, batch_size=args.batch_size, progress=True,
                     protocol=args.protocol)
    print(f"perplexity of {lm.name} on {corpus.name}: {res.perplexity:.3f} "
          f"({res.windows} windows x {res.seqlen} tokens, {res.seconds:.1f} s)")
    print(f"protocol ({res.protocol}): {res.protocol_text}")
    if args.out:
        write_json(args.out, build_manifest("perplexity", **model_identity(lm),
                                            options=recorded_options(args), result=res.as_dict()))
        print(f"wrote {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity on a corpus (GPTQ / Wanda windows)")
    add_model_args(p)
    p.add_argument("--corpus", default=DEFAULT_EVAL, help=f"corpus name or file (default: {DEFAULT_EVAL})")
    p.add_argument("--seqlen", type=window_len, default=2048,
                   help="window length, >= 2, capped at the model's context (default 2048)")
    p.add_argument("--max-tokens", dest="max_tokens", type=positive_int, default=None,
                   help="use only the first N tokens, at least one window (quick runs)")
    add_batch_size(p, "ppl", "batch_size", None,
                   f"windows per forward pass, >= 1 (default {DEFAULT_BATCH}; "
                   f"--protocol reference: {REFERENCE_BATCH}, its own)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="tomsparse",
                   help="tomsparse (default): blank records dropped, no special tokens, mean over "
                        "windows; reference: every record, default special tokens, mean over "
                        "batches of 2 windows (the reference code's numbers)")
    p.add_argument("--out", default=None, help="write the result and its manifest to this JSON file")
    p.set_defaults(handler=cmd_perplexity)
