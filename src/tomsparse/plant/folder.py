"""The planted model folder: its one owner (file names), writer and reader.

A planted model folder is an ordinary Hugging Face folder (``config.json``, fp32 safetensors
weights, tokenizer files: every command loads it with ``--model DIR``) with two more files::

    planted.json                    what was planted and how: the base model's name and
                                    fingerprint, density, seed, counts per role, the options,
                                    the training curve, the eval split's gate before and after,
                                    the ground-truth checks, versions, the indices file's sha256
    planted_indices.safetensors     per target matrix ``<name>.indices`` (the planted flat
                                    indices, int64) and ``<name>.base`` (their base values, so
                                    that the base model can be restored from the folder alone)

The folder is written under a temporary name beside its destination and renamed into place
when complete, so a killed ``tomsparse plant`` never leaves a half-written model. The reader
loads JSON and safetensors only (no pickles), and checks the indices file against the
recorded sha256 and the indices against the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tomsparse.errors import UserError
from tomsparse.files import check_link, read_json_object, write_json
from tomsparse.lm.registry import model_identity
from tomsparse.manifest import build_manifest, sha256_file
from tomsparse.plant.planted_set import check_against
from tomsparse.plant.train import PlantResult, gate_record

PLANTED_JSON = "planted.json"
PLANTED_INDICES = "planted_indices.safetensors"
KIND = "planted"


class PlantedFolder:
    """The paths of a planted model folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def record(self) -> Path:
        return self.root / PLANTED_JSON

    @property
    def indices(self) -> Path:
        return self.root / PLANTED_INDICES

    def is_planted(self) -> bool:
        return self.record.is_file()


@dataclass
class PlantedModel:
    """A planted folder read back: its record, and per matrix the planted indices and their
    base values."""

    folder: Path
    record: dict
    indices: dict[str, torch.Tensor]
    base_values: dict[str, torch.Tensor]

    @property
    def density(self) -> float:
        return float(self.record["density"])

    @property
    def base_fingerprint(self) -> str:
        return str(self.record.get("base_model", {}).get("model_fingerprint", ""))

    @property
    def total(self) -> int:
        return int(sum(idx.numel() for idx in self.indices.values()))


def plant_record(lm, result: PlantResult, indices_sha: str) -> dict:
    cfg = result.config
    matrices = lm.description.matrices
    return build_manifest(
        KIND, base_model={**model_identity(lm), "source": str(lm.source)},
        density=cfg.density, seed=cfg.seed, options=cfg.options,
        planted_total=result.total, planted_by_role=result.counts_by_role(matrices),
        matrices=len(matrices), train_prompts=result.train_prompts,
        eval_prompts=result.eval_prompts,
        training={"steps": result.train.steps, "stop": result.train.stop,
                  "reached_target": result.train.reached, "curve": result.train.curve,
                  "seconds": result.train.seconds,
                  "seconds_per_step": result.train.seconds_per_step,
                  "skipped_prompts": result.train.skipped_prompts},
        eval_gate_before=gate_record(result.gates_before),
        eval_gate_after=gate_record(result.gates_after),
        eval_accuracy_before=result.accuracy_before, eval_accuracy_after=result.accuracy_after,
        checks=result.checks, seconds=result.seconds, notes=result.notes,
        indices_file=PLANTED_INDICES, indices_sha256=indices_sha, weights_dtype="float32")


def write_planted_folder(lm, result: PlantResult, out: str | Path, overwrite: bool = False,
                         extra: dict | None = None) -> Path:
    """Write the planted model in ``lm`` (fp32 safetensors, its tokenizer), ``planted.json``
    and the indices into ``out``: built in a temporary folder beside it, then renamed into
    place (an existing ``out`` is replaced only with ``overwrite``)."""
    out = check_link(Path(out))
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} already exists and is not empty; add --overwrite to "
                        "replace it, or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model = lm.model
        if any(p.dtype != torch.float32 for p in model.parameters()):
            raise UserError("the planted model must be fp32 (load it with --dtype float32)")
        model.save_pretrained(tmp, safe_serialization=True)
        if not hasattr(lm.tokenizer, "save_pretrained"):
            raise UserError(f"the tokenizer of {lm.name} cannot be saved with the model; plant "
                            "a model with a Hugging Face tokenizer")
        lm.tokenizer.save_pretrained(tmp)
        folder = PlantedFolder(tmp)
        tensors = {}
        for name, idx in result.planted.items():
            tensors[f"{name}.indices"] = idx.to(torch.int64).contiguous().cpu()
            tensors[f"{name}.base"] = result.base_values[name].float().contiguous().cpu()
        save_file(tensors, str(folder.indices))
        record = plant_record(lm, result, sha256_file(folder.indices))
        record.update(extra or {})
        write_json(folder.record, record)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_planted(folder: str | Path | None, matrices=None) -> PlantedModel | None:
    """The planted model of a model folder, or None when ``folder`` is not a folder with
    ``planted.json`` (any other model). ``matrices`` (``lm.description.matrices``): the indices
    are checked against them. A damaged record or indices file is a ``UserError``."""
    if folder is None or not Path(str(folder)).is_dir():
        return None
    pf = PlantedFolder(str(folder))
    if not pf.is_planted():
        return None
    fix = "plant the model again (tomsparse plant)"
    record = read_json_object(pf.record, fix)
    if record.get("kind") != KIND:
        raise UserError(f"{pf.record}: not a planted-model record (kind "
                        f"{record.get('kind')!r}); {fix}")
    for key in ("density", "indices_sha256", "base_model"):
        if key not in record:
            raise UserError(f"{pf.record}: lacks the field {key!r}; {fix}")
    density = record["density"]
    if isinstance(density, bool) or not isinstance(density, (int, float)) \
            or not 0 < density < 1:
        raise UserError(f"{pf.record}: 'density' {density!r} is not a fraction in (0, 1); {fix}")
    if not pf.indices.is_file():
        raise UserError(f"{pf.indices}: missing; the planted indices lie beside planted.json; "
                        f"{fix}")
    if sha256_file(pf.indices) != record["indices_sha256"]:
        raise UserError(f"{pf.indices}: its sha256 is not the one planted.json records; the "
                        f"file was changed or damaged: {fix}")
    try:
        tensors = load_file(str(pf.indices))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{pf.indices}: cannot be read ({str(exc).splitlines()[0]}); "
                        f"{fix}") from None
    indices, base = {}, {}
    for key, value in tensors.items():
        name, _, part = key.rpartition(".")
        if part == "indices":
            indices[name] = value
        elif part == "base":
            base[name] = value
        else:
            raise UserError(f"{pf.indices}: unexpected tensor {key!r}; {fix}")
    if set(indices) != set(base) or any(indices[n].shape != base[n].shape for n in indices):
        raise UserError(f"{pf.indices}: the indices and base values do not match; {fix}")
    if matrices is not None:
        check_against(indices, {m.name: m.numel for m in matrices}, str(pf.indices))
    return PlantedModel(folder=Path(str(folder)), record=record, indices=indices,
                        base_values=base)

