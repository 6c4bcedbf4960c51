"""Hub ids through a real cache, offline: ``--model owner/name`` (with ``--revision`` and
``--cache-dir``) and ``--corpus c4`` / ``wikitext2`` read from caches laid out on disk as
huggingface_hub and datasets lay them out, with the offline switches on (nothing here may
touch the network)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tomsparse.cli.options import add_model_args, load_model_from, recorded_options
from tomsparse.data.corpora import REGISTERED, load_corpus
from tomsparse.errors import UserError
from tomsparse.lm.registry import load_model
from tomsparse.testing import save_tiny_model, tiny_model

REPO = "tiny-org/tiny-llama"
MAIN_COMMIT = "1" * 40
V1_COMMIT = "2" * 40


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")


def add_snapshot(cache: Path, repo: str, commit: str, files_from: Path, refs=()) -> Path:
    """``files_from``'s files as snapshot ``commit`` of model ``repo`` in hub cache ``cache``:
    content in ``blobs/<sha256>``, the snapshot's files links to them, and ``refs/<ref>``
    naming the commit (huggingface_hub's layout)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for path in sorted(files_from.iterdir()):
        blob = root / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
    for ref in refs:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path):
    """A hub cache holding two snapshots of a tiny Llama: seed 0 on ``main``, seed 1 on ``v1``."""
    cache = tmp_path / "hub"
    for seed, commit, ref in ((0, MAIN_COMMIT, "main"), (1, V1_COMMIT, "v1")):
        folder = save_tiny_model("llama", tmp_path / f"model{seed}", seed=seed)
        add_snapshot(cache, REPO, commit, Path(folder), refs=[ref])
    return cache


def _same_weights(model, seed: int) -> bool:
    expected = tiny_model("llama", seed=seed).state_dict()
    return all(torch.equal(t, expected[k]) for k, t in model.state_dict().items())


def test_hub_id_loads_the_main_snapshot_from_the_cache_dir(hub_cache):
    lm = load_model(REPO, device="cpu", cache_dir=str(hub_cache))
    assert lm.name == REPO and lm.commit == MAIN_COMMIT and lm.revision is None
    assert _same_weights(lm.model, seed=0) and not _same_weights(lm.model, seed=1)
    assert lm.tokenizer("ab")["input_ids"]  # the tokenizer came from the snapshot too


def test_revision_picks_another_snapshot_and_the_manifest_records_it(hub_cache):
    p = argparse.ArgumentParser()
    add_model_args(p)
    args = p.parse_args(["--model", REPO, "--revision", "v1", "--cache-dir", str(hub_cache),
                         "--device", "cpu"])
    lm = load_model_from(args)  # what every command's --model goes through
    assert lm.commit == V1_COMMIT and lm.revision == "v1"
    assert _same_weights(lm.model, seed=1)
    recorded = recorded_options(args)
    assert recorded["revision"] == "v1" and recorded["cache_dir"] == str(hub_cache)
    # a commit id is a revision too
    assert load_model(REPO, device="cpu", revision=MAIN_COMMIT,
                      cache_dir=str(hub_cache)).commit == MAIN_COMMIT


def test_missing_snapshot_or_revision_is_one_clear_error(hub_cache, tmp_path):
    with pytest.raises(UserError, match="revision nope"):
        load_model(REPO, device="cpu", revision="nope", cache_dir=str(hub_cache))
    with pytest.raises(UserError, match="cannot load model 'tiny-org/absent'"):
        load_model("tiny-org/absent", device="cpu", cache_dir=str(hub_cache))
    folder = save_tiny_model("llama", tmp_path / "local")
    with pytest.raises(UserError, match="apply to a hub id"):
        load_model(str(folder), device="cpu", revision="v1")


def test_the_fingerprint_holds_the_snapshots_weights_and_manifests_the_commit(hub_cache,
                                                                              tmp_path):
    from tomsparse.lm.registry import model_identity

    main = load_model(REPO, device="cpu", cache_dir=str(hub_cache))
    v1 = load_model(REPO, device="cpu", revision="v1", cache_dir=str(hub_cache))
    # same config and shapes, other weights: the blob hashes make the fingerprints differ
    assert main.fingerprint != v1.fingerprint
    assert load_model(REPO, device="cpu", revision=MAIN_COMMIT,
                      cache_dir=str(hub_cache)).fingerprint == main.fingerprint
    assert model_identity(v1) == {"model": REPO, "model_fingerprint": v1.fingerprint,
                                  "model_revision": "v1", "model_commit": V1_COMMIT}
    local = load_model(str(save_tiny_model("llama", tmp_path / "local")), device="cpu")
    assert set(model_identity(local)) == {"model", "model_fingerprint"}


def test_run_and_analyze_take_the_revision_to_the_model(hub_cache, tmp_path, monkeypatch):
    """`tomsparse run --revision` reaches load_model through RunConfig; `analyze --run` of a
    hub-id run reloads the very commit the run recorded."""
    from tomsparse.cli import analyze as analyze_cli
    from tomsparse.cli.main import build_parser
    from tomsparse.cli.run import run_config

    args = build_parser().parse_args(["run", "--quick", "--model", REPO, "--revision", "v1",
                                      "--cache-dir", str(hub_cache), "--out",
                                      str(tmp_path / "run")])
    cfg = run_config(args)
    assert (cfg.revision, cfg.cache_dir) == ("v1", str(hub_cache))
    seen = {}

    def fake_load(name, **options):
        seen.update(options, name=name)
        raise SystemExit("loaded")        # stop before any work

    monkeypatch.setattr(analyze_cli, "load_model", fake_load)
    run = tmp_path / "hubrun"
    (run / "scores_tom").mkdir(parents=True)
    (run / "scores_generic").mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "kind": "run", "model": REPO, "model_commit": V1_COMMIT, "model_revision": "v1",
        "options": {"m_list": [0.0, 1e-4], "revision": "v1", "cache_dir": str(hub_cache)}}))
    with pytest.raises(SystemExit, match="loaded"):
        analyze_cli.cmd_analyze(build_parser().parse_args(["analyze", "--run", str(run)]))
    assert seen["name"] == REPO and seen["revision"] == V1_COMMIT
    assert seen["cache_dir"] == str(hub_cache)


# ------------------------------------------------------------------ corpora by dataset id

def add_dataset(cache: Path, repo: str, config_name: str, config_kwargs: dict, split: str,
                texts: list[str], commit: str, work: Path) -> None:
    """``texts`` as split ``split`` of dataset ``repo`` in datasets cache ``cache``, where
    ``load_dataset(repo, config_name, **config_kwargs)`` finds it offline: the Arrow files
    datasets' own JSON builder writes, under ``<namespace>___<name>/<config id>/<version>/
    <commit>/``, the config id being what datasets derives from the load_dataset arguments."""
    import datasets
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.json.json import Json

    source = work / f"{split}.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    name = repo.split("/")[-1]
    builder = Json(cache_dir=str(work / "build"), dataset_name=name, config_name=config_name,
                   data_files=DataFilesDict.from_patterns({split: [str(source)]}))
    builder.download_and_prepare()
    config_id = datasets.BuilderConfig(config_name).create_config_id(
        config_kwargs=config_kwargs) if config_kwargs else config_name
    target = cache / "___".join(repo.split("/")) / config_id / "0.0.0" / commit
    target.mkdir(parents=True)
    for path in Path(builder.cache_dir).iterdir():
        if path.suffix in (".arrow", ".json"):
            shutil.copyfile(path, target / path.name)


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    import datasets

    cache = tmp_path / "datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_wikitext2_and_c4_load_from_the_datasets_cache_offline(datasets_cache, tmp_path):
    wikitext = ["", " = Valkyria Chronicles = \n", " Senjō no Valkyria is a game . \n", ""]
    c4 = ["Beginners BBQ class taking place in Missoula!", "Discussion in 'Mac OS X' ..."]
    (tmp_path / "w").mkdir()
    (tmp_path / "c").mkdir()
    # the same arguments data/corpora.py passes to load_dataset
    add_dataset(datasets_cache, "wikitext", "wikitext-2-raw-v1", {}, "test", wikitext, "a" * 40,
                tmp_path / "w")
    add_dataset(datasets_cache, "allenai/c4", "default",
                {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}}, "train", c4,
                "b" * 40, tmp_path / "c")
    corpus = load_corpus("wikitext2")
    assert corpus.rows == wikitext and corpus.texts == [t for t in wikitext if t.strip()]
    assert corpus.source == REGISTERED["wikitext2"]
    assert load_corpus("c4").texts == c4


def test_a_dataset_missing_from_the_cache_is_one_clear_error(datasets_cache):
    with pytest.raises(UserError, match="corpus 'wikitext2' must be downloaded"):
        load_corpus("wikitext2")
