"""The offline model entries are well-formed: parts in order, pins that match what the Makefile
(or requirements-nodeps.txt) installs, and a join that keeps the order and checks the sha256.
No network; the packages themselves are needed only by the test that says so (skipped else)."""

import hashlib
import re
from pathlib import Path

import pytest

from tomsparse.errors import UserError
from tomsparse.lm import gguf

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
