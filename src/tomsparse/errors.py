"""User-facing errors, and the one mapping of failures to the one line a user reads.

A ``UserError`` is bad input or a missing prerequisite that the user can fix. The CLI
prints its message as one line (``tomsparse: error: ...``) and exits with code 2; it
never shows a traceback for these.

``user_message`` is the net under everything else: a failure the user can fix that a library
function did not turn into a ``UserError`` itself (a file that is missing, not a folder, not
writable, on a full or read-only disk; a damaged JSON, CSV or safetensors file; out of
memory) becomes one line naming the file where it is known. Anything else is a bug: the CLI
shows its traceback and asks for a report (``bug_report_line``).
"""

from __future__ import annotations

import errno
import os
import traceback

REPORT_TO = "the tomsparse maintainers"


class UserError(Exception):
    """Bad input or environment; the message says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str):
        # One line: a multi-line message would defeat the "one clear line" promise.
        super().__init__(" ".join(str(message).split()))


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# Damaged files, by the qualified names of their exception classes (so that neither pandas
# nor safetensors is imported here): what kind of file, and the suffixes such a file has.
_CORRUPT = {
    "json.decoder.JSONDecodeError": ("JSON", (".json",)),
    "safetensors._safetensors_rust.SafetensorError": ("safetensors", (".safetensors",)),
    "safetensors_rust.SafetensorError": ("safetensors", (".safetensors",)),
    "pandas.errors.EmptyDataError": ("CSV", (".csv",)),
    "pandas.errors.ParserError": ("CSV", (".csv",)),
}
_UNPICKLING = {"_pickle.UnpicklingError", "pickle.UnpicklingError"}
_OUT_OF_MEMORY = {"torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError", "builtins.MemoryError"}


def _names(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def file_in_traceback(exc: BaseException, suffixes: tuple[str, ...]) -> str | None:
    """The file a failure was reading, when its traceback tells: the innermost frame holding a
    path-like local with one of ``suffixes`` (exactly one distinct such path there)."""
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    for frame in reversed(frames):
        found = set()
        for value in frame.f_locals.values():
            if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
                text = os.fspath(value)
                if len(text) < 4096 and "\n" not in text and text.lower().endswith(suffixes):
                    found.add(text)
        if len(found) == 1:
            return found.pop()
        if found:
            return None  # several candidates: naming one could name the wrong file
    return None


def _os_message(exc: OSError) -> str | None:
    name = exc.filename if exc.filename is not None else None
    other = exc.filename2
    where = f"{name}" if name is not None else "a file"
    code = exc.errno
    reason = one_line(exc.strerror or exc)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        what = "no space left on the device" if code == errno.ENOSPC else "disk quota exceeded"
        return (f"{what} while writing {where}; free some space (or write to another disk) "
                "and run the command again: finished results are kept, half-written files "
                "are not")
    if code == errno.EROFS:
        return f"{where}: read-only file system; write the output to another folder"
    if isinstance(exc, FileNotFoundError) or code == errno.ENOENT:
        return (f"{where}: no such file or folder"
                + (f" (while moving it to {other})" if other else "")
                + "; check the path")
    if isinstance(exc, NotADirectoryError) or code == errno.ENOTDIR:
        return (f"{where}: a part of this path is a file, not a folder; choose another path "
                "(or move the file away)")
    if isinstance(exc, IsADirectoryError) or code == errno.EISDIR:
        return f"{where} is a folder where a file is expected; give a file path"
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
        return (f"{where}: permission denied; choose a path you may read and write, or change "
                "its permissions")
    if code == errno.ENAMETOOLONG:
        return f"{where}: the path is too long; choose a shorter one"
    if code == errno.EEXIST:
        return f"{where} already exists (as a file?); choose another path"
    if name is not None:  # another failure of one named file (I/O error, too many links...)
        return f"{where}: {reason}"
    return None


def user_message(exc: BaseException) -> str | None:
    """The one line a user reads for ``exc``, or None when it is a bug (show the traceback)."""
    if isinstance(exc, UserError):
        return str(exc)
    names = _names(exc)
    corrupt = next((_CORRUPT[n] for n in names if n in _CORRUPT), None)
    if corrupt is not None:
        kind, suffixes = corrupt
        path = file_in_traceback(exc, suffixes)
        detail = one_line(exc, 160)
        return ((f"{path}: not a valid {kind} file ({detail}); the file is damaged or was not "
                 "written by tomsparse: restore it, or delete it to have it recomputed")
                if path else
                (f"a {kind} file is damaged ({detail}); restore it, or delete it to have it "
                 "recomputed"))
    if names & _UNPICKLING:
        # torch.load(weights_only=True) refused a pickle of other objects: nothing ran. Its
        # text advises weights_only=False, which would run them, so it is not repeated.
        path = file_in_traceback(exc, (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        return (f"{path or 'a weight file'}: refused: it pickles Python objects other than "
                "tensors, which could run code; tomsparse loads weights only: use safetensors "
                "weights, or a file from a source you trust")
    if names & _OUT_OF_MEMORY:
        return (f"out of memory ({one_line(exc, 160)}); lower --batch-size, use a smaller "
                "--dtype or another --device")
    if isinstance(exc, BrokenPipeError):
        return None  # the CLI ends quietly when its reader goes away
    if isinstance(exc, (ConnectionError, TimeoutError)) or (
            "requests.exceptions.RequestException" in names):
        return (f"network failure ({one_line(exc, 160)}); check the connection, or use the "
                "offline models and corpora (tomsparse info lists them)")
    if isinstance(exc, OSError):
        return _os_message(exc)
    return None


def bug_report_line(version: str) -> str:
    """The line after an unexpected error's traceback."""
    return (f"tomsparse: internal error: this is a bug in tomsparse {version}, not in your "
            f"input; please report it to {REPORT_TO} with the command line and the traceback "
            "above")
