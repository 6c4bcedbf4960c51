"""The score store: sensitivity scores on disk, and the reference code's chunk folders.

A store is a folder of safetensors files (fp32 by default, bf16 on request to halve the size)
holding one tensor per target matrix, keyed by ``Matrix.name`` ("layers.{i}.{role}") in the
canonical (out, in) orientation, plus ``manifest.json`` (model name and fingerprint, target
shapes, dataset and its hashes, nsamples, seqlen, seed, supervision, supervised tokens,
accumulation dtype, zero counts, library versions, wall time, the file of every tensor).
Files are either one per layer (``layer_{i:03d}.safetensors``) or size-limited shards
(``scores-{k:05d}-of-{n:05d}.safetensors``).

Writes are atomic per file and the manifest is written last; the old manifest is removed
before any tensor is rewritten, so a folder with a manifest is always complete and
consistent.

The reference code's chunk folders (``layer_{i}.pt``: a dict per layer keyed ``q_proj``,
``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj`` holding fp16
tensors of the weight's shape, and a ``manifest.json`` with ``source_model, model_type,
num_layers, modules``) can be imported into a store and a store exported to one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch

from tomsparse.errors import UserError
from tomsparse.lm.adapter import ModelDescription, describe, fingerprint
from tomsparse.manifest import atomic_path, build_manifest, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KIND = "scores"
STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LAYOUTS = ("per-layer", "sharded")
_NAME = re.compile(r"^layers\.(\d+)\.([a-z_]+)$")
_OUR_FILES = re.compile(r"^(layer_\d{3}|scores-\d{5}-of-\d{5})\.safetensors$")
_REFERENCE_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _layer_of(name: str) -> int:
    match = _NAME.match(name)
    if not match:
        raise UserError(f"score tensor name {name!r} is not of the form layers.<i>.<role>")
    return int(match.group(1))


def _dtype_name(name: str) -> torch.dtype:
    key = {"fp32": "float32", "bf16": "bfloat16"}.get(name, name)
    if key not in STORE_DTYPES:
        raise UserError(f"unknown store dtype {name!r}; use float32 or bfloat16")
    return STORE_DTYPES[key]


def _plan_files(scores: dict[str, torch.Tensor], layout: str, shard_bytes: int,
                itemsize: int) -> dict[str, list[str]]:
    names = sorted(scores, key=_layer_of)  # stable: the caller's order within a layer
    if layout == "per-layer":
        files: dict[str, list[str]] = {}
        for n in names:
            files.setdefault(f"layer_{_layer_of(n):03d}.safetensors", []).append(n)
        return files
    if layout != "sharded":
        raise UserError(f"unknown store layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    groups: list[list[str]] = [[]]
    size = 0
    for n in names:
        nbytes = scores[n].numel() * itemsize
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += nbytes
    total = len(groups)
    return {f"scores-{k + 1:05d}-of-{total:05d}.safetensors": g for k, g in enumerate(groups)}


def save_scores(directory, scores: dict[str, torch.Tensor], manifest: dict | None = None,
                store_dtype: str = "float32", layout: str = "per-layer",
                shard_size_mb: int = 2048) -> Path:
    """Write ``scores`` (name -> tensor) and a manifest (``manifest`` holds the caller's fields:
    model, fingerprint, dataset, ...) to ``directory``. Returns the manifest's path."""
    from safetensors.torch import save_file

    if not scores:
        raise UserError("no scores to save")
    dtype = _dtype_name(store_dtype)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file; the score store is a folder")
    directory.mkdir(parents=True, exist_ok=True)
    old_manifest = directory / MANIFEST
    if old_manifest.exists():
        try:
            old_kind = json.loads(old_manifest.read_text(encoding="utf-8")).get("kind")
        except (ValueError, AttributeError):
            old_kind = None
        if old_kind != KIND:
            raise UserError(f"{directory} already holds a {MANIFEST} that is not a score "
                            f"store's (kind {old_kind!r}); choose another --out")
        # From here on the folder is incomplete until the new manifest lands.
        old_manifest.unlink()
    itemsize = torch.empty((), dtype=dtype).element_size()
    plan = _plan_files(scores, layout, int(shard_size_mb) << 20, itemsize)
    fields = dict(manifest or {})
    fingerprint = fields.get("fingerprint")
    index, sizes = {}, {}
    for filename, names in plan.items():
        tensors = {n: scores[n].detach().to("cpu", torch.float32).to(dtype).contiguous()
                   for n in names}
        meta = {"kind": KIND, "fingerprint": str(fingerprint or "")}
        with atomic_path(directory / filename) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        sizes[filename] = (directory / filename).stat().st_size
        index.update({n: filename for n in names})
    # Score files of an earlier write with another layout would otherwise linger.
    for stale in directory.iterdir():
        if _OUR_FILES.match(stale.name) and stale.name not in plan:
            stale.unlink()
    zero_counts = fields.pop("zero_counts", None) or {
        n: int((t == 0).sum()) for n, t in scores.items()}
    fields.pop("kind", None)
    # The JSON is written with sorted keys, so the tensors' order is kept as a list.
    fields.update(store_dtype=str(dtype).replace("torch.", ""), layout=layout,
                  names=list(scores),
                  shapes={n: list(scores[n].shape) for n in index},
                  zero_counts=zero_counts, files=sizes, index=index)
    return write_json(directory / MANIFEST, build_manifest(KIND, **fields))


def read_manifest(directory) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        if Path(directory, "layer_0.pt").exists():
            raise UserError(f"{directory} is a reference chunk folder, not a score store; "
                            "import it with `tomsparse scores import --from DIR --model M "
                            "--out DIR`")
        raise UserError(f"{directory}: no {MANIFEST}; not a score store (or an interrupted "
                        "write)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if data.get("kind") != KIND:
        raise UserError(f"{path}: kind is {data.get('kind')!r}, not a score store")
    return data


def scores_identity(manifest: dict) -> str:
    """What identifies a score set's data, for a sweep folder to remember: the hash of the
    samples it was computed on, else (imported reference chunks) a hash of the whole manifest."""
    value = manifest.get("samples_sha256")
    if value:
        return str(value)
    body = {k: v for k, v in manifest.items() if k not in ("created", "wall_time_s", "written_at")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _describe_target(model):
    """(ModelDescription | None, fingerprint | None) from a LoadedModel, an nn.Module, a
    ModelDescription or a fingerprint string."""

    if model is None:
        return None, None
    if isinstance(model, str):
        return None, model
    if isinstance(model, ModelDescription):
        return model, None
    desc = getattr(model, "description", None)
    if desc is not None and hasattr(model, "model"):
        return desc, getattr(model, "fingerprint", None)
    if isinstance(model, torch.nn.Module):
        desc = describe(model)
        return desc, fingerprint(model, desc)
    raise TypeError(f"cannot validate scores against {type(model).__name__}")


def load_scores(directory, model=None, names=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a score store as fp32 CPU tensors. With ``model`` (a LoadedModel, nn.Module,
    ModelDescription or fingerprint) the store must belong to that model: same fingerprint
    where both are known, and every stored matrix must exist in it with the same shape.
    ``names`` restricts which tensors are read."""
    from safetensors import safe_open

    directory = Path(directory)
    manifest = read_manifest(directory)
    index: dict = manifest.get("index") or {}
    shapes: dict = manifest.get("shapes") or {}
    wanted = list(manifest.get("names") or index) if names is None else list(names)
    missing = [n for n in wanted if n not in index]
    if missing:
        raise UserError(f"{directory}: no scores for {missing[0]} (and {len(missing) - 1} more); "
                        f"the store has {len(index)} matrices")
    desc, fp = _describe_target(model)
    stored_fp = manifest.get("fingerprint")
    if fp and stored_fp and fp != stored_fp:
        raise UserError(f"{directory}: scores were computed for model fingerprint {stored_fp} "
                        f"({manifest.get('model', '?')}), not this model ({fp})")
    if desc is not None:
        model_shapes = desc.shapes()
        for n in wanted:
            if n not in model_shapes:
                raise UserError(f"{directory}: the store has {n}, which this model lacks (it has "
                                f"{desc.num_layers} layers, roles {desc.roles()})")
            if tuple(shapes.get(n, ())) != tuple(model_shapes[n]):
                raise UserError(f"{directory}: {n} has shape {tuple(shapes.get(n, ()))} in the "
                                f"store but {tuple(model_shapes[n])} in this model")
    by_file: dict[str, list[str]] = {}
    for n in wanted:
        by_file.setdefault(index[n], []).append(n)
    scores = {}
    for filename, file_names in by_file.items():
        path = directory / filename
        if not path.is_file():
            raise UserError(f"{path}: missing score file listed in the manifest")
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            present = set(handle.keys())
            for n in file_names:
                if n not in present:
                    raise UserError(f"{path}: does not hold {n}, which the manifest puts there")
                tensor = handle.get_tensor(n).float()
                if shapes.get(n) is not None and list(tensor.shape) != list(shapes[n]):
                    raise UserError(f"{path}: {n} has shape {tuple(tensor.shape)}, the manifest "
                                    f"says {tuple(shapes[n])}")
                scores[n] = tensor
    order = {n: i for i, n in enumerate(wanted)}
    return dict(sorted(scores.items(), key=lambda kv: order[kv[0]])), manifest


# --------------------------------------------------------------------------------------------
# reference chunk folders


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
    desc, fp = _describe_target(model)
    if desc is None:
        raise UserError("importing reference chunks needs the model (for its target matrices)")
    ref_manifest = {}
    if (src / "manifest.json").is_file():
        try:
            ref_manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"{src / 'manifest.json'}: not valid JSON ({exc})") from None
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
        try:
            chunk = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt or non-tensor pickle
            raise UserError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
        if not isinstance(chunk, dict):
            raise UserError(f"{path}: expected a dict of tensors, got {type(chunk).__name__}")
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
            scores[m.name] = tensor.float()
    fields = {
        "model": model_name or getattr(model, "name", None) or ref_manifest.get("source_model"),
        "fingerprint": fp,
        "model_type": ref_manifest.get("model_type"),
        "source": "reference chunks",
        "imported_from": str(src.resolve()),
        "reference_manifest": ref_manifest,
        "accumulation_dtype": "float16 (reference)",
    }
    bad = [n for n, t in scores.items() if not torch.isfinite(t).all()]
    if bad:
        log.warning("%s: %d imported matrices hold inf/NaN entries (fp16 overflow in the "
                    "reference), e.g. %s", src, len(bad), bad[0])
    return save_scores(out, scores, fields, store_dtype=store_dtype, layout=layout)


def export_reference_chunks(directory, out, dtype: str = "float16") -> Path:
    """Write a store as a reference chunk folder: ``layer_{i}.pt`` dicts keyed like the
    reference (q_proj ... down_proj) plus its ``manifest.json``. The reference keeps fp16;
    values beyond fp16's range become inf and tiny ones 0, which is reported."""
    scores, manifest = load_scores(directory)
    target = {"float16": torch.float16, "float32": torch.float32}.get(dtype)
    if target is None:
        raise UserError(f"unknown export dtype {dtype!r}; use float16 or float32")
    roles = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
             "up": "up_proj", "down": "down_proj"}
    per_layer: dict[int, dict[str, torch.Tensor]] = {}
    overflow = underflow = 0
    for name, tensor in scores.items():
        layer = _layer_of(name)
        role = _NAME.match(name).group(2)
        converted = tensor.to(target)
        overflow += int((torch.isinf(converted) & torch.isfinite(tensor)).sum())
        underflow += int(((converted == 0) & (tensor != 0)).sum())
        per_layer.setdefault(layer, {})[roles.get(role, role)] = converted.contiguous()
    layers = sorted(per_layer)
    if layers != list(range(len(layers))):
        raise UserError(f"{directory}: the store covers layers {layers}; the reference format "
                        "needs every layer from 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "manifest.json").exists():
        (out / "manifest.json").unlink()  # the folder is incomplete until it is rewritten
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
    return write_json(out / "manifest.json", {
        "source_model": manifest.get("model"),
        "model_type": manifest.get("model_type"),
        "num_layers": len(layers),
        "modules": modules,
    })
