"""PointLocks with a heartbeat (issue 26, part 3): a claim that cannot be parsed, a claim whose pid
belongs to an unrelated live process but whose heartbeat stopped, and a holder killed with
kill -9 are each taken over with a line saying why; a live holder's claim is described (file,
holder, age, when it is taken over) and waited for; ``--take-over`` takes over at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_sweep_cli import write_stores

from tomsparse.cli.main import main
from tomsparse.sweep import locks as locks_module
from tomsparse.sweep.locks import PointLocks
from tomsparse.sweep.runner import point_label  # wherever it lives, the runner uses it
from tomsparse.testing import registered_model

ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()


def _claim(folder: Path, item: str, pid: int, host: str = HOST, age: float = 0.0) -> Path:
    """A claim as another process would leave it, its heartbeat ``age`` seconds old."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{item}.claim"
    path.write_text(json.dumps({"host": host, "pid": pid, "started": time.time() - age}))
    os.utime(path, (time.time() - age,) * 2)
    return path


def test_a_garbage_claim_is_taken_over_at_once(tmp_path):
    logged = []
    for garbage in ("\x00\xff not json", "[1, 2]", '{"host": "h"}', '{"host": "h", "pid": "7"}'):
        (tmp_path / "p.claim").write_text(garbage)
        assert PointLocks(tmp_path, log=logged.append).acquire("p")
        PointLocks(tmp_path).release("p")
    assert len(logged) == 4
    assert all(f"{tmp_path / 'p.claim'}" in line and "cannot be parsed" in line
               for line in logged)


@pytest.mark.parametrize("pid", [1, os.getppid()], ids=["pid-1", "test-parent"])
def test_a_live_foreign_pid_keeps_a_claim_only_while_its_heartbeat_is_fresh(tmp_path, pid):
    logged = []
    claims = PointLocks(tmp_path, log=logged.append)
    path = _claim(tmp_path, "p", pid, age=20)
    assert not claims.acquire("p") and claims.held_by_other("p") and not logged
    line = claims.describe("p")
    assert str(path) in line and f"held by {HOST} pid {pid}" in line
    assert "last heartbeat 20 s ago" in line and "(in 160 s)" in line and "--take-over" in line
    os.utime(path, (time.time() - 10 * 60,) * 2)  # its heartbeat stopped 10 minutes ago
    assert claims.acquire("p")
    assert len(logged) == 1 and str(path) in logged[0] and f"pid {pid}" in logged[0]
    assert "heartbeat is 600 s old" in logged[0]


def test_take_over_takes_a_fresh_claim_at_once(tmp_path):
    logged = []
    _claim(tmp_path, "p", 1, host="elsewhere")
    assert not PointLocks(tmp_path).acquire("p")
    assert PointLocks(tmp_path, take_over=True, log=logged.append).acquire("p")
    assert len(logged) == 1 and "elsewhere pid 1" in logged[0] and "--take-over" in logged[0]


# A holder that claims an item, computes forever with a heartbeat every 0.2 s, and says so.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tomsparse.sweep.locks import PointLocks
    folder, host = Path(sys.argv[1]), sys.argv[2]
    claims = PointLocks(folder, heartbeat=0.2)
    claims.me["host"] = host or claims.me["host"]
    def compute():
        (folder / "computing").touch()
        time.sleep(600)
    claims.compute_once("p", folder / "p.json", compute)
""")


def _killed_holder(folder: Path, host: str = "") -> int:
    """Start a holder, check that its heartbeat beats, kill -9 it; its pid."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), host], env=env)
    try:
        deadline = time.time() + 60
        while not (folder / "computing").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        first = (folder / "p.claim").stat().st_mtime
        time.sleep(0.7)
        assert (folder / "p.claim").stat().st_mtime > first  # the heartbeat beats
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (folder / "p.claim").exists()  # kill -9: nothing released it
    return proc.pid


def test_a_holder_killed_with_kill_9_is_taken_over(tmp_path):
    pid = _killed_holder(tmp_path)
    logged = []
    assert PointLocks(tmp_path, log=logged.append).acquire("p")
    assert len(logged) == 1 and f"pid {pid}" in logged[0]
    assert "no longer runs on this host" in logged[0]


def test_a_holder_killed_on_another_host_is_taken_over_when_its_heartbeat_stops(tmp_path):
    _killed_holder(tmp_path, host="elsewhere")  # its pid cannot be checked from here
    logged = []
    claims = PointLocks(tmp_path, stale_after=1.5, log=logged.append)
    assert not claims.acquire("p")
    time.sleep(1.6)
    assert claims.acquire("p")
    assert len(logged) == 1 and "elsewhere" in logged[0] and "heartbeat is" in logged[0]


def _sweep_argv(paths, corpus, out, *extra):
    return ["sweep", "--model", "tiny", "--device", "cpu", "--scores-tom", str(paths["tom"]),
            "--scores-generic", str(paths["generic"]), "--task-limit", "1", "--corpus",
            str(corpus), "--ppl-max-tokens", "256", "--m_list", "0,0.02", "--controls", "none",
            "--matched-controls", "none", "--out", str(out), *extra]


def test_a_sweep_names_the_claim_it_waits_for_then_takes_it_over(tmp_path, capsys,
                                                                  monkeypatch):
    paths, corpus = write_stores(tmp_path)
    out = tmp_path / "sweep"
    path = _claim(out / "claims", point_label("none", 0, 0.0), 1)  # pid 1: alive, not ours
    monkeypatch.setattr(locks_module, "STALE_AFTER", 2.0)
    # the holder beats until the sweep has said what it waits for, then falls silent
    silent = threading.Event()
    said = PointLocks.wait_for

    def wait_for(self, items, log=None):
        said(self, items, log)
        silent.set()

    def beat():
        while not silent.wait(0.1):
            os.utime(path)

    monkeypatch.setattr(PointLocks, "wait_for", wait_for)
    holder = threading.Thread(target=beat, daemon=True)
    holder.start()
    with registered_model("tiny"):
        assert main(_sweep_argv(paths, corpus, out)) == 0
    assert silent.is_set()
    printed = capsys.readouterr().out
    waiting = [line for line in printed.splitlines() if str(path) in line]
    assert "waiting for 1 point(s)" in printed
    assert len(waiting) == 2, printed  # the waiting line, then the take-over
    assert f"held by {HOST} pid 1" in waiting[0] and "taken over at" in waiting[0]
    assert "taking over" in waiting[1] and "heartbeat is" in waiting[1]
    assert (out / "summary.csv").exists() and not list((out / "claims").glob("*.claim"))


def test_sweep_take_over_does_not_wait(tmp_path, capsys):
    paths, corpus = write_stores(tmp_path)
    out = tmp_path / "sweep"
    path = _claim(out / "claims", point_label("none", 0, 0.0), 1)
    t0 = time.time()
    with registered_model("tiny"):
        assert main(_sweep_argv(paths, corpus, out, "--take-over")) == 0
    printed = capsys.readouterr().out
    assert "waiting for" not in printed
    assert f"taking over claim {path}" in printed and "--take-over" in printed
    assert time.time() - t0 < locks_module.STALE_AFTER
    assert (out / "summary.csv").exists()
