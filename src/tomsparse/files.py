"""Safe file IO for every result: atomic writes, checked output paths, checked readers.

Every file tomsparse writes goes through ``atomic_path``: it is written to a temporary name in
the same folder and renamed into place, so a killed run or a full disk never leaves a
half-written file behind, and a symbolic link planted where the file goes is never written
through (a link leading out of the folder is refused; the rename replaces any other link, not
its target). A full disk is named as such, also when the writing library (safetensors,
torch) reports it in its own words. Output folders and files are checked before any work
(``check_output_dir``, ``check_output_file``, ``check_no_overwrite``); JSON objects and CSV
tables read back are checked (``tomsparse.safe_read``), and a damaged one is named in one
line."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from tomsparse.errors import UserError
from tomsparse.safe_read import MAX_TEXT_BYTES, parse_json, read_csv, read_text

# How a writing library words a full disk when it does not raise OSError(ENOSPC) itself
# (safetensors: "IoError(Os { code: 28, kind: StorageFull, ... })"; torch's zip writer:
# "file write failed", checked against the free space).
_DISK_FULL_TEXT = re.compile(r"No space left on device|StorageFull|os error 28|code: 28|"
                             r"Disk quota exceeded", re.I)
_NEARLY_FULL = 1 << 20  # bytes free below which a failed write is taken for a full disk


def check_link(path: str | os.PathLike) -> Path:
    """Refuse to write ``path`` when it is a symbolic link leading out of its folder (a link
    planted there would send the output, or overwrite a file, elsewhere). A link that stays
    inside the folder is replaced by the file, never written through."""
    path = Path(path)
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        folder = Path(os.path.realpath(path.parent))
        if target.parent != folder and folder not in target.parents:
            raise UserError(f"{path} is a symbolic link to {target}, outside {path.parent}; "
                            "tomsparse never writes through a link out of its output folder: "
                            "remove the link (or choose another folder) and run the command "
                            "again")
    return path


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write looks like a full disk: its message says so, or (a library's
    error of its own) the folder has almost no space left."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return True
    if _DISK_FULL_TEXT.search(str(exc)):
        return True
    if isinstance(exc, (RuntimeError, OSError)) or "SafetensorError" in type(exc).__name__:
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL
        except OSError:
            return False
    return False


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``. A failure
    of the file system (a full disk, a read-only folder) names ``path``, not the temporary;
    a full disk reported by the writing library in its own words becomes OSError(ENOSPC)
    naming ``path``. ``path`` may not be a link out of its folder (``check_link``)."""
    path = check_link(path)
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
        check_link(path)  # planted while the file was being written
        os.replace(tmp, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and _disk_full(exc, path.parent)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if full and not (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        if isinstance(exc, OSError):
            _name_target(exc, path, tmp)
        raise


def check_no_overwrite(paths: Iterable[str | os.PathLike], overwrite: bool,
                       option: str = "--out") -> None:
    """The one overwrite rule of every command that writes named files into a folder: an
    existing file among ``paths`` is refused, before any work, unless ``overwrite``
    (``--overwrite``) is given."""
    paths = [check_link(p) for p in paths]  # a link out of the folder: refused first
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UserError(f"{option}: {existing[0]} already exists{more}; add --overwrite to "
                        "replace it, or choose another folder")


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def read_json_object(path: str | os.PathLike, fix: str = "restore it or write it again",
                     max_bytes: int = MAX_TEXT_BYTES) -> dict:
    """The JSON object in ``path``; a missing, unreadable, oversized, too deeply nested or
    damaged file (or one holding something other than an object) is a UserError naming it,
    ending with ``fix``."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{path}: missing; {fix}")
    text = read_text(path, "JSON file", max_bytes, f"the file is damaged: {fix}", kind="JSON")
    data = parse_json(text, str(path), fix=f"the file is damaged: {fix}")
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a JSON {type(data).__name__}, not an object; the file "
                        f"is damaged: {fix}")
    return data


def read_csv_checked(path: str | os.PathLike, columns: Iterable[str], what: str,
                     fix: str = "restore it or write it again"):
    """The table in ``path`` (a pandas DataFrame), which must be ``what`` (e.g. "the sweep's
    verdict table") with at least ``columns``; a missing, unreadable or damaged file, or one
    without those columns, is a UserError naming the file, what was expected, and ``fix``."""
    path = Path(path)
    frame = read_csv(path, what, fix=fix)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:6])) + (", ..." if len(frame.columns) > 6
                                                          else "")
        raise UserError(f"{path}: lacks the column(s) {', '.join(missing)} of {what} (it has "
                        f"{found or 'none'}); {fix}")
    return frame
