"""``tomsparse scores [compute|import|export]``: compute a score set into a store (also
data-parallel under ``torchrun``), or convert the reference's ``layer_<i>.pt`` chunk folders
to and from a store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tomsparse.cli.options import (
    add_score_arg,
    add_score_prompts_arg,
    add_batch_size,
    add_model_args,
    load_model_from,
    nonneg_int,
    positive_int,
    seed_int,
)
from tomsparse.data.corpora import DEFAULT_GENERIC
from tomsparse.data.score_samples import (DATASETS, ScoreDataConfig, ScoreDataset,
                                          build_dataset, check_prompt_pool)
from tomsparse.errors import UserError
from tomsparse.lm.registry import load_model
from tomsparse.scores.compute import METHODS, ScoreResult, check_score, compute_score_set
from tomsparse.scores.distributed import dist_world, process_group, rank_device
from tomsparse.scores.reference_chunks import export_reference_chunks, import_reference_chunks
from tomsparse.scores.store import (
    LAYOUTS,
    STORE_DTYPES,
    check_destination,
    check_store_destination,
)


def _summary(result: ScoreResult, dataset: ScoreDataset, out) -> str:
    zeros = sum(result.zero_counts.values())
    total = sum(t.numel() for t in result.scores.values())
    return (f"scores: {len(result.scores)} matrices, {result.nsamples} samples "
            f"({dataset.info.get('dataset')}, supervision {dataset.info.get('supervision')}), "
            f"{result.supervised_tokens} supervised tokens, mean loss {result.mean_loss:.4f}, "
            f"{result.score} scores, {result.method} method, {result.accumulation_dtype} sums, "
            f"{zeros:,} of {total:,} entries exactly zero ({100 * zeros / max(total, 1):.3f}%), "
            f"{result.wall_time_s:.1f} s on {result.world_size} process(es)"
            + (f"; wrote {out}" if out else ""))


# What --reference-protocol sets for a score set, unless given explicitly (cli.options.FAITHFUL
# holds the same values for `run`): fp16 squares and sums, the reference's C4 windows, c4.
REFERENCE_SCORES = dict(reference_fp16=True, reference_windows=True, corpus="c4")


def data_config(args: argparse.Namespace) -> ScoreDataConfig:
    if getattr(args, "reference_protocol", False):
        for key, value in REFERENCE_SCORES.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.reference_fp16 = bool(args.reference_fp16)
    args.reference_windows = bool(args.reference_windows)
    args.corpus = args.corpus or DEFAULT_GENERIC
    # The reference supervises only the last prompt token; --reference-fp16 follows it unless
    # --supervision says otherwise.
    supervision = args.supervision or ("last-token" if args.reference_fp16 else "answer")
    return ScoreDataConfig(dataset=args.dataset, nsamples=args.nsamples, seed=args.seed,
                           seqlen=args.seqlen, prompts=args.data_path or "builtin",
                           supervision=supervision, corpus=args.corpus,
                           windows="reference" if args.reference_windows else "tomsparse",
                           select=args.score_prompts)


def _compute(args: argparse.Namespace) -> int:
    if not args.out:
        raise UserError("scores needs --out DIR (the score store to write)")
    data = data_config(args)
    check_score(args.score, args.reference_fp16)
    # Refuse a destination that cannot take this store before anything is loaded or computed:
    # a file, an unwritable folder, another kind of output, a store of the other dataset or
    # of another score...
    check_store_destination(args.out, overwrite=args.overwrite, dataset=data.dataset,
                            score=args.score)
    check_prompt_pool(data)
    method = args.method
    if args.reference_fp16 and method != "loop":
        print("--reference-fp16: using the plain loop (one sample per backward), as the "
              "reference does", file=sys.stderr)
        method = "loop"
    with process_group():
        rank = dist_world()[1]
        # The reference runs its model in fp16; that is part of reproducing its numbers.
        dtype = args.dtype or ("float16" if args.reference_fp16 else "float32")
        device = rank_device(args.device)
        lm = load_model(args.model, device=device, dtype=dtype, device_map=args.device_map,
                        revision=args.revision, cache_dir=args.cache_dir)
        dataset = build_dataset(data, lm.tokenizer, lm.model)
        # ... and a store of another model or other samples, now that both are known.
        check_store_destination(args.out, overwrite=args.overwrite, fingerprint=lm.fingerprint,
                                identity=dataset.info.get("samples_sha256"), model=lm.name,
                                dataset=data.dataset, score=args.score)
        result = compute_score_set(
            lm, dataset, out=args.out, method=method, batch_size=args.batch_size,
            reference_fp16=args.reference_fp16, store_dtype=args.store_dtype,
            layout=args.store_layout, shard_size_mb=args.shard_size_mb, progress=rank == 0,
            score=args.score, device=str(lm.device), device_map=args.device_map)
        if rank == 0:
            print(_summary(result, dataset, args.out))
    return 0


def _import(args: argparse.Namespace) -> int:
    if not args.src or not args.out:
        raise UserError("scores import needs --from REFERENCE_CHUNKS and --out DIR")
    old = check_store_destination(args.out, overwrite=args.overwrite)
    # Without --overwrite, only a store imported before from these chunks is replaced.
    if old is not None and not args.overwrite and not (
            old.get("source") == "reference chunks"
            and old.get("imported_from") == str(Path(args.src).resolve())):
        raise UserError(f"{args.out} already holds a score store of {old.get('model', '?')} "
                        f"({old.get('source') or old.get('dataset') or '?'} scores), not an "
                        f"import of {args.src}; choose another --out, or pass --overwrite to "
                        "replace it")
    # The fingerprint is defined on the loaded model, so import loads it with its weights.
    lm = load_model_from(args, device="cpu", dtype=args.dtype or "float32")
    check_store_destination(args.out, overwrite=args.overwrite, fingerprint=lm.fingerprint,
                            model=lm.name)
    path = import_reference_chunks(args.src, args.out, lm, model_name=lm.name,
                                   store_dtype=args.store_dtype, layout=args.store_layout)
    print(f"imported {args.src} for {lm.name} into {args.out} ({path.name})")
    return 0


def _export(args: argparse.Namespace) -> int:
    if not args.src or not args.out:
        raise UserError("scores export needs --from SCORE_STORE and --out DIR")
    check_destination(args.out)
    export_reference_chunks(args.src, args.out)
    print(f"exported {args.src} as reference chunks (layer_<i>.pt, fp16) into {args.out}")
    return 0


def cmd_scores(args: argparse.Namespace) -> int:
    return {"compute": _compute, "import": _import, "export": _export}[args.action](args)


def add_parser(sub) -> None:
    p = sub.add_parser("scores", help="sensitivity scores (per-sample squared gradients, or "
                                      "--score snip|wanda)")
    p.add_argument("action", nargs="?", default="compute", choices=["compute", "import", "export"])
    add_model_args(p)
    p.add_argument("--dataset", choices=list(DATASETS), default="tom",
                   help="tom (ToM prompts with answers, default), generic (corpus windows), "
                        "or a task-swapped set for the ToM side of a mask (issue 37): "
                        "tom-nobelief (the same split's prompts that need no belief: reality "
                        "probes and true-belief controls) or format-control (generated object "
                        "tracking and counting in the same prompt format)")
    add_score_arg(p)
    add_score_prompts_arg(p)
    p.add_argument("--data_path", "--data-path", dest="data_path", default=None,
                   help="ToM prompt file (JSON list / JSONL of {txt, answer}); default: built-in train split")
    p.add_argument("--corpus", default=None,
                   help=f"generic corpus (default: {DEFAULT_GENERIC}; c4 with "
                        "--reference-protocol)")
    p.add_argument("--nsamples", type=positive_int, default=100)
    p.add_argument("--seqlen", type=nonneg_int, default=None,
                   help="generic: window length (default 128); tom: keep at most the last L tokens "
                        "of each prompt (default 0 = whole prompts, up to the model's context)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--supervision", choices=["answer", "last-token"], default=None,
                   help="tom: supervise the appended answer (default) or only the prompt's last "
                        "token (the reference's; default with --reference-fp16)")
    p.add_argument("--reference-fp16", dest="reference_fp16",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="reproduce the reference code: fp16 model (unless --dtype), plain loop, "
                        "per-sample gradients squared and summed in fp16, last-token "
                        "supervision (unless --supervision)")
    p.add_argument("--reference-windows", dest="reference_windows",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="generic: draw the windows by the reference's C4 recipe (no special "
                        "tokens, documents of >= seqlen tokens, inclusive start)")
    p.add_argument("--reference-protocol", dest="reference_protocol", action="store_true",
                   help="the reference's score set for every option left unset: "
                        "--reference-fp16, --reference-windows, --corpus c4 (README: "
                        "tomsparse and the reference)")
    add_batch_size(p, "score", "batch_size", 8,
                   "samples per backward pass of the batched method, >= 1 (default 8)")
    p.add_argument("--method", choices=list(METHODS), default="batched",
                   help="batched (default): B samples per backward pass (--score wanda: "
                        "per forward pass), holding B samples' activations; loop: one sample per pass, holding one sample's "
                        "activations and the weight gradients (on the default model the least "
                        "memory, 10-20%% slower on CPU)")
    p.add_argument("--store-dtype", dest="store_dtype", choices=list(STORE_DTYPES),
                   default="float32")
    p.add_argument("--store-layout", dest="store_layout", choices=list(LAYOUTS),
                   default="per-layer", help="one safetensors file per layer, or size-limited shards")
    p.add_argument("--shard-size-mb", dest="shard_size_mb", type=positive_int, default=2048)
    # Scores default to fp32 weights, but --reference-fp16 defaults to the reference's fp16.
    p.set_defaults(dtype=None)
    p.add_argument("--from", dest="src", default=None, help="import/export source folder")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a score store already in --out that holds the scores of "
                        "another model or other data (refused otherwise, before any work)")
    p.set_defaults(handler=cmd_scores)
