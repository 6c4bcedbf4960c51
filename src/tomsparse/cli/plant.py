"""``tomsparse plant``: a planted ground truth (issue 34). Teaches the model the bank's
false-belief families by training only a seeded random fraction ``--density`` of every target
matrix, and writes a model folder (fp32 safetensors, ``--model DIR`` loads it) with
``planted.json`` and the planted indices beside the weights. See docs/planted.md."""

from __future__ import annotations

import argparse
import time

from tomsparse.cli.options import add_model_args, finite_float, load_model_from, positive_int, \
    seed_int
from tomsparse.data.tasks import load_tasks
from tomsparse.errors import UserError
from tomsparse.files import check_output_dir
from tomsparse.plant.folder import write_planted_folder
from tomsparse.plant.train import DEFAULT_DENSITY, DEFAULT_FAMILIES, PlantConfig, plant

TRAIN_SPLIT, EVAL_SPLIT = "builtin:train", "builtin"


def parse_families(text: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in str(text).split(",") if f.strip())


def cmd_plant(args: argparse.Namespace) -> int:
    started = time.time()
    cfg = PlantConfig(density=args.density, seed=args.seed, lr=args.lr,
                      batch_size=args.batch_size, max_steps=args.max_steps,
                      target_rate=args.target_rate, check_every=args.check_every,
                      margin=args.margin, families=args.families,
                      eval_clusters=args.eval_clusters, train_clusters=args.train_clusters,
                      eval_batch_size=args.eval_batch_size)
    out = check_output_dir(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"--out {out} already exists and is not empty; add --overwrite to "
                        "replace it, or choose another folder")
    keep = set(cfg.families)
    train = [p for p in load_tasks(TRAIN_SPLIT).head_clusters(cfg.train_clusters).prompts()
             if p.family in keep]
    evals = [p for p in load_tasks(EVAL_SPLIT).head_clusters(cfg.eval_clusters).prompts()
             if p.family in keep]
    if args.dtype not in (None, "float32"):
        raise UserError(f"--dtype {args.dtype}: planting trains and writes fp32 weights; use "
                        "--dtype float32")
    lm = load_model_from(args, dtype="float32")
    print(f"[plant] {lm.name} ({lm.fingerprint}): training {len(train)} prompts of the "
          f"{TRAIN_SPLIT} split ({', '.join(cfg.families)}), gate on {len(evals)} prompts of "
          f"the eval split ({cfg.eval_clusters} clusters per family)")
    result = plant(lm, cfg, train, evals)
    path = write_planted_folder(lm, result, out, overwrite=args.overwrite,
                                extra={"command_seconds": round(time.time() - started, 1),
                                       "train_split": TRAIN_SPLIT, "eval_split": EVAL_SPLIT})
    t = result.train
    print(f"[plant] {t.stop} after {t.steps} steps ({t.seconds_per_step:.2f} s/step); eval "
          f"accuracy {result.accuracy_before:.3f} -> {result.accuracy_after:.3f}")
    if not t.reached:
        print(f"[plant] note: the train split did not reach the target pass rate "
              f"{cfg.target_rate:g} within {cfg.max_steps} steps at density {cfg.density:g}; "
              "raise --max-steps or --density")
    print(f"[plant] wrote {path} (load it with --model {path}); {time.time() - started:.0f} s")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("plant", help="train a ToM skill into a known sparse set of weights "
                                     "(a planted ground truth for the method)")
    add_model_args(p)
    p.add_argument("--out", required=True, help="the planted model folder to write")
    p.add_argument("--density", type=finite_float, default=DEFAULT_DENSITY,
                   help=f"fraction of each target matrix planted (default {DEFAULT_DENSITY:g})")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the planted set and the batch order (default 0)")
    p.add_argument("--lr", type=finite_float, default=PlantConfig.lr,
                   help=f"Adam learning rate of the planted weights (default {PlantConfig.lr:g})")
    p.add_argument("--batch-size", dest="batch_size", type=positive_int,
                   default=PlantConfig.batch_size, help="prompts per step (default 8)")
    p.add_argument("--max-steps", dest="max_steps", type=positive_int,
                   default=PlantConfig.max_steps,
                   help=f"step cap (default {PlantConfig.max_steps})")
    p.add_argument("--target-rate", dest="target_rate", type=finite_float,
                   default=PlantConfig.target_rate,
                   help="stop when every family's train-split cluster pass rate reaches this "
                        f"(default {PlantConfig.target_rate:g})")
    p.add_argument("--check-every", dest="check_every", type=positive_int,
                   default=PlantConfig.check_every,
                   help=f"steps between train-split checks (default {PlantConfig.check_every})")
    p.add_argument("--margin", type=finite_float, default=PlantConfig.margin,
                   help="hinge margin in nats of the expected answer's token over the "
                        f"alternative's (default {PlantConfig.margin:g})")
    p.add_argument("--families", type=parse_families, default=DEFAULT_FAMILIES,
                   help="task families to plant (default: transfer, the false-belief family "
                        "the default model learns within the step cap; unexpected,transfer "
                        "for both)")
    p.add_argument("--eval-clusters", dest="eval_clusters", type=positive_int,
                   default=PlantConfig.eval_clusters,
                   help="clusters per family of the eval split the gate is computed on "
                        f"(default {PlantConfig.eval_clusters})")
    p.add_argument("--train-clusters", dest="train_clusters", type=positive_int, default=None,
                   help="train on (and stop by) the first N clusters per family of the train "
                        "split only (default: all of it; a smaller N for a quick try)")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=positive_int,
                   default=PlantConfig.eval_batch_size,
                   help="prompts per forward pass of the gate's scoring (default 16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(handler=cmd_plant)
