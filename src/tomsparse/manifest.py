"""Reproducibility records: hashes, library versions, run manifests.

Every output folder gets a ``manifest.json`` with the library versions, the model
fingerprint, data hashes, the seed and every option (its writer is the folder's owner;
``tomsparse.files`` writes it atomically)."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Iterable

from tomsparse import __version__


def sha256_texts(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    out = {"tomsparse": __version__, "python": sys.version.split()[0],
           "platform": platform.platform()}
    for pkg in ("torch", "transformers", "numpy", "pandas", "datasets", "safetensors",
                "gguf", "accelerate", "vllm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def build_manifest(kind: str, **fields: Any) -> dict[str, Any]:
    """A manifest dict: what was computed, with versions, time and the given fields."""
    return {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": library_versions(), **fields}
