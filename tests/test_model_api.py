"""The model API Hugging Face and timm users know: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` on
``MILModel`` and ``Ensemble``, bare ``org/name`` Hub ids, and ``milzoo.create_model``.

Everything is offline: uploads are redirected into a local Hub cache and sockets refuse to connect.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi

import milzoo
from milzoo.testing.weights import offline_hub
from milzoo.testing import registered_plugins
from milzoo import hookimpl
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.errors import CheckpointError, HubError, OfflineNotCachedError, RecipeError, UserError
from milzoo.hub import parse_ref
from milzoo.hub.pretrained import PretrainedEntry
from milzoo.model import Ensemble, MILModel, ModelSharing, create_model

SHA = "fedcba9876543210fedcba9876543210fedcba98"
ROOT = Path(__file__).resolve().parents[1]


class _ZooEntry:
    @hookimpl
    def milzoo_register_pretrained(self, register):
        register(PretrainedEntry(name="apitest-zoo", repo_id="apitest/zoo", revision=SHA, recipe="quickstart",
                                 published=True, description="a zoo entry for the precedence test"))


@pytest.fixture(scope="module", autouse=True)
def zoo_entry():
    with registered_plugins({"apitest": _ZooEntry()}):
        yield


@pytest.fixture(autouse=True)
def offline_sandbox(monkeypatch, tmp_path):
    """No network, and never the user's real Hub cache."""
    offline_hub(monkeypatch, tmp_path / "default-hf-cache")


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


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """HfApi upload calls redirected into a local Hub cache (what a real download would then find)."""
    cache = tmp_path / "hub-cache"
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, revision=None, create_pr=None, commit_message=None, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        sha = hashlib.sha1(f"{repo_id}:{len(calls)}:{files}".encode()).hexdigest()
        put_in_cache(cache, repo_id, Path(folder_path), revision or "main", sha)
        calls.append(("upload_folder", repo_id, {"revision": revision, "commit_message": commit_message,
                                                 "files": files}))
        return SimpleNamespace(oid=sha, commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}", pr_url=None)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return SimpleNamespace(cache=cache, calls=calls)


def tiny(seed: int, **kw) -> MILModel:
    return create_model({"name": "mlp", "dims": [8]}, {"name": "abmil", "attn_hidden": 4}, in_shape=(5,),
                        class_names=["neg", "pos"], seed=seed, **kw)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return collate_bags([Bag(x=torch.randn(n, 5, generator=g), y=0) for n in (3, 7, 5, 1)])


def same_outputs(a, b, batch) -> None:
    oa, ob = a.predict(batch), b.predict(batch)
    assert torch.equal(oa.bag_logits, ob.bag_logits)
    assert torch.equal(oa.extras["pred"], ob.extras["pred"])
    if oa.attention is not None:
        assert torch.equal(oa.attention, ob.attention)


# --------------------------------------------------------------------------- save_pretrained / from_pretrained


def test_a_model_round_trips_through_save_and_from_pretrained(tmp_path, batch):
    model = tiny(1, standardize=True)
    model.standardizer.mean.fill_(0.5)  # fitted state is part of the weights
    model.decision_threshold = 0.3  # a recorded validation threshold travels with the model
    folder = model.save_pretrained(tmp_path / "m", repo_id="me/tiny", license="mit")
    assert folder == tmp_path / "m"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = MILModel.from_pretrained(folder)
    assert type(loaded) is MILModel and not loaded.training
    assert loaded.class_names == ["neg", "pos"] and loaded.decision_threshold == 0.3
    assert torch.equal(loaded.standardizer.mean, model.standardizer.mean)
    same_outputs(loaded, model, batch)
    assert (loaded.predict(batch).extras["pred"] == (model.predict(batch).bag_probs[:, 1] >= 0.3).long()).all()
    # milzoo.load_pretrained is the same path
    same_outputs(milzoo.load_pretrained(str(folder)), model, batch)
    with pytest.raises(UserError, match="not empty"):
        model.save_pretrained(folder)
    model.save_pretrained(folder, overwrite=True)


def test_an_ensemble_round_trips(tmp_path, batch):
    ens = Ensemble([tiny(1), tiny(2), tiny(3)], thresholds=[0.4, None, 0.6], names=["fold-00", "fold-01", "fold-02"])
    folder = ens.save_pretrained(tmp_path / "e")
    assert (folder / "members" / "fold-01" / "model.safetensors").is_file()
    loaded = Ensemble.from_pretrained(folder)
    assert isinstance(loaded, Ensemble) and not loaded.training
    assert loaded.thresholds == [0.4, None, 0.6] and loaded.member_names == ["fold-00", "fold-01", "fold-02"]
    out, ref = loaded.predict(batch), ens.predict(batch)
    assert torch.equal(out.probs, ref.probs) and torch.equal(out.extras["vote"], ref.extras["vote"])
    # one member, by fold, is a plain model
    member = MILModel.from_pretrained(folder, fold=1)
    same_outputs(member, ens.members[1], batch)


def test_from_pretrained_says_which_class_loads_what(tmp_path):
    single = tiny(1).save_pretrained(tmp_path / "m")
    ens = Ensemble([tiny(1), tiny(2)], names=["fold-00", "fold-01"]).save_pretrained(tmp_path / "e")
    with pytest.raises(CheckpointError, match=r"ensemble of 2 members \(fold-00, fold-01\).*"
                                              r"Ensemble.from_pretrained.*fold=N"):
        MILModel.from_pretrained(ens)
    with pytest.raises(CheckpointError, match="single model, not an ensemble.*MILModel.from_pretrained"):
        Ensemble.from_pretrained(single)
    with pytest.raises(CheckpointError, match=r"fold=0 picks a single member.*fold=0\)"):
        Ensemble.from_pretrained(ens, fold=0)

    class MyModel(MILModel):
        pass

    with pytest.raises(CheckpointError, match="cannot give a MyModel"):
        MyModel.from_pretrained(single)


def test_the_methods_work_without_importing_the_hub(tmp_path):
    """The model layer does not import milzoo.hub: the built-ins supply it through the plugin hook."""
    code = (
        "import sys, torch\n"
        "from milzoo.model import create_model, MILModel\n"
        "m = create_model('mlp', 'mean', in_shape=(3,), num_classes=2, seed=0)\n"
        "assert 'milzoo.hub' not in sys.modules\n"
        f"m.save_pretrained({str(tmp_path / 'm')!r})\n"
        f"l = MILModel.from_pretrained({str(tmp_path / 'm')!r})\n"
        "assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), l.state_dict().values()))\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                              "HF_HUB_CACHE": str(tmp_path / "cache"), "MILZOO_LOAD_PLUGINS": ""},
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_a_plugin_cannot_replace_how_models_are_loaded(tmp_path, caplog, batch):
    def hijack(*args, **kwargs):
        raise AssertionError("a plugin's model sharing was used")

    class Hijacker:
        @hookimpl
        def milzoo_model_sharing(self):
            return ModelSharing(save=hijack, load=hijack, push=hijack)

    with registered_plugins({"apitest-hijacker": Hijacker()}), \
            caplog.at_level(logging.WARNING, logger="milzoo.model.sharing"):
        model = tiny(1)
        folder = model.save_pretrained(tmp_path / "m")
        same_outputs(MILModel.from_pretrained(folder), model, batch)
    assert "apitest-hijacker implements milzoo_model_sharing; it is ignored" in caplog.text


# --------------------------------------------------------------------------- push_to_hub


def test_push_to_hub_then_from_pretrained_by_bare_org_name(fake_hub, batch):
    model = tiny(4)
    info = model.push_to_hub("me/tiny", commit_message="first")
    assert [c[0] for c in fake_hub.calls] == ["create_repo", "upload_folder"]
    assert fake_hub.calls[-1][2]["files"] == ["README.md", "config.json", "model.safetensors"]
    assert fake_hub.calls[-1][2]["commit_message"] == "first"
    loaded = MILModel.from_pretrained("me/tiny", cache_dir=fake_hub.cache, local_files_only=True)
    same_outputs(loaded, model, batch)
    pinned = MILModel.from_pretrained(f"me/tiny@{info.oid}", cache_dir=fake_hub.cache, local_files_only=True)
    same_outputs(pinned, model, batch)

    ens = Ensemble([tiny(5), tiny(6)], thresholds=[0.5, 0.2])
    ens.push_to_hub("me/tiny-ens", revision="v1")
    assert fake_hub.calls[-2] == ("create_branch", "me/tiny-ens", {"branch": "v1", "exist_ok": True})
    assert fake_hub.calls[-1][2]["commit_message"].startswith("Upload an ensemble of 2 models")
    loaded = Ensemble.from_pretrained("hf-hub:me/tiny-ens@v1", cache_dir=fake_hub.cache, local_files_only=True)
    assert torch.equal(loaded.predict(batch).probs, ens.predict(batch).probs)
    calls = len(fake_hub.calls)
    with pytest.raises(UserError, match="folds= and checkpoint= choose what to share from a run directory"):
        milzoo.push_to_hub(ens, "me/tiny-ens", folds=[0])
    assert len(fake_hub.calls) == calls  # refused before anything was uploaded


def test_save_pretrained_can_push(fake_hub, tmp_path, batch):
    model = tiny(7)
    info = model.save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="me/saved", private=True)
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert fake_hub.calls[0] == ("create_repo", "me/saved", {"private": True, "exist_ok": True})
    loaded = MILModel.from_pretrained(f"me/saved@{info.oid}", cache_dir=fake_hub.cache, local_files_only=True)
    same_outputs(loaded, model, batch)
    with pytest.raises(CheckpointError, match="needs repo_id"):
        model.save_pretrained(tmp_path / "n", push_to_hub=True)
    with pytest.raises(TypeError, match="private"):
        model.save_pretrained(tmp_path / "n", private=True)


# --------------------------------------------------------------------------- which reference means what


def test_references_zoo_name_then_local_path_then_hub_id(monkeypatch, tmp_path, batch):
    cache = tmp_path / "cache"
    zoo, local_zoo, local_org, hub_org = tiny(10), tiny(11), tiny(12), tiny(13)
    put_in_cache(cache, "apitest/zoo", zoo.save_pretrained(tmp_path / "src-zoo"), sha=SHA)
    put_in_cache(cache, "org/name", hub_org.save_pretrained(tmp_path / "src-hub"))
    monkeypatch.chdir(tmp_path)
    local_zoo.save_pretrained(Path("apitest-zoo"))
    local_org.save_pretrained(Path("org/name"))
    opts = dict(cache_dir=cache, local_files_only=True)

    assert parse_ref("apitest-zoo") == ("zoo", "apitest-zoo", None)  # a zoo name wins over a folder
    same_outputs(MILModel.from_pretrained("apitest-zoo", **opts), zoo, batch)
    assert parse_ref("org/name") == ("local", "org/name", None)  # an existing folder wins over the Hub
    same_outputs(MILModel.from_pretrained("org/name", **opts), local_org, batch)
    same_outputs(MILModel.from_pretrained("hf-hub:org/name", **opts), hub_org, batch)  # hf-hub: says it
    shutil.rmtree("org")
    assert parse_ref("org/name") == ("hf-hub", "org/name", None)  # then the Hub, as Hugging Face reads it
    assert parse_ref("org/name@v2") == ("hf-hub", "org/name", "v2")
    same_outputs(MILModel.from_pretrained("org/name", **opts), hub_org, batch)
    same_outputs(milzoo.load_pretrained("org/name", **opts), hub_org, batch)


def test_references_that_are_folders_never_go_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for ref in ("./org/name", "a/b/c", "/no/such/dir", "~/no-such-milzoo-dir/x"):
        with pytest.raises(CheckpointError, match="does not exist.*never goes to the Hub"):
            MILModel.from_pretrained(ref)
    with pytest.raises(CheckpointError, match="does not exist or is not a directory"):
        MILModel.from_pretrained("local-dir:org/name")
    with pytest.raises(HubError, match="names no revision"):
        parse_ref("org/name@")


def test_a_bare_hub_id_that_is_not_cached_says_how_it_was_read(tmp_path):
    with pytest.raises(OfflineNotCachedError, match="read as the Hub repository org/absent because no folder"):
        MILModel.from_pretrained("org/absent", cache_dir=tmp_path, local_files_only=True)


# --------------------------------------------------------------------------- create_model


def test_create_model_from_names_and_tables():
    m = create_model("mlp", "abmil", in_shape=(16,), num_classes=3)
    assert type(m) is MILModel and m.in_shape == (16,) and m.num_classes == 3 and m.class_names == ["0", "1", "2"]
    assert m.encoder.name == "mlp" and m.pooling.name == "abmil" and m.standardizer is None
    m = create_model(encoder={"name": "mlp", "dims": [32, 8]}, pooling={"name": "abmil", "gated": True},
                     in_shape=16, class_names=["a", "b"], standardize=True)
    assert m.spec()["encoder"]["dims"] == [32, 8] and m.spec()["pooling"]["gated"] is True
    assert m.class_names == ["a", "b"] and m.standardizer is not None
    assert create_model(pooling="mean", in_shape=(4,), num_classes=2).encoder.name == "identity"
    reg = create_model("mlp", "mean", in_shape=(4,), task={"name": "regression", "targets": 3})
    assert reg.task.name == "regression" and reg.num_classes == 3
    assert milzoo.create_model is create_model


def test_create_model_seed_is_reproducible_and_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    a, b, c = (create_model("mlp", "abmil", in_shape=(6,), num_classes=2, seed=s) for s in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_create_model_from_a_recipe_without_data(tmp_path):
    recipe = {"name": "no-data", "encoder": {"name": "mlp", "dims": [8]},
              "pooling": {"name": "abmil", "attn_hidden": 4}, "protocol": {"standardize": True},
              "train": {"epochs": 3}}
    path = tmp_path / "r.toml"
    path.write_text('name = "no-data"\n[encoder]\nname = "mlp"\ndims = [8]\n[pooling]\nname = "abmil"\n'
                    'attn_hidden = 4\n[protocol]\nstandardize = true\n')
    direct = create_model({"name": "mlp", "dims": [8]}, {"name": "abmil", "attn_hidden": 4}, in_shape=(5,),
                          num_classes=2, standardize=True, seed=0)
    for source in (recipe, path, str(path)):
        m = create_model(recipe=source, in_shape=(5,), num_classes=2, seed=0)
        assert m.spec() == direct.spec()
        assert all(torch.equal(x, y) for x, y in zip(m.state_dict().values(), direct.state_dict().values()))
    m = create_model(recipe=recipe, overrides=["pooling.gated=true"], in_shape=(5,), num_classes=2)
    assert m.pooling.config.gated is True
    # milzoo.load_recipe still needs [data]: a run reads data
    with pytest.raises(RecipeError, match="data: required key is missing"):
        milzoo.load_recipe(recipe)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(pooling="abmi"), RecipeError, r"pooling.name: unknown pooling 'abmi'.*[Dd]id you mean 'abmil'"),
    (dict(encoder="mpl", pooling="mean"), RecipeError, r"encoder.name: unknown encoder 'mpl'.*'mlp'"),
    (dict(pooling={"name": "abmil", "atn_hidden": 4}), RecipeError, r"pooling.atn_hidden: unknown key.*'attn_hidden'"),
    (dict(pooling="mean", task="regresion"), RecipeError, r"task.name: unknown task 'regresion'.*'regression'"),
    (dict(pooling={"attn_hidden": 4}), UserError, r"without a 'name'"),
    (dict(pooling=3), UserError, r"takes a component name or a table"),
    (dict(encoder="mlp"), UserError, r"needs pooling="),
    (dict(pooling="mean", in_shape=(0,)), UserError, r"in_shape=\(0,\)"),
    (dict(pooling="mean", in_shape="12"), UserError, r"positive integers"),
    (dict(pooling="mean", num_classes=None), UserError, r"needs num_classes= \(or class_names"),
    (dict(pooling="mean", num_classes=1), UserError, r"at least 2 classes"),
    (dict(pooling="mean", num_classes=3, class_names=["a", "b"]), UserError, r"give one of them"),
    (dict(pooling="mean", class_names=["a", "a"]), UserError, r"distinct"),
    (dict(pooling="mean", recipe={"pooling": {"name": "mean"}}), UserError, r"recipe= and pooling="),
    (dict(recipe={"pooling": {"name": "meen"}}), RecipeError, r"'mean'"),
    (dict(pooling="mean", seed=-1), UserError, r"seed=-1"),
])
def test_create_model_errors(kwargs, error, match):
    kwargs = {"in_shape": (4,), "num_classes": 2, **kwargs}
    with pytest.raises(error, match=match) as err:
        create_model(**kwargs)
    assert err.value.exit_code == 2
