"""``tomsparse perplexity``: a model's perplexity on a corpus, optionally written with its
manifest to a JSON file."""

from __future__ import annotations

import argparse

from tomsparse.cli.options import add_model_args, load_model_from, recorded_options
from tomsparse.data.corpora import DEFAULT_EVAL, load_corpus
from tomsparse.evaluate.perplexity import perplexity
from tomsparse.manifest import build_manifest, write_json


def cmd_perplexity(args: argparse.Namespace) -> int:
    corpus = load_corpus(args.corpus)
    lm = load_model_from(args)
    res = perplexity(lm.model, lm.tokenizer, corpus, seqlen=args.seqlen,
                     max_tokens=args.max_tokens, batch_size=args.batch_size, progress=True)
    print(f"perplexity of {lm.name} on {corpus.name}: {res.perplexity:.3f} "
          f"({res.windows} windows x {res.seqlen} tokens, {res.seconds:.1f} s)")
    print(f"protocol: {res.protocol}")
    if args.out:
        write_json(args.out, build_manifest("perplexity", model=lm.name,
                                            model_fingerprint=lm.fingerprint,
                                            options=recorded_options(args), result=res.as_dict()))
        print(f"wrote {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity on a corpus (reference protocol)")
    add_model_args(p)
    p.add_argument("--corpus", default=DEFAULT_EVAL, help=f"corpus name or file (default: {DEFAULT_EVAL})")
    p.add_argument("--seqlen", type=int, default=2048, help="window length, capped at the model's context")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=None,
                   help="use only the first N tokens (quick runs)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=4)
    p.add_argument("--out", default=None, help="write the result and its manifest to this JSON file")
    p.set_defaults(handler=cmd_perplexity)
