"""The reference code's chunk folders, converted to and from a score store (``store``).

A chunk folder holds ``layer_{i}.pt`` files, a dict per layer keyed ``q_proj``, ``k_proj``,
``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj`` holding fp16 tensors of the
weight's shape, and a ``manifest.json`` with ``source_model, model_type, num_layers,
modules``. ``import_reference_chunks`` converts one into a score store for a model;
``export_reference_chunks`` writes a store as one.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from pathlib import Path

import torch

from tomsparse.errors import UserError
from tomsparse.files import atomic_path, read_json_object, write_json
from tomsparse.safe_read import check_torch_archive
from tomsparse.scores.store import (
    DEFAULT_SCORE,
    MANIFEST,
    check_destination,
    describe_target,
    load_scores,
    remove_temporaries,
    save_scores,
    split_name,
)

log = logging.getLogger(__name__)

# The keys of a chunk's matrices, in the reference's order. A chunk folder's manifest has the
# name of a score store's (``MANIFEST``).
_REFERENCE_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


_CHUNK_FORMAT = ("a chunk must be a dict of tensors per layer keyed q_proj ... down_proj, as "
                 "torch.save({'q_proj': tensor, ...}, 'layer_0.pt') writes it")


def _load_chunk(path: Path, max_bytes: int | None = None) -> dict:
    """One reference chunk, read with ``weights_only`` (a pickle of other objects could run
    code and is refused, not loaded); its archive is checked first (``max_bytes``: what its
    tensors may take, unpacked) so that nothing is inflated beyond that."""
    check_torch_archive(path, max_bytes, "reference chunk")
    try:
        chunk = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        what = f" (it holds {found.group(1)})" if found else ""
        raise UserError(f"{path}: refused: it pickles Python objects other than tensors{what}, "
                        f"which are not loaded; {_CHUNK_FORMAT}") from None
    except Exception as exc:  # a truncated or corrupt file
        reason = str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: cannot read it ({type(exc).__name__}: {reason}); "
                        f"{_CHUNK_FORMAT}") from None
    if not isinstance(chunk, dict):
        raise UserError(f"{path}: holds a {type(chunk).__name__}, not a dict; {_CHUNK_FORMAT}")
    return chunk


def _reference_keys_for(matrix) -> list[str]:
    """Keys a reference chunk may use for this matrix: the canonical Llama name, then (for an
    unfused module) the module's own attribute name, as OPT-style checkpoints would have."""
    keys = [matrix.reference_key]
    whole = matrix.rows.start == 0 and matrix.rows.stop == (
        matrix.module.weight.shape[1] if matrix.transposed else matrix.module.weight.shape[0])
    if matrix.param_name and whole:
        attr = matrix.param_name.rsplit(".", 2)[-2]
        if attr not in keys:
            keys.append(attr)
    return keys


def import_reference_chunks(src, out, model, model_name: str | None = None,
                            store_dtype: str = "float32", layout: str = "per-layer") -> Path:
    """Convert a reference chunk folder into a score store for ``model`` (a LoadedModel, an
    nn.Module or a ModelDescription). Every target matrix of the model must be present with
    its exact shape; anything else is refused with the layer, key and shapes."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: no such folder")
    desc, fp = describe_target(model)
    if desc is None:
        raise UserError("importing reference chunks needs the model (for its target matrices)")
    ref_manifest = {}
    if (src / MANIFEST).is_file():
        ref_manifest = read_json_object(src / MANIFEST)
    files = sorted(src.glob("layer_*.pt"), key=lambda p: p.stem)
    if not files:
        raise UserError(f"{src}: no layer_<i>.pt files; not a reference chunk folder")
    layers_found = sorted(int(p.stem.split("_", 1)[1]) for p in files
                          if p.stem.split("_", 1)[1].isdigit())
    n_ref = ref_manifest.get("num_layers", len(layers_found))
    if n_ref != desc.num_layers or layers_found != list(range(desc.num_layers)):
        raise UserError(f"{src}: the chunks cover {n_ref} layer(s) (files for layers "
                        f"{layers_found[:3]}...{layers_found[-1:]}), the model has "
                        f"{desc.num_layers}")
    by_layer: dict[int, list] = {}
    for m in desc.matrices:
        by_layer.setdefault(m.layer, []).append(m)
    scores = {}
    for layer in range(desc.num_layers):
        path = src / f"layer_{layer}.pt"
        # the layer's matrices at 8 bytes an entry at most, and room for the pickle
        budget = sum(8 * math.prod(m.shape) for m in by_layer.get(layer, [])) + (1 << 20)
        chunk = _load_chunk(path, budget)
        for m in by_layer.get(layer, []):
            keys = [k for k in _reference_keys_for(m) if k in chunk]
            if not keys:
                # Chunks keyed by full parameter names ("model.layers.0.self_attn.q_proj.weight").
                keys = [k for k in chunk if isinstance(k, str) and any(
                    k.endswith(f".{ref}") or k.endswith(f".{ref}.weight")
                    for ref in _reference_keys_for(m))]
                if len(keys) > 1:
                    raise UserError(f"{path}: keys {keys} all could be {m.name}; rename them to "
                                    "the reference's q_proj ... down_proj")
            if not keys:
                raise UserError(f"{path}: no key {m.reference_key!r} for {m.name}; the chunk has "
                                f"{sorted(chunk)}")
            tensor = chunk[keys[0]]
            if not isinstance(tensor, torch.Tensor):
                raise UserError(f"{path}: {keys[0]} is not a tensor")
            if tuple(tensor.shape) != tuple(m.shape):
                raise UserError(f"{path}: {keys[0]} has shape {tuple(tensor.shape)}, but "
                                f"{m.name} of this model is {tuple(m.shape)}; the chunks belong to "
                                "another model")
            if torch.isnan(tensor).any():
                raise UserError(f"{path}: {keys[0]} ({m.name}) holds "
                                f"{int(torch.isnan(tensor).sum()):,} NaN entries; such scores "
                                "rank nothing: recompute the chunk")
            scores[m.name] = tensor.float()
    fields = {
        "model": model_name or getattr(model, "name", None) or ref_manifest.get("source_model"),
        "fingerprint": fp,
        "model_type": ref_manifest.get("model_type"),
        "source": "reference chunks",
        "imported_from": str(src.resolve()),
        "reference_manifest": ref_manifest,
        "accumulation_dtype": "float16 (reference)",
        "score_method": DEFAULT_SCORE,  # the reference's scores are Fisher scores
    }
    bad = [n for n, t in scores.items() if not torch.isfinite(t).all()]
    if bad:
        log.warning("%s: %d imported matrices hold inf entries (fp16 overflow in the "
                    "reference), e.g. %s", src, len(bad), bad[0])
    return save_scores(out, scores, fields, store_dtype=store_dtype, layout=layout)


def export_reference_chunks(directory, out, dtype: str = "float16") -> Path:
    """Write a store as a reference chunk folder: ``layer_{i}.pt`` dicts keyed like the
    reference (q_proj ... down_proj) plus its ``manifest.json``. The reference keeps fp16;
    values beyond fp16's range become inf and tiny ones 0, which is reported."""
    target = {"float16": torch.float16, "float32": torch.float32}.get(dtype)
    if target is None:
        raise UserError(f"unknown export dtype {dtype!r}; use float16 or float32")
    out = Path(out)
    check_destination(out)
    old = out / MANIFEST
    if old.exists() and (out.resolve() == Path(directory).resolve()
                         or "kind" in read_json_object(old, "remove it or export into "
                                                       "another --out")):
        raise UserError(f"{out} holds a tomsparse output ({old} has a kind), not a reference "
                        "chunk folder; export into another --out")
    scores, manifest = load_scores(directory)
    roles = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
             "up": "up_proj", "down": "down_proj"}
    per_layer: dict[int, dict[str, torch.Tensor]] = {}
    overflow = underflow = 0
    for name, tensor in scores.items():
        layer, role = split_name(name)
        converted = tensor.to(target)
        overflow += int((torch.isinf(converted) & torch.isfinite(tensor)).sum())
        underflow += int(((converted == 0) & (tensor != 0)).sum())
        per_layer.setdefault(layer, {})[roles.get(role, role)] = converted.contiguous()
    layers = sorted(per_layer)
    if layers != list(range(len(layers))):
        raise UserError(f"{directory}: the store covers layers {layers}; the reference format "
                        "needs every layer from 0")
    out.mkdir(parents=True, exist_ok=True)
    if old.exists():
        old.unlink()  # the folder is incomplete until it is rewritten
    remove_temporaries(out)
    for layer in layers:
        with atomic_path(out / f"layer_{layer}.pt") as tmp:
            torch.save(per_layer[layer], tmp)
    for stale in out.glob("layer_*.pt"):
        # Chunks of a deeper model exported here before would be read as part of this one.
        index = stale.stem.split("_", 1)[1]
        if index.isdigit() and int(index) >= len(layers):
            stale.unlink()
    modules = [k for k in _REFERENCE_KEYS if k in per_layer[layers[0]]]
    modules += [k for k in per_layer[layers[0]] if k not in modules]
    if overflow or underflow:
        log.warning("export to %s: %d value(s) overflowed to inf and %d nonzero value(s) "
                    "underflowed to 0", dtype, overflow, underflow)
    return write_json(out / MANIFEST, {
        "source_model": manifest.get("model"),
        "model_type": manifest.get("model_type"),
        "num_layers": len(layers),
        "modules": modules,
    })
