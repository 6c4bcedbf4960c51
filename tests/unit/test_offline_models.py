"""The offline model entries are well-formed: parts in order, pins that match what the Makefile
(or requirements-nodeps.txt) installs, and a join that keeps the order and checks the sha256.
The converted-model cache records content hashes and rebuilds a damaged folder (on a tiny
stand-in model). No network; the packages themselves are needed only by the test that says so
(skipped else)."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from tomsparse.errors import UserError
from tomsparse.lm import gguf
from tomsparse.manifest import sha256_file

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.]*)$")
MODELS = sorted(gguf.OFFLINE_MODELS)


def _import_name(requirement: str) -> str:
    return re.sub(r"[-.]+", "_", requirement.split("==")[0]).lower()


def _makefile_pins(target: str) -> list[str]:
    """The name==version arguments of a Makefile target's recipe (continuations joined)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    except StopIteration:
        pytest.fail(f"Makefile has no target {target!r}")
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith(("\t", " ")):
            break
        recipe.append(line)
    return re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.]*", " ".join(recipe))


@pytest.mark.parametrize("name", MODELS)
def test_entry_is_well_formed(name):
    entry = gguf.OFFLINE_MODELS[name]
    assert entry.name == name
    assert entry.licence and entry.description and entry.install_hint
    assert entry.pins and all(PIN.match(p) for p in entry.pins), entry.pins
    assert len(set(entry.pins)) == len(entry.pins)
    # Every part lives in a package the pins install (pip name -> import name).
    pinned = {_import_name(p) for p in entry.pins}
    assert {pkg for pkg, _ in entry.gguf_parts} <= pinned
    assert len(set(entry.gguf_parts)) == len(entry.gguf_parts)
    if len(entry.gguf_parts) > 1:
        # A join is only checkable against a digest; and the parts must be listed in order:
        assert entry.sha256 and re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        # the part number in each package name counts up from 1, and the one in each file
        # name counts up by one (gemma's files start at part00, the Qwen ones at part01).
        files = [int(re.findall(r"part(\d+)", Path(rel).name)[-1]) for _, rel in entry.gguf_parts]
        assert files == list(range(files[0], files[0] + len(files))) and files[0] in (0, 1)
        for k, (pkg, _) in enumerate(entry.gguf_parts, start=1):
            assert int(re.search(r"part(\d+)$", pkg).group(1)) == k, pkg


@pytest.mark.parametrize("name", MODELS)
def test_pins_match_the_install_command(name):
    entry = gguf.OFFLINE_MODELS[name]
    hint = entry.install_hint.split("(")[0].strip()
    if hint.startswith("make ") and hint != "make install":
        assert _makefile_pins(hint.split()[1]) == list(entry.pins)
    else:
        nodeps = (ROOT / "requirements-nodeps.txt").read_text().split()
        assert set(entry.pins) <= set(nodeps)


@pytest.mark.parametrize("name", [n for n in MODELS if n.startswith("qwen")])
def test_missing_package_names_the_make_target(monkeypatch, name):
    monkeypatch.setattr(gguf, "package_dir", lambda pkg: None)
    entry = gguf.OFFLINE_MODELS[name]
    with pytest.raises(UserError, match=rf"not installed.*{re.escape(entry.install_hint)}"):
        gguf.gguf_files(entry)


def test_parts_are_joined_in_order_and_checked(tmp_path, monkeypatch):
    chunks = [b"GGUF" + b"a" * 5, b"b" * 7, b"c" * 3]
    for k, chunk in enumerate(chunks, start=1):
        (tmp_path / f"pkg_part{k}" / "data").mkdir(parents=True)
        (tmp_path / f"pkg_part{k}" / "data" / f"part{k:02d}.bin").write_bytes(chunk)
    monkeypatch.setattr(gguf, "package_dir", lambda pkg: tmp_path / pkg)
    parts = tuple((f"pkg_part{k}", f"data/part{k:02d}.bin") for k in range(1, 4))
    good = gguf.OfflineModel(name="fake", description="d", licence="l", package="pkg",
                             install_hint="make fake", gguf_parts=parts,
                             sha256=hashlib.sha256(b"".join(chunks)).hexdigest())
    work = tmp_path / "work"
    work.mkdir()
    folder, file = gguf.assemble_gguf(good, work)
    assert (folder / file).read_bytes() == b"".join(chunks)
    bad = gguf.OfflineModel(**{**good.__dict__, "gguf_parts": parts[::-1]})
    with pytest.raises(UserError, match=r"sha256.*make fake"):
        gguf.assemble_gguf(bad, work)


@pytest.mark.parametrize("name", MODELS)
def test_installed_parts_start_with_a_gguf_header(name):
    entry = gguf.OFFLINE_MODELS[name]
    try:
        paths = gguf.gguf_files(entry)
    except UserError:
        pytest.skip(f"{entry.package} is not installed ({entry.install_hint})")
    with open(paths[0], "rb") as f:
        assert f.read(4) == b"GGUF"
    for path in paths[1:]:  # a later part that is a whole GGUF means a wrong split or order
        with open(path, "rb") as f:
            assert f.read(4) != b"GGUF", path


# ------------------------------------------------------------------ the converted-model cache
# A stand-in offline model: its "GGUF" is a file in a fake package and its conversion saves a
# tiny Llama, so the cache code (record, checks, rebuild) runs as for the real models.


@pytest.fixture
def offline_tiny(tmp_path, monkeypatch):
    """``load_model("tiny-offline")`` converts (a tiny Llama) into ``$TOMSPARSE_CACHE``; yields
    the list of conversions and the log lines."""
    from tomsparse.testing import save_tiny_model

    monkeypatch.setenv("TOMSPARSE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "pkg" / "tiny_pkg").mkdir(parents=True)
    (tmp_path / "pkg" / "tiny_pkg" / "tiny.gguf").write_bytes(b"GGUF stand-in")
    monkeypatch.setattr(gguf, "package_dir", lambda pkg: tmp_path / "pkg" / pkg)
    entry = gguf.OfflineModel(name="tiny-offline", description="d", licence="l",
                              package="tiny-pkg==1", install_hint="pip install tiny-pkg",
                              gguf_parts=(("tiny_pkg", "tiny.gguf"),), pins=("tiny-pkg==1",))
    monkeypatch.setitem(gguf.OFFLINE_MODELS, entry.name, entry)
    conversions, logs = [], []

    def dequantize_into(entry, work):
        conversions.append(work)
        save_tiny_model("llama", work)

    monkeypatch.setattr(gguf, "dequantize_into", dequantize_into)
    yield conversions, logs


def load_tiny(logs):
    from tomsparse.lm import registry

    return registry.load_model("tiny-offline", device="cpu", log=logs.append)


def flip(path, offset, count=4096, keep_mtime=True):
    """Invert ``count`` bytes of ``path`` at ``offset`` in place (same size); with
    ``keep_mtime`` its modification time is put back, as bit rot or a careful tool leaves it."""
    stat = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:  # a later time even on a coarse clock
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_conversion_records_content_hashes(offline_tiny):
    conversions, logs = offline_tiny
    first = load_tiny(logs)
    folder = gguf.converted_folder("tiny-offline")
    record = json.loads((folder / gguf.COMPLETION_RECORD).read_text())
    weights = folder / "model.safetensors"
    assert record["record_version"] == gguf.RECORD_VERSION
    assert record["files"]["model.safetensors"] == weights.stat().st_size
    assert record["sha256"]["model.safetensors"] == sha256_file(weights)
    assert record["sampled_sha256"]["model.safetensors"] == gguf.sampled_sha256(weights)
    assert set(record["sha256"]) == set(record["files"]) >= {"config.json", "tokenizer.json"}
    assert gguf.is_complete(folder)
    report = gguf.verify_cache("tiny-offline")
    assert report.ok and report.checked == "full sha256" and report.files == len(record["files"])
    assert load_tiny(logs).fingerprint == first.fingerprint
    assert len(conversions) == 1  # the second load used the cache


@pytest.mark.parametrize("keep_mtime", [True, False])
def test_flipped_weights_are_detected_and_rebuilt(offline_tiny, keep_mtime):
    conversions, logs = offline_tiny
    first = load_tiny(logs)
    weights = gguf.converted_folder("tiny-offline") / "model.safetensors"
    good = weights.read_bytes()
    flip(weights, len(good) // 2, keep_mtime=keep_mtime)  # inside the tensor data
    assert weights.stat().st_size == len(good) and weights.read_bytes() != good
    report = gguf.verify_cache("tiny-offline")
    assert not report.ok and report.status == "damaged"
    assert "model.safetensors: its content differs from the recorded sha256" in report.problems[0]
    logs.clear()
    again = load_tiny(logs)
    assert len(conversions) == 2
    assert any("model.safetensors" in line and "damaged" in line and "rebuilding it" in line
               for line in logs), logs
    assert weights.read_bytes() == good and again.fingerprint == first.fingerprint
    assert gguf.verify_cache("tiny-offline").ok


@pytest.mark.parametrize("header", [b"\xff" * 8, b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"])
def test_garbage_safetensors_header_is_detected_and_rebuilt(offline_tiny, header):
    conversions, logs = offline_tiny
    load_tiny(logs)
    weights = gguf.converted_folder("tiny-offline") / "model.safetensors"
    good = weights.read_bytes()
    stat = weights.stat()
    weights.write_bytes(header + good[len(header):])
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    report = gguf.inspect_conversion(gguf.converted_folder("tiny-offline"))
    assert report.status == "damaged" and "garbage safetensors header" in report.problems[0]
    logs.clear()
    load_tiny(logs)  # no traceback: rebuilt
    assert len(conversions) == 2 and weights.read_bytes() == good
    assert any("garbage safetensors header" in line for line in logs), logs


def test_touched_but_intact_files_are_kept(offline_tiny):
    conversions, logs = offline_tiny
    load_tiny(logs)
    folder = gguf.converted_folder("tiny-offline")
    weights = folder / "model.safetensors"
    later = weights.stat().st_mtime_ns + 10**9
    os.utime(weights, ns=(later, later))  # e.g. copied without keeping times
    load_tiny(logs)
    assert len(conversions) == 1  # hashed in full, found intact, its new time recorded
    record = json.loads((folder / gguf.COMPLETION_RECORD).read_text())
    assert record["mtime_ns"]["model.safetensors"] == later
    assert gguf.inspect_conversion(folder).refresh_mtimes == {}


def test_edits_outside_the_sampled_blocks(tmp_path):
    # The load-time check once read 16 blocks of 64 KiB and missed an edit between them whose
    # modification time was put back (issue 26); it now hashes every file in full, once per
    # process while the file's stat (change time included) stays the same.
    folder = tmp_path / "m"
    folder.mkdir()
    big = folder / "blob.bin"
    big.write_bytes(os.urandom(4 << 20))
    gguf.write_completion_record(folder, name="m")
    assert gguf.inspect_conversion(folder).ok
    flip(big, 150_000, keep_mtime=True)  # between the first and second sampled blocks
    report = gguf.inspect_conversion(folder)
    assert report.status == "damaged" and "blob.bin: its content differs" in report.problems[0]
    full = gguf.inspect_conversion(folder, full=True)
    assert full.status == "damaged" and "blob.bin" in full.problems[0]
    flip(big, 150_000, keep_mtime=True)
    flip(big, 150_000, keep_mtime=False)
    report = gguf.inspect_conversion(folder)
    assert report.status == "damaged" and "modified after the conversion" in report.problems[0]
    (folder / gguf.COMPLETION_RECORD).write_text("{")
    assert gguf.inspect_conversion(folder).status == "incomplete"


def old_record(folder):
    """Rewrite the completion record as tomsparse wrote it before the hashes (sizes only)."""
    files = {p.name: p.stat().st_size for p in folder.iterdir()
             if p.is_file() and p.name != gguf.COMPLETION_RECORD}
    (folder / gguf.COMPLETION_RECORD).write_text(json.dumps(
        {"name": "tiny-offline", "package": "tiny-pkg==1", "files": files, "seconds": 1.0}))


def test_old_records_are_upgraded_once(offline_tiny):
    conversions, logs = offline_tiny
    load_tiny(logs)
    folder = gguf.converted_folder("tiny-offline")
    old_record(folder)
    report = gguf.verify_cache("tiny-offline")
    assert not report.ok and report.status == "unrecorded"
    logs.clear()
    load_tiny(logs)
    assert len(conversions) == 1
    assert any("recording the content hashes" in line for line in logs), logs
    record = json.loads((folder / gguf.COMPLETION_RECORD).read_text())
    assert record["record_version"] == gguf.RECORD_VERSION and record["package"] == "tiny-pkg==1"
    assert gguf.verify_cache("tiny-offline").ok


@pytest.mark.parametrize("damage", ["garbage header", "edited after the record"])
def test_old_records_over_damaged_files_are_rebuilt(offline_tiny, damage):
    conversions, logs = offline_tiny
    load_tiny(logs)
    folder = gguf.converted_folder("tiny-offline")
    weights = folder / "model.safetensors"
    old_record(folder)
    if damage == "garbage header":
        stat = weights.stat()
        weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        expect = "garbage safetensors header"
    else:
        record = (folder / gguf.COMPLETION_RECORD).stat()
        flip(weights, weights.stat().st_size // 2)
        os.utime(weights, ns=(record.st_atime_ns, record.st_mtime_ns + 10**9))
        expect = "model.safetensors was modified after its completion record"
    logs.clear()
    load_tiny(logs)
    assert len(conversions) == 2
    assert any(expect in line and "rebuilding it" in line for line in logs), logs
    assert gguf.verify_cache("tiny-offline").ok


def test_verify_cache_of_unknown_or_unconverted_models(offline_tiny):
    with pytest.raises(UserError, match="unknown offline model 'nope'"):
        gguf.verify_cache("nope")
    report = gguf.verify_cache("tiny-offline")
    assert report.status == "not converted" and not report.ok
    assert "tiny-offline" in report.summary()


def test_damaged_local_model_folder_is_one_clear_error(tmp_path):
    from tomsparse.lm import registry
    from tomsparse.testing import save_tiny_model

    folder = save_tiny_model("llama", tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    with pytest.raises(UserError, match=rf"cannot load model '{folder}': a weight file is "
                                        r"damaged \(.*header"):
        registry.load_model(str(folder), device="cpu")


def test_cache_verify_command(offline_tiny, capsys):
    from tomsparse.cli.main import main

    conversions, logs = offline_tiny
    load_tiny(logs)
    assert main(["cache", "verify", "--model", "tiny-offline"]) == 0
    assert "tiny-offline" in capsys.readouterr().out
    weights = gguf.converted_folder("tiny-offline") / "model.safetensors"
    flip(weights, weights.stat().st_size // 2)
    assert main(["cache", "verify", "--model", "tiny-offline"]) == 1
    out = capsys.readouterr().out
    assert "is damaged" in out and "cache verify --rebuild" in out and "next load" in out
    assert len(conversions) == 1  # verify alone changes nothing
    # what the message promises: the next load rebuilds it ...
    logs.clear()
    load_tiny(logs)
    assert len(conversions) == 2 and any("rebuilding it" in line for line in logs), logs
    # ... and so does --rebuild, at once
    flip(weights, weights.stat().st_size // 2)
    assert main(["cache", "verify", "--model", "tiny-offline", "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert "is damaged" in out and "rebuilt 1 converted model(s): tiny-offline" in out
    assert len(conversions) == 3 and gguf.verify_cache("tiny-offline").ok
