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

from . import __version__
from .errors import UserError


def _print_header(args) -> None:
    from .manifest import library_versions, options_dict

    versions = library_versions()
    print(f"tomsparse {__version__} | " + " ".join(f"{k} {v}" for k, v in versions.items()
                                                    if k not in ("tomsparse", "platform")))
    opts = {k: v for k, v in options_dict(args).items() if k not in ("command", "handler")}
    print("options: " + json.dumps(opts, sort_keys=True, default=str))


def seed_list(text: str) -> list[int]:
    """``--random-seeds 0,1,2`` -> [0, 1, 2]."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 0,1") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registered offline model, local folder or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: float32)")
    p.add_argument("--device-map", dest="device_map", default=None,
                   help="passed to from_pretrained, e.g. 'auto' to spread a big model over GPUs")


# ---------------------------------------------------------------- info
def cmd_info(args) -> int:
    from .corpora import REGISTERED, load_corpus
    from .models import load_model

    lm = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
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


def print_model_facts(lm) -> None:
    from .models import OFFLINE_MODELS

    desc, model = lm.description, lm.model
    total = sum(p.numel() for p in model.parameters())
    target = sum(m.numel for m in desc.matrices)
    g = desc.geometry
    print(f"\nmodel: {lm.name}  ({type(model).__name__}, from {lm.source})")
    print(f"  fingerprint: {lm.fingerprint}")
    print(f"  parameters: {total:,} ({total / 1e6:.1f}M); in target matrices: {target:,} "
          f"({100 * target / total:.1f}%)")
    print(f"  layers: {desc.num_layers} (blocks at {desc.blocks_path}); hidden {g.hidden_size}; "
          f"heads {g.num_heads}, KV heads {g.num_kv_heads}, head size {g.head_dim}; "
          f"tied embeddings: {desc.tied_embeddings}")
    print("  matrices per role (out x in, count):")
    for role in desc.roles():
        ms = [m for m in desc.matrices if m.role == role]
        print(f"    {role:5s} {ms[0].shape[0]:>6} x {ms[0].shape[1]:<6} x{len(ms):<3} "
              f"{ms[0].param_name}{'' if ms[0].rows == slice(0, ms[0].shape[0]) else f' rows {ms[0].rows.start}:{ms[0].rows.stop}'}")
    if desc.rope:
        r = desc.rope
        print(f"  RoPE: theta {r.theta:g}, rotary dim {r.rotary_dim} ({r.num_pairs} pairs), layout "
              f"'{r.layout}' (pair j = dims {r.pair_dims(0)[0]}+j and {r.pair_dims(0)[1]}+j)"
              if r.layout == "half" else f"  RoPE: theta {r.theta:g}, interleaved pairs")
        if len(r.thetas_by_layer_type) > 1:
            print(f"    bases by layer type: {r.thetas_by_layer_type}")
    else:
        print("  RoPE: none (absolute or learned positions)")
    print("\noffline models: " + ", ".join(f"{k} ({v.licence})" for k, v in OFFLINE_MODELS.items()))


# ---------------------------------------------------------------- perplexity
def cmd_perplexity(args) -> int:
    from .corpora import load_corpus
    from .manifest import build_manifest, options_dict, write_json
    from .models import load_model
    from .perplexity import perplexity

    corpus = load_corpus(args.corpus)
    lm = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    res = perplexity(lm.model, lm.tokenizer, corpus, seqlen=args.seqlen,
                     max_tokens=args.max_tokens, batch_size=args.batch_size, progress=True)
    print(f"perplexity of {lm.name} on {corpus.name}: {res.perplexity:.3f} "
          f"({res.windows} windows x {res.seqlen} tokens, {res.seconds:.1f} s)")
    print(f"protocol: {res.protocol}")
    if args.out:
        write_json(args.out, build_manifest("perplexity", model=lm.name,
                                            model_fingerprint=lm.fingerprint,
                                            options=options_dict(args), result=res.as_dict()))
        print(f"wrote {args.out}")
    return 0


def _perplexity_parser(sub) -> None:
    from .corpora import DEFAULT_EVAL

    p = sub.add_parser("perplexity", help="perplexity on a corpus (reference protocol)")
    _add_model_args(p)
    p.add_argument("--corpus", default=DEFAULT_EVAL, help=f"corpus name or file (default: {DEFAULT_EVAL})")
    p.add_argument("--seqlen", type=int, default=2048, help="window length, capped at the model's context")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=None,
                   help="use only the first N tokens (quick runs)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=4)
    p.add_argument("--out", default=None, help="write the result and its manifest to this JSON file")
    p.set_defaults(handler=cmd_perplexity)


# ---------------------------------------------------------------- tasks / eval
def _tasks_parser(sub) -> None:
    p = sub.add_parser("tasks", help="the built-in ToM task bank: export or show")
    p.add_argument("action", choices=["export", "show"])
    p.add_argument("--tasks", default="builtin", help="builtin, builtin:train, tomi or a file")
    p.add_argument("--out", default=None, help="export folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-n", dest="n", type=int, default=3, help="prompts to show per family")
    p.set_defaults(handler=_lazy("tomsparse.tasks", "cmd_tasks"))


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="ToM evaluation of a model")
    _add_model_args(p)
    p.add_argument("--tasks", default="builtin", help="builtin, tomi, or a .py/.json task file")
    p.add_argument("--scoring", default="likelihood", choices=["likelihood", "generate", "greedy"])
    p.add_argument("--reps", type=int, default=None,
                   help="repetitions of generate scoring (default: 5 for generate, as the "
                        "reference; likelihood and greedy run once)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--backend", default="hf", choices=["hf", "vllm", "auto"],
                   help="generation backend (vllm: optional extra; auto: vllm on a GPU if installed)")
    p.add_argument("--answer-span", dest="answer_span", default="word", choices=["word", "full"],
                   help="likelihood: score the answer's first word (default) or all of it")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N tasks per family")
    p.add_argument("--out", default=None, help="output folder")
    p.set_defaults(handler=_lazy("tomsparse.evaluate", "cmd_eval"))


# ---------------------------------------------------------------- scores
def _scores_parser(sub) -> None:
    from .corpora import DEFAULT_GENERIC

    p = sub.add_parser("scores", help="sensitivity scores (per-sample squared gradients)")
    p.add_argument("action", nargs="?", default="compute", choices=["compute", "import", "export"])
    _add_model_args(p)
    p.add_argument("--dataset", choices=["tom", "generic"], default="tom")
    p.add_argument("--data_path", "--data-path", dest="data_path", default=None,
                   help="ToM prompt file (JSON list / JSONL of {txt, answer}); default: built-in train split")
    p.add_argument("--corpus", default=DEFAULT_GENERIC, help="generic corpus")
    p.add_argument("--nsamples", type=int, default=100)
    p.add_argument("--seqlen", type=int, default=None,
                   help="generic: window length (default 128); tom: keep at most the last L tokens "
                        "of each prompt (default 0 = whole prompts, up to the model's context)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--supervision", choices=["answer", "last-token"], default=None,
                   help="tom: supervise the appended answer (default) or only the prompt's last "
                        "token (the reference's; default with --reference-fp16)")
    p.add_argument("--reference-fp16", dest="reference_fp16", action="store_true",
                   help="reproduce the reference code: fp16 model (unless --dtype), plain loop, "
                        "per-sample gradients squared and summed in fp16")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    p.add_argument("--method", choices=["batched", "loop"], default="batched",
                   help="batched (default): B samples per backward pass, holding B samples' "
                        "activations; loop: one sample per pass, holding one sample's "
                        "activations and the weight gradients (on the default model the least "
                        "memory, 10-20%% slower on CPU)")
    p.add_argument("--store-dtype", dest="store_dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--store-layout", dest="store_layout", choices=["per-layer", "sharded"],
                   default="per-layer", help="one safetensors file per layer, or size-limited shards")
    p.add_argument("--shard-size-mb", dest="shard_size_mb", type=int, default=2048)
    # Scores default to fp32 weights, but --reference-fp16 defaults to the reference's fp16.
    p.set_defaults(dtype=None)
    p.add_argument("--from", dest="src", default=None, help="import/export source folder")
    p.add_argument("--out", default=None, help="output folder")
    p.set_defaults(handler=_lazy("tomsparse.scores", "cmd_scores"))


# ---------------------------------------------------------------- run (the main job)
def cmd_run(args) -> int:
    from .pipeline import run_main_job

    return run_main_job(args)


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    from .corpora import DEFAULT_EVAL
    from .pipeline import parse_m_list

    p.add_argument("--m_list", "--m-list", dest="m_list", type=parse_m_list, default=None,
                   help="comma-separated m values (fraction of each matrix), e.g. 0,1e-5,3e-5")
    p.add_argument("--m_start", "--m-start", dest="m_start", type=float, default=None,
                   help="the reference's grid: m_start, m_start + m_step, ..., m_end")
    p.add_argument("--m_end", "--m-end", dest="m_end", type=float, default=None)
    p.add_argument("--m_step", "--m-step", dest="m_step", type=float, default=None)
    p.add_argument("--controls", default="random,tom-only",
                   help="masks run beside the difference mask: random, tom-only, generic-only "
                        "(comma-separated) or none (default: random,tom-only)")
    p.add_argument("--random-seeds", dest="random_seeds",
                   type=seed_list, default=None,
                   help="seeds of the random control, e.g. 0,1")
    p.add_argument("--perturbation", choices=["mean", "reference-mean", "zero"], default="mean")
    p.add_argument("--scale", type=float, default=0.0, help="s in mean + s * (w - mean)")
    p.add_argument("--reference-ties", dest="reference_ties", action="store_true",
                   help="the reference's strict-threshold top-k (ties dropped)")
    p.add_argument("--scoring", default=None, choices=["likelihood", "generate", "greedy"],
                   help="ToM scoring (default: likelihood)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default: 1)")
    p.add_argument("--tasks", default="builtin")
    p.add_argument("--task-limit", dest="task_limit", type=int, default=None,
                   help="evaluate the first N tasks per family")
    p.add_argument("--corpus", default=DEFAULT_EVAL, help="perplexity corpus")
    p.add_argument("--ppl-max-tokens", dest="ppl_max_tokens", type=int, default=None)
    p.add_argument("--export-model", dest="export_model", type=float, default=None,
                   help="write the perturbed model (difference mask) for this m")


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="the m-sweep from two score stores: masks, perturbation, "
                                     "ToM evaluation and perplexity per point (resumable)")
    _add_model_args(p)
    p.add_argument("--scores-tom", "--scores_tom", dest="scores_tom", default=None,
                   help="ToM score store (from `tomsparse scores --dataset tom`)")
    p.add_argument("--scores-generic", "--scores_generic", dest="scores_generic", default=None,
                   help="generic score store (from `tomsparse scores --dataset generic`)")
    _add_sweep_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of generate scoring")
    p.add_argument("--batch-size", dest="eval_batch_size", type=int, default=16,
                   help="evaluation batch size")
    p.add_argument("--out", required=True, help="sweep folder (an existing one is resumed)")
    p.set_defaults(handler=_lazy("tomsparse.sweep", "cmd_sweep"))


def _summarize_parser(sub) -> None:
    p = sub.add_parser("summarize", help="re-read a sweep folder (or the reference's tom/ "
                                         "folder) and write the summary tables and report")
    p.add_argument("folder", nargs="?", default=None,
                   help="a sweep folder (with points/) or a reference output folder (with tom/)")
    p.add_argument("--root", default=None, help="the reference's spelling of the folder")
    p.add_argument("--reps", type=int, default=None, help="expected reps (checked, reference layout)")
    p.add_argument("--out_csv", "--out-csv", dest="out_csv", default=None,
                   help="also write the summary here (reference layout default: "
                        "<folder>/tom_summary.csv)")
    p.set_defaults(handler=_lazy("tomsparse.sweep", "cmd_summarize"))


def _run_parser(sub) -> None:
    from .corpora import DEFAULT_GENERIC

    p = sub.add_parser("run", help="the main job: scores, sweep, summary, plots and report")
    _add_model_args(p)
    _add_sweep_args(p)
    p.add_argument("--quick", action="store_true", help="a ~3-minute version for a first look")
    p.add_argument("--no-analysis", dest="analysis", action="store_false",
                   help="skip the mechanistic analyses at the end (see `tomsparse analyze`)")
    p.add_argument("--analysis-prompts", dest="analysis_prompts", type=int, default=None,
                   help="ToM prompts the analyses run on (default 16; --quick 8)")
    p.add_argument("--reference-protocol", dest="reference_protocol", action="store_true",
                   help="the reference's sizes: 100 + 100 samples, m = 0..5e-5 step 2e-6 "
                        "(26 values), generate scoring with 5 reps, every task, the whole "
                        "perplexity corpus (a GPU job)")
    p.add_argument("--out", default="runs/default", help="output folder (default: runs/default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nsamples-tom", dest="nsamples_tom", type=int, default=None)
    p.add_argument("--nsamples-generic", dest="nsamples_generic", type=int, default=None)
    p.add_argument("--seqlen", type=int, default=None, help="generic window length")
    p.add_argument("--data_path", "--data-path", dest="data_path", default=None)
    p.add_argument("--generic-corpus", dest="generic_corpus", default=DEFAULT_GENERIC)
    p.add_argument("--supervision", choices=["answer", "last-token"], default="answer")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8,
                   help="samples per backward pass of the batched score method")
    p.add_argument("--method", choices=["batched", "loop"], default="batched",
                   help="score method (see `tomsparse scores --help`)")
    p.set_defaults(handler=cmd_run)


def _analyze_parser(sub) -> None:
    p = sub.add_parser("analyze", help="mechanistic analyses at one m: mask anatomy, dominant "
                                       "rotary frequencies, attention sinks, q-k geometry, "
                                       "massive activations")
    _add_model_args(p)
    p.set_defaults(model=None, dtype=None)  # with --run, taken from the run
    p.add_argument("--run", default=None,
                   help="a finished `tomsparse run` folder: model, scores and options from it")
    p.add_argument("--scores-tom", "--scores_tom", dest="scores_tom", default=None)
    p.add_argument("--scores-generic", "--scores_generic", dest="scores_generic", default=None)
    p.add_argument("--m", type=float, default=None,
                   help="fraction of each matrix to perturb (default with --run: its largest m)")
    p.add_argument("--modes", default="difference,random",
                   help="mask modes compared with the baseline (default: difference,random)")
    p.add_argument("--random-seeds", dest="random_seeds",
                   type=seed_list, default=None,
                   help="seeds of the random control (default: the run's, else 0)")
    p.add_argument("--perturbation", choices=["mean", "reference-mean", "zero"], default=None,
                   help="default: the run's, else mean")
    p.add_argument("--scale", type=float, default=None, help="s in mean + s * (w - mean)")
    p.add_argument("--reference-ties", dest="reference_ties", action="store_true")
    p.add_argument("--prompts", default="builtin",
                   help="ToM prompts: builtin (eval split), tomi, or a task file")
    p.add_argument("--max-prompts", dest="max_prompts", type=int, default=32)
    p.add_argument("--max-length", dest="max_length", type=int, default=256,
                   help="keep the first N tokens of each prompt")
    p.add_argument("--sink-threshold", dest="sink_threshold", type=float, default=0.01)
    p.add_argument("--top-pairs", dest="top_pairs", type=int, default=4,
                   help="dominant rotary pairs per (layer, head)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis)")
    p.set_defaults(handler=_lazy("tomsparse.analysis.run", "cmd_analyze"))


def _info_parser(sub) -> None:
    p = sub.add_parser("info", help="model facts (parameters, matrices per role, RoPE) and corpora")
    _add_model_args(p)
    p.set_defaults(handler=cmd_info)


def _lazy(module: str, func: str):
    def handler(args):
        import importlib

        return getattr(importlib.import_module(module), func)(args)
    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tomsparse",
        description="Find, perturb and analyse the sparse weights a causal LM's Theory-of-Mind "
                    "ability depends on (Wu et al., npj AI 2025).")
    parser.add_argument("--version", action="version", version=f"tomsparse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_info_parser, _tasks_parser, _eval_parser, _perplexity_parser, _scores_parser,
                _sweep_parser, _summarize_parser, _run_parser, _analyze_parser):
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
