"""Several processes on one sweep folder (issue 16): points are claimed before they are
computed, so two processes split a sweep, every point is computed once, and the tables equal
a single process's. Also: claims of dead holders are taken over, live ones are respected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
from test_sweep_cli import write_stores

from tomsparse.cli.main import main
from tomsparse.sweep.locks import PointLocks
from tomsparse.testing import registered_model

ROOT = Path(__file__).resolve().parents[2]

# A child process: --model tiny is the tiny Llama of tomsparse.testing; it starts when the
# go-file appears, so both children begin at the same moment.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tomsparse.cli.main import main
    from tomsparse.testing import registered_model
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.05)
    with registered_model("tiny"):
        sys.exit(main(sys.argv[2:]))
""")


def _argv(paths, corpus, out):
    return ["sweep", "--model", "tiny", "--device", "cpu", "--scores-tom", str(paths["tom"]),
            "--scores-generic", str(paths["generic"]), "--task-limit", "1", "--corpus",
            str(corpus), "--ppl-max-tokens", "256", "--m_list", "0,0.02,0.04",
            "--controls", "random,tom-only", "--random-seeds", "0,1", "--matched-controls",
            "random-fraction", "--match-m", "0.04", "--out", str(out)]


def _run(go: Path, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(go), *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _tables(out: Path) -> dict:
    keep = ["mode", "seed", "m", "masked", "perplexity"]
    summary = pd.read_csv(out / "summary.csv")
    return {"summary": summary.drop(columns=[c for c in summary if c.endswith("seconds")]),
            "side": pd.read_csv(out / "summary_side_by_side.csv"),
            "points": summary[keep].sort_values(keep).reset_index(drop=True),
            "tom": (out / "tom_summary.csv").read_text()}


def test_two_processes_split_a_sweep_and_match_one(tmp_path):
    paths, corpus = write_stores(tmp_path)
    shared, single = tmp_path / "shared", tmp_path / "single"
    go = tmp_path / "go"
    procs = [_run(go, _argv(paths, corpus, shared)) for _ in range(2)]
    go.touch()
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    with registered_model("tiny"):
        assert main(_argv(paths, corpus, single)) == 0

    # every point computed exactly once, by one of the two processes
    records = [json.loads(p.read_text()) for p in (shared / "points").glob("*.json")]
    workers = {r["worker"].rsplit(":", 1)[1] for r in records}
    assert workers <= {str(p.pid) for p in procs}
    logs = "".join(o + e for o, e in results)
    searches = [line for line in logs.splitlines() if "damage-matched random-fraction" in line]
    assert len(searches) == 1, searches  # the search ran in one process only
    assert not list((shared / "claims").glob("*.claim"))  # every claim released

    a, b = _tables(shared), _tables(single)
    pd.testing.assert_frame_equal(a["points"], b["points"])
    pd.testing.assert_frame_equal(a["side"], b["side"])
    assert a["tom"] == b["tom"]


def test_claims_respect_live_holders_and_take_over_dead_ones(tmp_path):
    mine, other = PointLocks(tmp_path), PointLocks(tmp_path)
    assert mine.acquire("p1") and mine.acquire("p1")  # held by us: still ours
    other.me = {"host": mine.me["host"], "pid": mine.me["pid"] + 1}
    # a live holder on this host (our own pid is alive) is respected
    assert not other.acquire("p1") and other.held_by_other("p1")
    mine.release("p1")
    assert other.acquire("p1")
    # a dead holder on this host: its claim is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "p2.claim").write_text(json.dumps({"host": mine.me["host"], "pid": dead.pid,
                                                   "started": time.time()}))
    assert mine.acquire("p2")
    # another host's claim is trusted until it is stale
    (tmp_path / "p3.claim").write_text(json.dumps({"host": "elsewhere", "pid": 1,
                                                   "started": time.time()}))
    assert not mine.acquire("p3") and mine.any_live_other()
    # ... its heartbeat (the file's modification time) an hour old: stale, whatever "started"
    os.utime(tmp_path / "p3.claim", (time.time() - 3600,) * 2)
    assert mine.acquire("p3")
    # an empty claim cannot be parsed: stale at once (claims are linked in whole, never
    # half-written, so this is damage, not a writer in the middle of its write)
    (tmp_path / "p4.claim").write_text("")
    assert PointLocks(tmp_path).acquire("p4")


def test_torchrun_ranks_split_a_sweep(tmp_path):
    """``torchrun --nproc-per-node 2 tomsparse sweep``: two gloo ranks split the points
    through the claims, rank 0 alone writes the tables, which equal one process's."""
    paths, corpus = write_stores(tmp_path)
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    script = tmp_path / "rank.py"
    script.write_text(CHILD)
    (tmp_path / "go").touch()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(tmp_path / "go"), *_argv(paths, corpus, sharded)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2: done" in proc.stdout
    records = [json.loads(p.read_text()) for p in (sharded / "points").glob("*.json")]
    assert len({r["worker"] for r in records}) == 2  # both ranks computed points
    with registered_model("tiny"):
        assert main(_argv(paths, corpus, single)) == 0
    a, b = _tables(sharded), _tables(single)
    pd.testing.assert_frame_equal(a["points"], b["points"])
    pd.testing.assert_frame_equal(a["side"], b["side"])
    assert a["tom"] == b["tom"]
    assert (sharded / "report.html").exists()
