"""Claims on the work items of a sweep folder, so that several processes (two shells, or the
ranks of ``torchrun``) can share one folder and compute each point once.

A process claims an item by creating ``claims/<item>.claim`` with ``O_CREAT | O_EXCL`` (atomic
on local file systems and on NFSv3+), holding its host, pid and start time. Others skip an item
held by a live claim and come back to it later. A claim whose holder is gone is taken over: on
the same host, a pid that no longer exists; on any host, a claim older than ``stale_after``
seconds (default 6 hours: longer than any one point takes). Taking over is "remove, then
create exclusively", so two processes that find the same dead claim at the same moment may
both compute that item; both write the same result atomically, so this costs time, never
correctness.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

STALE_AFTER = 6 * 3600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


class Claims:
    """The claims of one folder, as seen by this process."""

    def __init__(self, folder: str | Path, stale_after: float = STALE_AFTER):
        self.folder = Path(folder)
        self.stale_after = stale_after
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}

    def _path(self, item: str) -> Path:
        return self.folder / f"{item}.claim"

    def holder(self, item: str) -> dict | None:
        """The claim's record, or None when the item is not claimed. A claim that cannot be
        read (its writer was killed between create and write) counts as started at its
        file's modification time by an unknown holder."""
        path = self._path(item)
        try:
            text = path.read_text()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError
        except ValueError:
            record = {"host": None, "pid": None}
        record.setdefault("started", mtime)
        return record

    def is_live(self, record: dict | None) -> bool:
        """Whether a claim's holder may still be working on it."""
        if record is None:
            return False
        if time.time() - float(record.get("started") or 0) > self.stale_after:
            return False
        if record.get("host") == self.me["host"] and isinstance(record.get("pid"), int):
            return record["pid"] == self.me["pid"] or _pid_alive(record["pid"])
        return True  # another host (or unreadable): trust it until it is stale

    def held_by_other(self, item: str) -> bool:
        record = self.holder(item)
        mine = record is not None and {k: record.get(k) for k in self.me} == self.me
        return self.is_live(record) and not mine

    def acquire(self, item: str) -> bool:
        """Claim ``item``; False when another live process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(item)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                record = self.holder(item)
                if record is not None and self.is_live(record):
                    return {k: record.get(k) for k in self.me} == self.me
                try:  # the holder is gone: take the claim over
                    path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({**self.me, "started": time.time()}, fh)
            return True
        return False

    def release(self, item: str) -> None:
        """Drop our claim on ``item`` (a claim another process took over is left alone)."""
        record = self.holder(item)
        if record is not None and {k: record.get(k) for k in self.me} == self.me:
            try:
                self._path(item).unlink()
            except FileNotFoundError:
                pass

    def any_live_other(self) -> bool:
        """Whether another live process holds any claim here (then its temporary files are
        in use and must not be cleaned up)."""
        if not self.folder.is_dir():
            return False
        return any(self.held_by_other(p.stem) for p in self.folder.glob("*.claim"))
