"""Sharing models on the Hub: folder format, push, load_pretrained, the pretrained index, errors.

Everything is offline: the Hub cache layout is built in tmp directories
(``models--org--name/refs/main`` + ``snapshots/<sha>/``), uploads are
redirected into such a cache, and sockets refuse to connect.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import fsspec
import httpx2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import HfApi, ModelCard
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

import milzoo
from milzoo.testing.weights import offline_hub
from milzoo.testing import registered_plugins
from milzoo import checkpoint as ckpt
from milzoo import hookimpl
from milzoo import hub
from milzoo.hub import _client as hub_client
from milzoo.datasets.batch import collate_bags
from milzoo.builtin.classic import read_classic_csv
from milzoo.components.base import ComponentConfig, DatasetSource
from milzoo.errors import CheckpointError, RunDirError, UnknownComponentError, UserError
from milzoo.hub import Ensemble, HubError, HubNotFoundError, OfflineNotCachedError
from milzoo.model.mil import MILModel
from milzoo.hub.pretrained import PretrainedEntry, UnpublishedModelError, list_pretrained

SHA = "0123456789abcdef0123456789abcdef01234567"


# --------------------------------------------------------------------------- test plugin


class SplitCSV(DatasetSource):
    """A classic-layout CSV split into train (first bags) and test (last ``n_test`` bags)."""

    name = "hubtest_split"

    class Config(ComponentConfig):
        path: str
        n_test: int = 8

    def load(self):
        ds = read_classic_csv(self.config.path)
        n = len(ds)
        return {"train": ds.subset(range(n - self.config.n_test)), "test": ds.subset(range(n - self.config.n_test, n))}


class _TestPlugin:
    @hookimpl
    def milzoo_register_datasets(self, register):
        register(SplitCSV)

    @hookimpl
    def milzoo_register_pretrained(self, register):
        register(PretrainedEntry(name="hubtest-tiny", repo_id="hubtest/tiny", revision=SHA,
                                 recipe="recipes/hubtest_tiny.toml", published=True, requires=["milzoo-abmil"],
                                 description="a tiny published test model"))
        register(PretrainedEntry(name="hubtest-unpublished", repo_id="hubtest/unpublished",
                                 recipe="recipes/hubtest_unpublished.toml", description="not uploaded"))
        register(PretrainedEntry(name="hubtest-ghost", repo_id="hubtest/ghost", revision=SHA,
                                 recipe="recipes/hubtest_ghost.toml", published=True,
                                 requires=["milzoo-ghost-plugin"]))


@pytest.fixture(scope="module", autouse=True)
def test_plugin():
    with registered_plugins({"hubtest": _TestPlugin()}):
        yield


@pytest.fixture(autouse=True)
def offline_sandbox(monkeypatch, tmp_path):
    """No network, and never the user's real Hub cache."""
    offline_hub(monkeypatch, tmp_path / "default-hf-cache")


# --------------------------------------------------------------------------- helpers


def write_csv(path: Path, n_bags: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_bags):
        y = b % 2
        x = rng.normal(size=(int(rng.integers(3, 7)), 4))
        if y:
            x[0] += 3.0
        rows += [[y, b, *r] for r in x]
    np.savetxt(path, np.array(rows), delimiter=",", fmt="%.5f")
    return path


def put_in_cache(cache: Path, repo_id: str, folder: Path, revision: str = "main", sha: str | None = None) -> str:
    """Place ``folder`` in the Hub cache layout as ``repo_id`` at ``revision``."""
    sha = sha or hashlib.sha1(f"{repo_id}:{folder}:{revision}".encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / sha
    if snap.exists():
        shutil.rmtree(snap)
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    return sha


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubdata")
    csv = write_csv(root / "tiny.csv")
    return SimpleNamespace(root=root, csv=csv, bags=read_classic_csv(str(csv)).bags)


@pytest.fixture(scope="module")
def cv_run(data):
    """A 2-fold cv run (with a validation split, so folds have best/) of ABMIL on the tiny CSV."""
    out = data.root / "run-cv"
    recipe = {
        "name": "tiny-cv", "seed": 0,
        "data": {"name": "classic", "path": str(data.csv)},
        "encoder": {"name": "mlp", "dims": [8]}, "pooling": {"name": "abmil", "attn_hidden": 8},
        "train": {"epochs": 2, "batch_size": 4, "progress": False},
        "protocol": {"kind": "cv", "folds": 2, "val_fraction": 0.25},
    }
    milzoo.run(recipe, out=out)
    return out


@pytest.fixture(scope="module")
def ens_run(data):
    """A 2-fold cv_ensemble run (folds validate, a separate test split is voted on)."""
    out = data.root / "run-ens"
    recipe = {
        "name": "tiny-ens", "seed": 1,
        "data": {"name": "hubtest_split", "path": str(data.csv), "n_test": 8},
        "encoder": {"name": "mlp", "dims": [8]}, "pooling": {"name": "abmil", "attn_hidden": 8},
        "train": {"epochs": 2, "batch_size": 4, "progress": False},
        "protocol": {"kind": "cv_ensemble", "folds": 2, "threshold": "youden"},
    }
    milzoo.run(recipe, out=out)
    return out


@pytest.fixture(scope="module")
def single_folder(cv_run, tmp_path_factory):
    """The Hub folder of fold 0 of the cv run."""
    return hub.save_pretrained(cv_run, tmp_path_factory.mktemp("single") / "hub", folds=[0], repo_id="org/tiny")


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """HfApi upload calls redirected into a local Hub cache (what a real download would produce)."""
    cache = tmp_path / "hub-cache"
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kw):
        calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, revision=None, create_pr=None, commit_message=None, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        sha = hashlib.sha1(f"{repo_id}:{len(calls)}:{files}".encode()).hexdigest()
        put_in_cache(cache, repo_id, Path(folder_path), revision or "main", sha)
        calls.append(("upload_folder", repo_id, {"revision": revision, "create_pr": create_pr,
                                                 "commit_message": commit_message, "files": files}))
        return SimpleNamespace(oid=sha, commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}", pr_url=None)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return SimpleNamespace(cache=cache, calls=calls)


def logits(model, bags) -> torch.Tensor:
    return model.predict(collate_bags(bags)).bag_logits


def edit_config(folder: Path, fn) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


# --------------------------------------------------------------------------- round trips


def test_train_push_load_identical_predictions(cv_run, data, fake_hub):
    reference = ckpt.load_model(cv_run / "fold-00" / "best")
    info = milzoo.push_to_hub(cv_run, "org/tiny", folds=[0], commit_message="first")
    kinds = [c[0] for c in fake_hub.calls]
    assert kinds == ["create_repo", "upload_folder"]
    assert fake_hub.calls[0][2]["exist_ok"] is True
    upload = fake_hub.calls[-1][2]
    assert upload["commit_message"] == "first"
    assert upload["files"] == ["README.md", "config.json", "model.safetensors", "recipe.toml"]

    model = milzoo.load_pretrained("hf-hub:org/tiny", cache_dir=fake_hub.cache, local_files_only=True)
    assert isinstance(model, MILModel) and not model.training
    assert torch.equal(logits(model, data.bags), logits(reference, data.bags))
    pinned = milzoo.load_pretrained(f"hf-hub:org/tiny@{info.oid}", cache_dir=fake_hub.cache, local_files_only=True)
    assert torch.equal(logits(pinned, data.bags), logits(reference, data.bags))
    again = milzoo.load_pretrained("hf-hub:org/tiny", revision=info.oid, cache_dir=fake_hub.cache,
                                   local_files_only=True)
    assert torch.equal(logits(again, data.bags), logits(reference, data.bags))


def test_push_to_branch_and_pr(cv_run, fake_hub):
    milzoo.push_to_hub(cv_run, "org/tiny", revision="v1", create_pr=True, private=True, folds=[1])
    assert fake_hub.calls[0] == ("create_repo", "org/tiny", {"private": True, "exist_ok": True})
    assert fake_hub.calls[1][0] == "create_branch" and fake_hub.calls[1][2]["branch"] == "v1"
    assert fake_hub.calls[2][2]["revision"] == "v1" and fake_hub.calls[2][2]["create_pr"] is True
    model = milzoo.load_pretrained("hf-hub:org/tiny@v1", cache_dir=fake_hub.cache, local_files_only=True)
    assert isinstance(model, MILModel)


def test_offline_env_uses_the_cache(monkeypatch, single_folder, data, tmp_path):
    cache = tmp_path / "cache"
    put_in_cache(cache, "org/tiny", single_folder)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 at import gives
    model = milzoo.load_pretrained("hf-hub:org/tiny")
    assert torch.equal(logits(model, data.bags), logits(hub.load_folder(single_folder), data.bags))
    with pytest.raises(OfflineNotCachedError) as err:
        milzoo.load_pretrained("hf-hub:org/not-cached")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "milzoo pull hf-hub:org/not-cached" in msg and str(cache) in msg


def test_local_files_only_not_cached(tmp_path):
    with pytest.raises(OfflineNotCachedError, match="local_files_only"):
        milzoo.load_pretrained("hf-hub:org/absent", cache_dir=tmp_path, local_files_only=True)


def test_cv_run_loads_as_ensemble_of_all_folds(cv_run, data, fake_hub):
    milzoo.push_to_hub(cv_run, "org/tiny-ens")
    files = fake_hub.calls[-1][2]["files"]
    assert "members/fold-00/model.safetensors" in files and "members/fold-01/config.json" in files
    assert "model.safetensors" not in files
    model = milzoo.load_pretrained("hf-hub:org/tiny-ens", cache_dir=fake_hub.cache, local_files_only=True)
    assert isinstance(model, Ensemble) and len(model.members) == 2 and not model.training
    members = [ckpt.load_model(cv_run / f"fold-0{i}" / "best") for i in range(2)]
    batch = collate_bags(data.bags)
    out = model.predict(batch)
    mean = torch.stack([m.predict(batch).bag_probs for m in members]).mean(0)
    assert torch.allclose(out.bag_probs, mean, atol=1e-7)
    assert torch.allclose(torch.softmax(out.bag_logits, -1), mean, atol=1e-6)
    assert out.extras["vote"].shape == (len(data.bags),)
    assert out.extras["member_probs"].shape == (2, len(data.bags), 2)
    assert out.attention is not None and out.attention.shape == batch.mask.shape
    # the same ensemble straight from the run directory, and one member by fold
    direct = milzoo.load_pretrained(cv_run)
    assert isinstance(direct, Ensemble) and torch.equal(direct.predict(batch).probs, out.probs)
    one = milzoo.load_pretrained("hf-hub:org/tiny-ens", cache_dir=fake_hub.cache, local_files_only=True, fold=1)
    assert isinstance(one, MILModel) and torch.equal(logits(one, data.bags), logits(members[1], data.bags))
    cfg = json.loads((fake_hub.cache / "models--org--tiny-ens" / "snapshots").glob("*/config.json").__next__()
                     .read_text())
    assert cfg["ensemble"]["combine"] == "vote" and cfg["ensemble"]["folds"] == [0, 1]
    assert "Cross-validation estimate" in cfg["metrics"]["note"] and "std" in cfg["metrics"]


def test_the_cards_standard_deviation_is_the_summarys(cv_run, tmp_path):
    """The card's ± and summary.json's std are one number: the sample SD (n - 1) over the member folds."""
    folder = hub.save_pretrained(cv_run, tmp_path / "hub")
    cfg = json.loads((folder / "config.json").read_text())
    summary = json.loads((cv_run / "summary.json").read_text())
    assert cfg["metrics"]["std_ddof"] == summary["std_ddof"] == 1
    for key, std in cfg["metrics"]["std"]["test"].items():
        assert std == pytest.approx(summary["selected"]["test"][key]["std"], abs=1e-12), key
    card = (folder / "README.md").read_text()
    acc = summary["selected"]["test"]["acc"]
    assert f"{acc['mean']:.4f} ± {acc['std']:.4f}" in card and "sample standard deviation (n − 1)" in card


def test_cv_ensemble_matches_the_run_summary(ens_run, data, tmp_path):
    folder = hub.save_pretrained(ens_run, tmp_path / "hub")
    cfg = json.loads((folder / "config.json").read_text())
    summary = json.loads((ens_run / "summary.json").read_text())
    expected = {k: v for k, v in summary["ensemble"]["test"].items() if k in ("acc", "auc", "f1")}
    assert cfg["metrics"]["splits"]["test"] == pytest.approx(expected)
    thresholds = cfg["ensemble"]["thresholds"]
    assert len(thresholds) == 2 and all(t is not None for t in thresholds)  # youden thresholds travel along
    model = milzoo.load_pretrained(folder)
    test_bags = data.bags[-8:]
    out = model.predict(collate_bags(test_bags))
    y = np.array([b.y for b in test_bags])
    vote = out.extras["vote"].numpy()
    assert (vote == y).mean() == pytest.approx(expected["acc"])
    assert roc_auc_score(y, out.probs[:, 1].numpy()) == pytest.approx(expected["auc"], abs=1e-4)


def test_save_pretrained_from_model_objects(cv_run, data, tmp_path):
    m0 = ckpt.load_model(cv_run / "fold-00" / "last")
    m1 = ckpt.load_model(cv_run / "fold-01" / "last")
    single = milzoo.save_pretrained(m0, tmp_path / "single")
    assert torch.equal(logits(milzoo.load_pretrained(single), data.bags), logits(m0, data.bags))
    ens = Ensemble([m0, m1], thresholds=[0.3, None])
    folder = milzoo.save_pretrained(ens, tmp_path / "ens")
    loaded = milzoo.load_pretrained(folder)
    assert isinstance(loaded, Ensemble) and loaded.thresholds == [0.3, None]
    assert torch.equal(loaded.predict(collate_bags(data.bags)).probs, ens.predict(collate_bags(data.bags)).probs)
    with pytest.raises(UserError, match="not empty"):
        milzoo.save_pretrained(m0, tmp_path / "single")
    milzoo.save_pretrained(m0, tmp_path / "single", overwrite=True)


def test_memory_fsspec_ref(single_folder, data):
    fs = fsspec.filesystem("memory")
    try:
        for f in single_folder.rglob("*"):
            if f.is_file():
                fs.pipe_file(f"/hubtest/model/{f.relative_to(single_folder)}", f.read_bytes())
        model = milzoo.load_pretrained("memory://hubtest/model")
        assert torch.equal(logits(model, data.bags), logits(hub.load_folder(single_folder), data.bags))
        with pytest.raises(CheckpointError, match="not a folder"):
            milzoo.load_pretrained("memory://hubtest/nothing-here")
    finally:
        fs.rm("/hubtest", recursive=True)


# --------------------------------------------------------------------------- the index


def test_zoo_name_loads_the_pinned_revision(single_folder, data, tmp_path):
    put_in_cache(tmp_path, "hubtest/tiny", single_folder, revision="main", sha=SHA)
    model = milzoo.load_pretrained("hubtest-tiny", cache_dir=tmp_path, local_files_only=True)
    assert torch.equal(logits(model, data.bags), logits(hub.load_folder(single_folder), data.bags))


def test_unpublished_entry_explains_how_to_train_and_push():
    with pytest.raises(UnpublishedModelError) as err:
        milzoo.load_pretrained("hubtest-unpublished")
    msg = str(err.value)
    assert "not published yet" in msg
    assert "milzoo run recipes/hubtest_unpublished.toml --out runs/hubtest-unpublished" in msg
    assert "milzoo push runs/hubtest-unpublished hubtest/unpublished" in msg


def test_paper_entries_are_listed_honestly():
    pytest.importorskip("milzoo_psmil")
    entries = {e.name: e for e in list_pretrained("psmil-*")}
    expected = {"psmil-camelyon16", "psmil-tcga-lung", "psmil-fmnist-full", "psmil-svhn", "psmil-cifar10",
                "psmil-cifar100"}
    assert expected <= set(entries)
    for name in expected:
        e = entries[name]
        assert not e.published and e.revision is None and e.metrics == {}
        assert e.recipe == f"psmil_{name[len('psmil-'):].removesuffix('-full').replace('-', '_')}"  # shipped recipe
    with pytest.raises(UnpublishedModelError, match="milzoo run psmil_camelyon16 --out"):
        milzoo.load_pretrained("psmil-camelyon16")


def test_unknown_zoo_name_suggests():
    with pytest.raises(UnknownComponentError, match="Did you mean 'hubtest-tiny'"):
        milzoo.load_pretrained("hubtest-tiyn")


def test_entry_needing_a_missing_distribution():
    with pytest.raises(CheckpointError, match="pip install milzoo-ghost-plugin"):
        milzoo.load_pretrained("hubtest-ghost")


def test_entry_validation():
    with pytest.raises(ValidationError, match="40-character"):
        PretrainedEntry(name="x", repo_id="o/x", revision="main", recipe="r.toml")
    with pytest.raises(ValidationError, match="pinned"):
        PretrainedEntry(name="x", repo_id="o/x", recipe="r.toml", published=True)
    with pytest.raises(ValidationError):
        PretrainedEntry(name="x", repo_id="not a repo", recipe="r.toml")


# --------------------------------------------------------------------------- errors


def _http_error(cls, status=404):
    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/x")
    return cls("not found", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("exc, match", [
    (lambda: _http_error(RepositoryNotFoundError), "has no repository org/x"),
    (lambda: _http_error(RevisionNotFoundError), "has no revision 'v9'"),
    (lambda: EntryNotFoundError("missing"), "lacks a file"),
])
def test_hub_not_found_errors(monkeypatch, exc, match):
    def fail(*args, **kwargs):
        raise exc()

    monkeypatch.setattr(hub_client, "snapshot_download", fail)
    with pytest.raises(HubNotFoundError, match=match):
        milzoo.load_pretrained("hf-hub:org/x@v9")


def test_snapshot_without_config_is_not_a_milzoo_model(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "README.md").write_text("hello")
    put_in_cache(tmp_path / "cache", "org/other", folder)
    with pytest.raises(HubNotFoundError, match="not a milzoo model"):
        milzoo.load_pretrained("hf-hub:org/other", cache_dir=tmp_path / "cache", local_files_only=True)


@pytest.fixture
def broken(single_folder, tmp_path):
    dst = tmp_path / "broken"
    shutil.copytree(single_folder, dst)
    return dst


def test_missing_plugin_names_the_distribution(broken):
    def ghost(cfg):
        cfg["pooling"]["name"] = "ghostpool"
        cfg["components"]["pooling"] = {"name": "ghostpool", "distribution": "milzoo-ghostpool", "version": "1.0"}

    edit_config(broken, ghost)
    with pytest.raises(CheckpointError, match="pip install milzoo-ghostpool"):
        milzoo.load_pretrained(broken)


def test_options_changed_incompatibly(broken):
    def future(cfg):
        cfg["pooling"].update(option_from_the_future=1)
        cfg["components"]["pooling"]["version"] = "99.0"  # written by another version than the installed one

    edit_config(broken, future)
    with pytest.raises(CheckpointError, match="option_from_the_future.*changed incompatibly"):
        milzoo.load_pretrained(broken)


def test_shape_mismatch(broken):
    edit_config(broken, lambda cfg: cfg["encoder"].update(dims=[9]))
    with pytest.raises(CheckpointError, match="wrong shape"):
        milzoo.load_pretrained(broken)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_safetensors(broken, damage):
    w = broken / "model.safetensors"
    raw = w.read_bytes()
    w.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x00" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        milzoo.load_pretrained(broken)


def test_ensemble_member_paths_stay_inside(cv_run, tmp_path):
    folder = hub.save_pretrained(cv_run, tmp_path / "ens")
    edit_config(folder, lambda cfg: cfg["ensemble"].update(members=["../../etc", "members/fold-01"]))
    with pytest.raises(CheckpointError, match="leaves the model folder"):
        milzoo.load_pretrained(folder)


def test_refs_that_are_not_understood(tmp_path):
    # a bare org/name that is no folder goes to the Hub, as Hugging Face reads it (tests/test_model_api.py)
    with pytest.raises(OfflineNotCachedError, match="read as the Hub repository org/name"):
        milzoo.load_pretrained("org/name", cache_dir=tmp_path, local_files_only=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        milzoo.load_pretrained("./org/name")
    with pytest.raises(HubError, match="not a Hub repository id"):
        milzoo.load_pretrained("hf-hub:not a repo")
    with pytest.raises(CheckpointError, match="not a milzoo model"):
        milzoo.load_pretrained(tmp_path)
    with pytest.raises(UserError, match="revision"):
        milzoo.load_pretrained(tmp_path, revision="main")


def test_unfinished_fold_is_not_pushed(cv_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cv_run, run)
    (run / "fold-01" / "result.json").unlink()
    with pytest.raises(RunDirError, match="fold 1 .* has not finished"):
        hub.save_pretrained(run, tmp_path / "out")
    assert isinstance(hub.save_pretrained(run, tmp_path / "out", folds=[0]), Path)
    with pytest.raises(RunDirError, match="no fold"):
        hub.save_pretrained(run, tmp_path / "out2", folds=[5])


def test_holdout_run_takes_best_then_last(cv_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cv_run, run)
    text = (run / "recipe.toml").read_text().replace('kind = "cv"', 'kind = "holdout"')
    (run / "recipe.toml").write_text(text)
    [m] = hub.select_checkpoints(run)
    assert (m.fold, m.checkpoint) == (0, "best")
    shutil.rmtree(run / "fold-00" / "best")
    [m] = hub.select_checkpoints(run)
    assert m.checkpoint == "last"
    with pytest.raises(RunDirError, match="no validation split"):
        hub.select_checkpoints(run, checkpoint="best")


# --------------------------------------------------------------------------- model card


def test_model_card(single_folder):
    card = ModelCard.load(single_folder / "README.md")
    cfg = json.loads((single_folder / "config.json").read_text())
    assert card.data.library_name == "milzoo"
    assert {"milzoo", "multiple-instance-learning", "mil-pooling-abmil"} <= set(card.data.tags)
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    measured = cfg["metrics"]["splits"]["test"]
    assert results["accuracy"] == pytest.approx(measured["acc"])
    assert results["roc_auc"] == pytest.approx(measured["auc"])
    assert "model-index" in (single_folder / "README.md").read_text()
    text = card.text
    assert 'milzoo.load_pretrained("hf-hub:org/tiny")' in text
    assert 'name = "abmil"' in text and "milzoo run recipe.toml --out runs/tiny-cv" in text
    # config.json carries the recipe, input spec, distributions and command
    assert cfg["recipe"]["pooling"]["name"] == "abmil"
    assert cfg["input"] == {"in_shape": [4], "feature_dim": 4, "kind": "features", "standardized_inside_model": False}
    assert cfg["label_names"] == ["negative", "positive"]
    assert "milzoo" in cfg["distributions"] and "milzoo-abmil" in cfg["distributions"]
    assert cfg["source"] == {"run_name": "tiny-cv", "protocol": "cv", "fold": 0, "checkpoint": "best"}


def test_model_card_with_license_and_no_metrics(cv_run, tmp_path):
    m = ckpt.load_model(cv_run / "fold-00" / "last")
    folder = milzoo.save_pretrained(m, tmp_path / "m", license="apache-2.0", tags=["extra-tag"])
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and "extra-tag" in card.data.tags
    assert card.data.eval_results is None and "No evaluation results" in card.text


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def cli():
    from milzoo.cli import cli as group
    from milzoo.cli.hub import add_commands

    add_commands(group)
    add_commands(group)  # idempotent
    return group


def test_cli_export_push_pull(cli, cv_run, fake_hub, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["export", str(cv_run), str(tmp_path / "out"), "--fold", "0", "--repo-id", "org/c"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "model.safetensors").exists()
    res = runner.invoke(cli, ["push", str(cv_run), "org/cli", "--fold", "0", "--checkpoint", "last",
                              "--license", "mit", "--tag", "demo"])
    assert res.exit_code == 0, res.output
    sha = res.output.split("(commit ")[1].split(")")[0]
    assert f"hf-hub:org/cli@{sha}" in res.output
    cfg = json.loads((fake_hub.cache / "models--org--cli" / "snapshots" / sha / "config.json").read_text())
    assert cfg["source"]["checkpoint"] == "last"


def test_cli_errors_exit_2(cli, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["pull", "hubtest-unpublished"])
    assert res.exit_code == 2 and "not published yet" in res.output
    res = runner.invoke(cli, ["push", str(tmp_path), "org/x"])
    assert res.exit_code == 2 and "neither a milzoo run directory" in res.output
    res = runner.invoke(cli, ["pull", "hf-hub:org/x", "--cache-dir", str(tmp_path)], env={})
    assert res.exit_code == 2 and "could not be reached" in res.output


def test_cli_list_pretrained(cli):
    res = CliRunner().invoke(cli, ["list", "pretrained"])
    assert res.exit_code == 0
    line = next(l for l in res.output.splitlines() if "hubtest-unpublished" in l)
    assert "[unpublished]" in line
    assert "[hub hubtest/tiny@0123456789ab]" in res.output
