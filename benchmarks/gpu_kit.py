"""The travel kit of the GPU check (``make gpu-kit``): what ``benchmarks/gpu_check.py`` needs on
a lent GPU machine beyond that machine's own Python, prepared here on the CPU machine.

A lent machine has Python 3.12 with torch, transformers, scipy, pandas, matplotlib,
accelerate, safetensors and tokenizers (and their own dependencies: numpy, pyyaml, tqdm,
huggingface_hub, ...), no gguf, no datasets, no network; the working tree travels to it, plus
at most 64 MiB of ignored paths named in the device tool's ``carry``. The kit is one such
path, ``gpu-kit/`` (git-ignored):

* ``gpu-kit/tokenizer/``: the real tokenizer of the packaged offline model (SmolLM2-135M's,
  49,152 tokens), exported from its GGUF here (there is no gguf package, and no GGUF, there);
  about 3.5 MB;
* ``gpu-kit/wheels/``: wheels for Python 3.12 (``pip download --only-binary=:all:
  --python-version 3.12 --no-deps``) of the project's requirements the machine may lack
  (``WHEELS``, pinned as in requirements.txt); the check puts each one at the END of its
  ``sys.path`` (a wheel is a zip archive: pure-Python ones import from it as they are,
  others are unpacked first), so the machine's own packages always win;
* ``gpu-kit/kit.json``: what is in it, with sizes and sha256.

    make gpu-kit                                   # .venv/bin/python benchmarks/gpu_kit.py
    python benchmarks/gpu_kit.py --out gpu-kit --wheel tqdm==4.70.1 --wheel gguf==0.19.0

tomsparse itself travels as source in the working tree (``PYTHONPATH=src``), not as a wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIT = "gpu-kit"
TOKENIZER = "tokenizer"
WHEEL_DIR = "wheels"
RECORD = "kit.json"
PYTHON_VERSION = "3.12"
# The device tool carries at most 64 MiB of ignored paths; the kit stays well below.
CARRY_LIMIT = 64 << 20
KIT_LIMIT = 32 << 20
# Requirements (pins of requirements.txt) the check may import that are not among the
# machine's packages as last read: tqdm (tomsparse's progress bars; also a transformers
# dependency, so normally present: the wheel is the fallback). gguf and datasets are left out:
# the check loads no GGUF (the tokenizer is exported) and reads no dataset.
WHEELS = ("tqdm==4.70.1",)
OFFLINE_MODEL = "smollm2-135m"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def export_tokenizer(dest: Path, model: str = OFFLINE_MODEL) -> Path:
    """The packaged offline ``model``'s tokenizer, read from its GGUF and saved as a plain
    Hugging Face tokenizer folder ``dest`` (tokenizer.json and its config); needs the gguf
    package and the model's package, as on the CPU machine."""
    from transformers import AutoTokenizer

    from tomsparse.lm.gguf import OFFLINE_MODELS, assemble_gguf

    entry = OFFLINE_MODELS[model]
    with tempfile.TemporaryDirectory(prefix="gpu_kit_") as work:
        folder, file = assemble_gguf(entry, Path(work))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    dest = Path(dest)
    part = dest.with_name(dest.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    tokenizer.save_pretrained(part)
    (part / "source.json").write_text(json.dumps(
        {"model": model, "package": entry.package, "vocab": len(tokenizer)}, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(part, dest)
    return dest


def download_wheels(dest: Path, requirements, python_version: str = PYTHON_VERSION) -> list[Path]:
    """Wheels of ``requirements`` (no dependencies) for ``python_version``, into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if requirements:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", python_version,
                        "--dest", str(dest), *requirements], check=True)
    return sorted(dest.glob("*.whl"))


def build_kit(out: Path, wheels=WHEELS, model: str = OFFLINE_MODEL) -> dict:
    """Write the kit into ``out`` (replaced whole) and return its record."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    export_tokenizer(out / TOKENIZER, model)
    download_wheels(out / WHEEL_DIR, list(wheels))
    files = sorted(p for p in out.rglob("*") if p.is_file())
    record = {
        "made": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python_version": PYTHON_VERSION,
        "tokenizer_of": model,
        "wheels": list(wheels),
        "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
                  for p in files},
    }
    record["bytes"] = sum(f["bytes"] for f in record["files"].values())
    (out / RECORD).write_text(json.dumps(record, indent=1))
    if record["bytes"] > KIT_LIMIT:
        raise SystemExit(f"gpu_kit: the kit is {record['bytes'] / 2**20:.1f} MiB, more than the "
                         f"{KIT_LIMIT >> 20} MiB allowed (the device tool carries "
                         f"{CARRY_LIMIT >> 20} MiB in all)")
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--out", default=KIT, help=f"the kit's folder (default {KIT})")
    ap.add_argument("--wheel", action="append", default=None,
                    help=f"a requirement to carry as a wheel (repeatable; default: "
                         f"{' '.join(WHEELS)})")
    args = ap.parse_args(argv)
    record = build_kit(Path(args.out), WHEELS if args.wheel is None else args.wheel)
    print(f"gpu_kit: {args.out}: {len(record['files'])} files, "
          f"{record['bytes'] / 2**20:.2f} MiB (carry limit {CARRY_LIMIT >> 20} MiB)")
    for name, info in record["files"].items():
        print(f"  {name:<48s} {info['bytes']:>12,d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
