"""Safe file IO for every result: atomic writes, checked output paths, checked readers.

Every result file is written to a temporary name in the same folder and renamed into place,
so a killed run never leaves a half-written file behind; output folders and files are checked
before any work; JSON objects and CSV tables read back are checked, and a damaged one is named
in one line."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from tomsparse.errors import UserError


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``. A failure
    of the file system (a full disk, a read-only folder) names ``path``, not the temporary."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        _name_target(exc, path, None)
        raise
    os.close(fd)
    # mkstemp creates 0600; results are ordinary files, so honour the user's umask instead.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            _name_target(exc, path, tmp)
        raise


def _name_target(exc: OSError, path: Path, tmp: str | None) -> None:
    """Make ``exc`` name the file being written rather than nothing or its temporary."""
    name = exc.filename
    if name is None:
        exc.filename = str(path)
    elif isinstance(name, (str, os.PathLike)):
        text = os.fspath(name)
        if text == tmp or (tmp is None and Path(text).name.startswith(f".{path.name}.")):
            exc.filename = str(path)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be written: an existing file, a
    path under a file, or a folder (or, when it does not exist yet, its nearest existing
    parent) that is not writable. Creates nothing. ``option`` names it in the message."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file; the output is a folder: choose a folder "
                        "path")
    parent = _nearest_existing(path)
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, so the folder cannot be "
                        "created; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: {parent} is not writable; choose a folder you can "
                        "write to")
    return path


def check_output_file(path: str | os.PathLike, option: str = "--out",
                      example: str = "result.json") -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder, a path under
    a file, or a folder to hold it (or, when that does not exist yet, its nearest existing
    parent) that is not writable: the file is written beside and renamed into place, so its
    folder must be. Creates nothing. ``option`` names it in the message, ``example`` is a
    file name suggested inside a folder given instead."""
    text = os.fspath(path)
    path = Path(path)
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise UserError(f"{option} {text} is a folder; give the path of a file to write, e.g. "
                        f"{path / example}")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, so the file cannot be written "
                        "under it; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: {parent} is not writable; choose a folder you can "
                        "write to")
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def read_json_object(path: str | os.PathLike, fix: str = "restore it or write it again") -> dict:
    """The JSON object in ``path``; a missing, unreadable or damaged file (or one holding
    something other than an object) is a UserError naming it, ending with ``fix``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid JSON (not UTF-8 text); the file is damaged: "
                        f"{fix}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}); the file is damaged: {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a JSON {type(data).__name__}, not an object; the file "
                        f"is damaged: {fix}")
    return data


def read_csv_checked(path: str | os.PathLike, columns: Iterable[str], what: str,
                     fix: str = "restore it or write it again"):
    """The table in ``path`` (a pandas DataFrame), which must be ``what`` (e.g. "the sweep's
    verdict table") with at least ``columns``; a missing, unreadable or damaged file, or one
    without those columns, is a UserError naming the file, what was expected, and ``fix``."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; expected {what}; {fix}") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # EmptyDataError, ParserError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable CSV table ({first}); expected {what}; "
                        f"{fix}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:6])) + (", ..." if len(frame.columns) > 6
                                                          else "")
        raise UserError(f"{path}: lacks the column(s) {', '.join(missing)} of {what} (it has "
                        f"{found or 'none'}); {fix}")
    return frame
