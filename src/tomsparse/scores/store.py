"""The score store: sensitivity scores on disk (the reference code's chunk folders are
converted to and from it in ``reference_chunks``).

A store is a folder of safetensors files (fp32 by default, bf16 on request to halve the size)
holding one tensor per target matrix, keyed by ``Matrix.name`` ("layers.{i}.{role}") in the
canonical (out, in) orientation, plus ``manifest.json`` (model name and fingerprint, target
shapes, dataset and its hashes, nsamples, seqlen, seed, supervision, supervised tokens,
accumulation dtype, zero counts, library versions, wall time, the file of every tensor, and
``score_method``: the attribution score, fisher, snip or wanda; a store written before the
field existed holds Fisher scores and reads as "fisher": ``score_method``).
Files are either one per layer (``layer_{i:03d}.safetensors``) or size-limited shards
(``scores-{k:05d}-of-{n:05d}.safetensors``).

Writes are atomic per file and the manifest is written last; the old manifest is removed
before any tensor is rewritten, so a folder with a manifest is always complete and
consistent. A write killed half-way leaves hidden temporaries (``atomic_path``'s
``.layer_000.safetensors.<random>.tmp`` and safetensors' own ``.tmp<random>``); the next write
into the folder removes them.

Reading is checked: a damaged manifest or safetensors file (truncated, garbage header) and a
matrix holding NaN or inf are refused with a ``UserError`` naming the file (and the matrix),
never passed on. The one exception is +inf in a store whose manifest records the reference's
fp16 sums (``accumulation_dtype`` "float16 (reference)": ``--reference-fp16`` or imported
chunks), where it is the reference's own overflow and is kept (with a warning).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError

from tomsparse.errors import UserError
from tomsparse.lm.adapter import ModelDescription, describe, fingerprint
from tomsparse.files import atomic_path, check_output_dir, read_json_object, write_json
from tomsparse.manifest import build_manifest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KIND = "scores"
# the score a store holds when its manifest does not say (stores written before --score)
DEFAULT_SCORE = "fisher"
STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LAYOUTS = ("per-layer", "sharded")
_NAME = re.compile(r"^layers\.(\d+)\.([a-z_]+)$")
_OUR_FILES = re.compile(r"^(layer_\d{3}|scores-\d{5}-of-\d{5})\.safetensors$")
# Temporaries a killed write leaves: atomic_path's ".<file>.<random>.tmp" for the files a store
# or a chunk folder holds, and safetensors' own ".tmp<6 random characters>" beside its target.
_TEMPORARY = re.compile(r"^\.(layer_\d+\.(safetensors|pt)|scores-\d{5}-of-\d{5}\.safetensors|"
                        r"manifest\.json)\..+\.tmp$|^\.tmp[A-Za-z0-9]{6}$")


def split_name(name: str) -> tuple[int, str]:
    """(layer, role) of a score tensor's name ``layers.<i>.<role>``; a UserError otherwise."""
    match = _NAME.match(name)
    if not match:
        raise UserError(f"score tensor name {name!r} is not of the form layers.<i>.<role>")
    return int(match.group(1)), match.group(2)


def _layer_of(name: str) -> int:
    return split_name(name)[0]


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
    fields = dict(manifest or {})
    # A store must read back: refuse what load_scores would refuse, before touching the folder.
    allow_inf = _allows_inf(fields)
    for n, t in scores.items():
        _check_finite(f"scores to save in {directory}", n, t.detach(), allow_inf)
    check_destination(directory)
    existing_store(directory)  # refuses a folder holding another kind of manifest
    directory.mkdir(parents=True, exist_ok=True)
    old_manifest = directory / MANIFEST
    if old_manifest.exists():
        # From here on the folder is incomplete until the new manifest lands.
        old_manifest.unlink()
    remove_temporaries(directory)
    itemsize = torch.empty((), dtype=dtype).element_size()
    plan = _plan_files(scores, layout, int(shard_size_mb) << 20, itemsize)
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


# How a damaged store manifest is fixed (the end of ``read_json_object``'s message).
_RECOMPUTE = "remove it and recompute the store"


def store_manifest(directory) -> Path:
    """The path of a score store's manifest (whether or not it exists)."""
    return Path(directory) / MANIFEST


def read_manifest(directory) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        if Path(directory, "layer_0.pt").exists():
            raise UserError(f"{directory} is a reference chunk folder, not a score store; "
                            "import it with `tomsparse scores import --from DIR --model M "
                            "--out DIR`")
        raise UserError(f"{directory}: no {MANIFEST}; not a score store (or an interrupted "
                        "write)")
    data = read_json_object(path, _RECOMPUTE)
    if data.get("kind") != KIND:
        raise UserError(f"{path}: kind is {data.get('kind')!r}, not a score store")
    for field, kind in (("index", dict), ("shapes", dict), ("names", list)):
        if data.get(field) is not None and not isinstance(data[field], kind):
            raise UserError(f"{path}: field {field!r} is a {type(data[field]).__name__}, not a "
                            f"{kind.__name__}; the manifest is damaged: recompute the store")
    return data


def existing_store(directory) -> dict | None:
    """The manifest of the score store already in ``directory``: None when there is none (no
    folder, or an interrupted write without a manifest); a UserError when the folder holds
    another kind of output's manifest or a damaged one."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    data = read_json_object(path, _RECOMPUTE)
    if data.get("kind") != KIND:
        raise UserError(f"{directory} already holds a {MANIFEST} that is not a score "
                        f"store's (kind {data.get('kind')!r}); choose another --out")
    return data


def check_destination(directory, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be written (manifest.
    check_output_dir). Creates nothing."""
    return check_output_dir(directory, option)


def check_store_destination(directory, overwrite: bool = False, fingerprint: str | None = None,
                            identity: str | None = None, model: str | None = None,
                            dataset: str | None = None, score: str | None = None
                            ) -> dict | None:
    """Check, before any scores are computed, that a store may be written to ``directory``:
    the folder can be written (``check_destination``), holds no other kind of output, and
    holds no score store of another model (``fingerprint``) or other data (``identity``, the
    ``samples_sha256`` that ``scores_identity`` returns; ``dataset``, "tom" or "generic",
    already tells them apart before any sample is built) or of another attribution score
    (``score``: fisher, snip or wanda) unless ``overwrite``. What is
    unknown yet (None) is not compared, so this can run once before the model is loaded and
    again before computing. Returns the existing store's manifest (or None)."""
    check_destination(directory)
    old = existing_store(directory)
    if old is None or overwrite:
        return old
    differs = []
    if fingerprint and old.get("fingerprint") and old["fingerprint"] != fingerprint:
        differs.append(f"model {old.get('model', '?')} (fingerprint {old['fingerprint']}), "
                       f"not {model or '?'} ({fingerprint})")
    if score and score_method(old) != score:
        differs.append(f"{score_method(old)} scores, not {score}")
    if dataset and old.get("dataset") and old["dataset"] != dataset:
        differs.append(f"{old['dataset']} data, not {dataset}")
    elif identity and scores_identity(old) != with_score_method(identity, score_method(old)):
        differs.append(f"other {old.get('dataset') or 'imported'} samples (identity "
                       f"{scores_identity(old)[:12]}, not {identity[:12]})")
    if differs:
        raise UserError(f"{directory} already holds a score store of {'; of '.join(differs)}; "
                        "choose another --out, or pass --overwrite to replace it")
    return old


def remove_temporaries(directory) -> int:
    """Remove the temporaries a write killed half-way left in ``directory`` (atomic_path's
    and safetensors'); returns how many were removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for entry in directory.iterdir():
        if _TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted write", directory,
                 removed)
    return removed


def _allows_inf(manifest: dict) -> bool:
    """Whether +inf is a legitimate score: the reference's fp16 sums overflow to it."""
    return str(manifest.get("accumulation_dtype") or "").startswith("float16")


def _check_finite(where: str, name: str, tensor: torch.Tensor, allow_inf: bool = False) -> int:
    """A UserError naming ``where`` and the matrix when ``tensor`` holds NaN or inf (+inf is
    let through, and counted, with ``allow_inf``). Returns the number of +inf entries kept."""
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return 0
    bad = ~finite
    posinf = torch.isposinf(tensor) if allow_inf else None
    if posinf is not None:
        bad &= ~posinf
    count = int(bad.sum())
    if count:
        nan = int(torch.isnan(tensor).sum())
        raise UserError(f"{where}: {name} holds {count:,} non-finite entries ({nan:,} NaN, "
                        f"{count - nan:,} inf) of {tensor.numel():,}; such scores rank nothing: "
                        "recompute the store")
    return int(posinf.sum())


def score_method(manifest: dict) -> str:
    """The attribution score a store holds (its manifest's ``score_method``: fisher, snip or
    wanda); "fisher" for a store written before the field existed."""
    value = manifest.get("score_method")
    if value is None:
        return DEFAULT_SCORE
    if not isinstance(value, str) or not value:
        raise UserError(f"score store of {manifest.get('model', '?')}: field score_method of "
                        f"its {MANIFEST} is {value!r}, not a score's name; the manifest is "
                        "damaged: recompute the store")
    return value


def with_score_method(samples_sha256: str, score: str) -> str:
    """The identity of the scores ``score`` computed on the samples ``samples_sha256``: the
    samples' hash itself for Fisher scores (as before there were other scores), else a hash
    of both, so a store of another score never passes for the Fisher store of the same
    samples."""
    if score == DEFAULT_SCORE:
        return samples_sha256
    return hashlib.sha256(f"{score}:{samples_sha256}".encode()).hexdigest()


def scores_identity(manifest: dict) -> str:
    """What identifies a score set, for a sweep folder to remember: the hash of the samples it
    was computed on (with its score unless Fisher: ``with_score_method``), else (imported
    reference chunks) a hash of the whole manifest."""
    value = manifest.get("samples_sha256")
    if value:
        return with_score_method(str(value), score_method(manifest))
    body = {k: v for k, v in manifest.items() if k not in ("created", "wall_time_s", "written_at")
            and not (k == "score_method" and v == DEFAULT_SCORE)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_score_methods(tom_manifest: dict, generic_manifest: dict, allow: bool = False,
                        tom_where: str = "the ToM score store",
                        generic_where: str = "the generic score store") -> dict[str, str]:
    """The scores of a ToM and a generic store, {"tom": ..., "generic": ...}; a one-line
    UserError when they differ (the difference mask, top-m by the one and not top-m by the
    other, would then tell the scores apart as much as the texts) unless ``allow``
    (``--allow-mixed-scores``)."""
    methods = {"tom": score_method(tom_manifest), "generic": score_method(generic_manifest)}
    if methods["tom"] != methods["generic"] and not allow:
        raise UserError(f"the ToM scores {tom_where} are {methods['tom']} scores but the "
                        f"generic scores {generic_where} are {methods['generic']} scores: "
                        "the difference mask would tell the scores apart as much as the "
                        "texts; compute both with the same --score, or pass "
                        "--allow-mixed-scores to mix them anyway")
    return methods


def check_swapped_store(tom_manifest: dict, swapped_manifest: dict, tom_dir, swapped_dir
                        ) -> str:
    """A task-swapped store (``tomsparse sweep --scores-swapped``) against the ToM store its
    mask is compared with: the same model (fingerprint, where both record one) and the same
    attribution score (``score_method``), else one line naming both manifests and the fix.
    Returns the swapped store's score."""
    tom_path, swapped_path = store_manifest(tom_dir), store_manifest(swapped_dir)
    tom_fp, swapped_fp = tom_manifest.get("fingerprint"), swapped_manifest.get("fingerprint")
    if tom_fp and swapped_fp and tom_fp != swapped_fp:
        raise UserError(f"the task-swapped store {swapped_path} was computed for model "
                        f"fingerprint {swapped_fp} ({swapped_manifest.get('model', '?')}) but "
                        f"the ToM store {tom_path} for {tom_fp} "
                        f"({tom_manifest.get('model', '?')}): recompute the swapped store with "
                        f"`tomsparse scores --model {tom_manifest.get('model', 'M')} --dataset "
                        f"{swapped_manifest.get('dataset', 'format-control')}`")
    tom_score, swapped_score = score_method(tom_manifest), score_method(swapped_manifest)
    if tom_score != swapped_score:
        raise UserError(f"the task-swapped store {swapped_path} holds {swapped_score} scores "
                        f"but the ToM store {tom_path} {tom_score} scores: the two masks "
                        f"would differ by the score as much as by the task; recompute the "
                        f"swapped store with `tomsparse scores --score {tom_score} --dataset "
                        f"{swapped_manifest.get('dataset', 'format-control')}`")
    return swapped_score


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def story_hashes(manifest: dict) -> list[str] | None:
    """The story hashes of a ToM score store's prompts (``tomsparse.data.overlap``), one per
    score sample in selection order, from ``manifest["data"]["story_sha256"]``; None when the
    store has none (written before they were recorded, imported reference chunks, generic
    windows). A value that is not a list of SHA-256 hex strings is a damaged manifest."""
    data = manifest.get("data")
    value = data.get("story_sha256") if isinstance(data, dict) else None
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and _SHA256_HEX.match(v)
                                              for v in value):
        raise UserError(f"score store of {manifest.get('model', '?')}: field "
                        f"data.story_sha256 of its {MANIFEST} is not a list of SHA-256 hex "
                        f"strings; the manifest is damaged: recompute the store")
    return list(value)


def describe_target(model):
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


class StoredScores(Mapping):
    """A score store read one matrix at a time: ``store[name]`` reads that matrix (fp32, its
    finiteness checked) from its safetensors file onto ``device`` (one device, or a mapping of
    matrix name to device, e.g. each weight's). Nothing is cached, so ranking a 7B model's
    stores holds two matrices' scores at a time, never two full score sets. Use
    ``open_scores``; ``load_scores`` reads everything at once."""

    def __init__(self, directory: Path, manifest: dict, names: list[str], device=None):
        self.directory, self.manifest, self.names = directory, manifest, names
        self.device = device
        self._index = manifest.get("index") or {}
        self._shapes = manifest.get("shapes") or {}
        self._allow_inf = _allows_inf(manifest)
        self.inf_kept = 0

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __contains__(self, name) -> bool:
        return name in self._index and (name in self.names)

    def _device_of(self, name: str):
        if isinstance(self.device, Mapping):
            return self.device.get(name, "cpu")
        return self.device or "cpu"

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self:
            raise KeyError(name)
        filename = self._index[name]
        if not isinstance(filename, str) or Path(filename).name != filename:
            raise UserError(f"{self.directory / MANIFEST}: index puts {name} in {filename!r}, "
                            "not a file of the store; the manifest is damaged")
        path = self.directory / filename
        if not path.is_file():
            raise UserError(f"{path}: missing score file listed in the manifest")
        shape = self._shapes.get(name)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                if name not in set(handle.keys()):
                    raise UserError(f"{path}: does not hold {name}, which the manifest puts "
                                    "there")
                tensor = handle.get_tensor(name).float()
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            # A truncated file, a garbage header, unreadable bytes: the store is damaged.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{path}: not a readable safetensors file ({reason}); the store is "
                            "damaged: recompute it (or restore the file)") from None
        if shape is not None and list(tensor.shape) != list(shape):
            raise UserError(f"{path}: {name} has shape {tuple(tensor.shape)}, the manifest "
                            f"says {tuple(shape)}")
        self.inf_kept += _check_finite(str(path), name, tensor, self._allow_inf)
        return tensor.to(self._device_of(name))


def open_scores(directory, model=None, names=None, device=None) -> StoredScores:
    """A score store, checked (manifest, matrices, shapes, fingerprint) but not read: its
    matrices are read one at a time on access (``StoredScores``). With ``model`` (a
    LoadedModel, nn.Module, ModelDescription or fingerprint) the store must belong to that
    model: same fingerprint where both are known, and every stored matrix must exist in it with
    the same shape. ``names`` restricts the matrices."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    index: dict = manifest.get("index") or {}
    shapes: dict = manifest.get("shapes") or {}
    wanted = list(manifest.get("names") or index) if names is None else list(names)
    missing = [n for n in wanted if n not in index]
    if missing:
        raise UserError(f"{directory}: no scores for {missing[0]} (and {len(missing) - 1} more); "
                        f"the store has {len(index)} matrices")
    desc, fp = describe_target(model)
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
    return StoredScores(directory, manifest, wanted, device)


def load_scores(directory, model=None, names=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a whole score store as fp32 CPU tensors (checked as ``open_scores`` checks it;
    every matrix's finiteness too)."""
    store = open_scores(directory, model=model, names=names)
    scores = {name: store[name] for name in store}
    if store.inf_kept:
        log.warning("%s: %d score(s) are +inf (the reference's fp16 sums overflowed); they "
                    "rank first", directory, store.inf_kept)
    return scores, store.manifest
