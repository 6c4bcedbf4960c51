"""PointLocks on the work items of a sweep folder, so that several processes (two shells, or the
ranks of ``torchrun``) can share one folder and compute each point once.

A process claims an item by hard-linking a finished record (its host, pid and start time) to
``claims/<item>.claim``: the link fails when the name exists, so creation is exclusive (local
file systems and NFSv3+) and nobody ever reads a half-written claim. While it computes, the
holder touches the claim every ``HEARTBEAT_SECONDS`` (a daemon thread), so the file's
modification time is its heartbeat. Others skip an item held by a live claim and come back to
it later. A claim is stale, and taken over, when its heartbeat is older than ``STALE_AFTER``
whatever its pid says (a pid may have been reused by an unrelated process), when it cannot be
parsed, or at once when its holder's pid no longer exists on this host; ``--take-over`` takes
over every claim at once. Taking over is "remove, then create exclusively", so two processes
that find the same dead claim at the same moment may both compute that item; both write the
same result atomically, so this costs time, never correctness.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from tomsparse.files import read_json_object

# A holder touches its claim this often while it computes.
HEARTBEAT_SECONDS = 30.0
# A claim whose heartbeat is older than this is abandoned: six missed heartbeats, so a holder
# stalled by a busy disk or a long garbage collection is not taken over by mistake.
STALE_AFTER = 180.0
# Seconds between looks at an item another process holds.
POLL_SECONDS = 2.0


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


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S UTC")


class PointLocks:
    """The claims of one folder, as seen by this process."""

    def __init__(self, folder: str | Path, stale_after: float | None = None,
                 heartbeat: float | None = None, take_over: bool = False, log=print):
        self.folder = Path(folder)
        # read here, not bound as defaults, so that tests can shorten them
        self.stale_after = STALE_AFTER if stale_after is None else stale_after
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        self.take_over, self.log = take_over, log
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}

    def path(self, item: str) -> Path:
        return self.folder / f"{item}.claim"

    def holder(self, item: str) -> dict | None:
        """The claim's record with its ``heartbeat`` (the file's modification time), or None
        when the item is not claimed. A claim that is not a JSON object with a host and an
        integer pid gets ``valid: False``."""
        path = self.path(item)
        try:
            text = path.read_text(errors="replace")
            heartbeat = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):
            record = None
        valid = (isinstance(record, dict) and isinstance(record.get("host"), str)
                 and isinstance(record.get("pid"), int) and not isinstance(record["pid"], bool))
        if not valid:
            record = {"host": None, "pid": None}
        return {**record, "valid": valid, "heartbeat": heartbeat}

    def _mine(self, record: dict | None) -> bool:
        return record is not None and {k: record.get(k) for k in self.me} == self.me

    def stale_reason(self, record: dict) -> str | None:
        """Why a claim's holder is taken to be gone; None while it may still be working."""
        if not record["valid"]:
            return "it cannot be parsed (not a claim record)"
        age = time.time() - record["heartbeat"]
        if age > self.stale_after:
            return (f"its heartbeat is {age:.0f} s old (a claim is stale after "
                    f"{self.stale_after:.0f} s)")
        if record["host"] == self.me["host"] and not _pid_alive(record["pid"]):
            return f"its pid {record['pid']} no longer runs on this host"
        return None

    def is_live(self, record: dict | None) -> bool:
        """Whether a claim's holder may still be working on it."""
        if record is None:
            return False
        if self._mine(record):
            return True
        return not self.take_over and self.stale_reason(record) is None

    def held_by_other(self, item: str) -> bool:
        record = self.holder(item)
        return self.is_live(record) and not self._mine(record)

    def describe(self, item: str) -> str:
        """One line on who holds ``item``, for how long, and when it will be taken over."""
        record = self.holder(item)
        if record is None:
            return f"{self.path(item)}: no longer claimed"
        age = time.time() - record["heartbeat"]
        due = record["heartbeat"] + self.stale_after
        return (f"{self.path(item)}: held by {record['host']} pid {record['pid']}, last "
                f"heartbeat {age:.0f} s ago; taken over at {_clock(due)} (in "
                f"{max(due - time.time(), 0):.0f} s) unless it beats again, or now with "
                "--take-over")

    def _create(self, path: Path) -> bool:
        """Create ``path`` holding our record; False when it exists."""
        record = json.dumps({**self.me, "started": time.time()})
        part = path.with_name(f".{path.name}.{self.me['pid']}.tmp")
        part.unlink(missing_ok=True)
        # created, never opened through a link planted under this name
        with os.fdopen(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), "w") as fh:
            fh.write(record)
        try:
            os.link(part, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: exclusive create, then write
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(record)
        finally:
            part.unlink(missing_ok=True)
        return True

    def acquire(self, item: str) -> bool:
        """Claim ``item``; False when another live process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(item)
        for _ in range(2):
            if self._create(path):
                return True
            record = self.holder(item)
            if record is None:  # released in the meantime
                continue
            if self._mine(record):
                return True
            reason = "--take-over" if self.take_over else self.stale_reason(record)
            if reason is None:
                return False
            self.log(f"[tomsparse] taking over claim {path} (held by {record['host']} pid "
                     f"{record['pid']}): {reason}")
            path.unlink(missing_ok=True)
        return False

    def release(self, item: str) -> None:
        """Drop our claim on ``item`` (a claim another process took over is left alone)."""
        if self._mine(self.holder(item)):
            self.path(item).unlink(missing_ok=True)

    def any_live_other(self) -> bool:
        """Whether another live process holds any claim here (then its temporary files are
        in use and must not be cleaned up)."""
        if not self.folder.is_dir():
            return False
        return any(self.held_by_other(p.stem) for p in self.folder.glob("*.claim"))

    @contextmanager
    def beating(self, item: str):
        """Touch our claim on ``item`` every ``heartbeat`` seconds while the block runs (and
        stop touching it once another process took it over)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                if not self._mine(self.holder(item)):
                    return
                try:
                    os.utime(self.path(item))
                except OSError:  # removed in the meantime
                    return

        thread = threading.Thread(target=beat, name=f"claim heartbeat {item}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def compute_once(self, item: str, done: Path, compute, wait: bool = True) -> dict | None:
        """``done``'s record, computing it under a beating claim on ``item`` when it is
        missing; while another live process holds the claim, wait for its record (or return
        None without ``wait``)."""
        while True:
            if done.exists():
                return read_json_object(done)
            if self.acquire(item):
                try:
                    if done.exists():  # finished by its holder just before we claimed it
                        return read_json_object(done)
                    with self.beating(item):
                        return compute()
                finally:
                    self.release(item)
            if not wait:
                return None
            time.sleep(POLL_SECONDS)

    def wait_for(self, items: list[str], log=None) -> None:
        """Say which of ``items`` other processes hold, by whom, and until when (the caller
        then waits for them with ``compute_once``)."""
        log = log or self.log
        held = [item for item in items if self.held_by_other(item)]
        if held:
            log(f"[tomsparse] waiting for {len(held)} point(s) other processes are computing:")
            for item in held:
                log(f"[tomsparse]   {self.describe(item)}")
