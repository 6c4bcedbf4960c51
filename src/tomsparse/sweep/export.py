"""``--export-model``: the model perturbed with the difference mask at one m, written as an
ordinary Hugging Face folder with a record of what was done to it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tomsparse.config import SweepConfig
from tomsparse.lm.registry import model_identity
from tomsparse.files import write_json
from tomsparse.manifest import build_manifest
from tomsparse.masks import masks_for
from tomsparse.perturb import perturbed


def export_perturbed_model(lm, rankings, cfg: SweepConfig, m: float, folder: Path,
                           matrix_sums: dict | None = None, log=print) -> Path:
    """Write the model perturbed with the difference mask at ``m`` as an ordinary Hugging
    Face folder (written beside, then renamed: never half a model), with a record of what was
    done to it; the model in memory is restored. An existing export is kept."""
    folder = Path(folder)
    if (folder / "tomsparse-export.json").exists():
        return folder
    masks = masks_for(rankings, m, "difference", reference_ties=cfg.reference_ties)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        with perturbed(lm.description.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                       totals=matrix_sums):
            lm.model.save_pretrained(tmp)
            if hasattr(lm.tokenizer, "save_pretrained"):
                lm.tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(tmp / "tomsparse-export.json", build_manifest(
        "perturbed-model", **model_identity(lm), m=m,
        mode="difference", perturbation=cfg.perturbation, scale=cfg.scale,
        reference_ties=cfg.reference_ties,
        masked=int(sum(x.numel() for x in masks.values()))))
    if folder.exists():
        shutil.rmtree(folder)  # an export interrupted before its record was written
    tmp.rename(folder)
    log(f"[tomsparse] wrote the perturbed model (difference mask, m = {m:g}) to {folder}")
    return folder
