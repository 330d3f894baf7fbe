"""Pretrained entries whose weights ship inside an installed package (docs/hub.md, "Where a zoo name loads
from"): the package first, then the Hub cache, then the Hub; `milzoo verify` measures a folder again."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

import milzoo
from milzoo.testing.weights import offline_hub
from milzoo.testing import registered_plugins
from milzoo import hookimpl
from milzoo.cli import cli
from milzoo.errors import OfflineNotCachedError, UnpublishedModelError
from milzoo.hub import load_folder, save_pretrained, verify
from milzoo.hub.pretrained import PretrainedEntry, get_pretrained, register_package_entries

SHA = "1" * 40
OTHER = "2" * 40


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """No network, and never the user's real Hub cache."""
    offline_hub(monkeypatch, tmp_path / "empty-hf-cache")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "run"
    recipe = {
        "name": "pkg_mini", "seed": 0,
        "data": {"name": "classic", "dataset": "musk1"},
        "encoder": {"name": "mlp", "dims": [16]},
        "pooling": {"name": "mean"},
        "loss": [{"name": "bag_ce"}],
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 4, "threads": 1, "progress": False},
        "protocol": {"kind": "cv", "folds": 2, "standardize": True},
    }
    milzoo.run(recipe, out=out)
    return out


@pytest.fixture(scope="module")
def package(run_dir, tmp_path_factory):
    """An importable package ``pkgtest_weights`` holding the run's Hub folder and an index.json."""
    root = tmp_path_factory.mktemp("site")
    weights = root / "pkgtest_weights" / "weights"
    weights.mkdir(parents=True)
    (root / "pkgtest_weights" / "__init__.py").write_text("")
    save_pretrained(run_dir, weights / "pkg-mini", repo_id="pkgtest/pkg-mini")
    (weights / "index.json").write_text(json.dumps({"pkg-mini": {
        "repo_id": "pkgtest/pkg-mini", "recipe": "recipes/quickstart.toml", "description": "a shipped test model",
        "revision": SHA, "published": True, "overrides": ["ignored: not an entry field"]}}))
    return root


class _Plugin:
    def __init__(self, extra=()):
        self.extra = extra

    @hookimpl
    def milzoo_register_pretrained(self, register):
        register_package_entries(register, "pkgtest_weights")
        for e in self.extra:
            register(e)


@pytest.fixture
def registered(package, monkeypatch):
    monkeypatch.syspath_prepend(str(package))
    with contextlib.ExitStack() as stack:
        yield lambda *extra: stack.enter_context(registered_plugins({"pkgtest": _Plugin(extra)}))


def put_in_cache(cache, repo_id, folder, sha):
    """``folder`` in the Hub cache layout as ``repo_id`` at commit ``sha`` (what a download leaves)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)


def _bags():
    from milzoo.datasets.batch import Bag, collate_bags

    g = torch.Generator().manual_seed(0)
    return collate_bags([Bag(x=torch.randn(5, 166, generator=g), y=0), Bag(x=torch.randn(9, 166, generator=g), y=1)])


def test_package_first_with_no_network(registered, package):
    registered()
    entry = get_pretrained("pkg-mini")
    assert entry.sources == ["package pkgtest_weights", f"hub pkgtest/pkg-mini@{SHA[:12]}"]
    assert entry.summary.startswith("[package pkgtest_weights + hub pkgtest/pkg-mini@")
    model = milzoo.load_pretrained("pkg-mini")  # published too, but the package wins: no cache, no network
    ref = load_folder(package / "pkgtest_weights" / "weights" / "pkg-mini")
    assert torch.equal(model.predict(_bags()).bag_probs, ref.predict(_bags()).bag_probs)
    listing = CliRunner().invoke(cli, ["list", "pretrained"])
    assert "[package pkgtest_weights + hub pkgtest/pkg-mini@111111111111]" in listing.output


def test_another_revision_skips_the_package(registered):
    registered()
    with pytest.raises(OfflineNotCachedError, match="pkgtest/pkg-mini"):  # offline: the Hub is not even tried
        milzoo.load_pretrained("pkg-mini", revision=OTHER, local_files_only=True)


def test_uninstalled_package_falls_back_to_the_cache(registered, package, tmp_path):
    folder = package / "pkgtest_weights" / "weights" / "pkg-mini"
    put_in_cache(tmp_path / "cache", "pkgtest/elsewhere", folder, sha=SHA)
    registered(PretrainedEntry(name="pkg-away", repo_id="pkgtest/elsewhere", revision=SHA, published=True,
                               recipe="recipes/quickstart.toml", package="pkgtest_not_installed:weights/x"))
    entry = get_pretrained("pkg-away")
    assert entry.package_folder() is None and entry.sources == [f"hub pkgtest/elsewhere@{SHA[:12]}"]
    model = milzoo.load_pretrained("pkg-away", cache_dir=tmp_path / "cache")
    assert torch.equal(model.predict(_bags()).bag_probs, load_folder(folder).predict(_bags()).bag_probs)


def test_package_only_entry_not_installed_is_unpublished(registered):
    registered(PretrainedEntry(name="pkg-gone", repo_id="pkgtest/gone", recipe="recipes/quickstart.toml",
                               package="pkgtest_not_installed:weights/gone"))
    assert get_pretrained("pkg-gone").summary.startswith("[unpublished]")
    with pytest.raises(UnpublishedModelError, match="milzoo run quickstart --out runs/pkg-gone"):
        milzoo.load_pretrained("pkg-gone")


@pytest.mark.parametrize("bad", ["pkg:../up", "pkg", "pkg:/abs", "1pkg:w", "pkg:w/../../x"])
def test_package_field_is_validated(bad):
    with pytest.raises(ValueError, match="module:relative/folder"):
        PretrainedEntry(name="x", repo_id="a/b", recipe="r.toml", package=bad)


def test_verify_reproduces_and_catches_a_changed_metric(registered, package, tmp_path):
    registered()
    result = verify("pkg-mini")
    assert result.ok and {c.metric for c in result.checks} >= {"acc", "auc", "acc (sd)"}, result.lines()
    assert CliRunner().invoke(cli, ["verify", "pkg-mini"]).exit_code == 0

    copy = tmp_path / "edited"
    shutil.copytree(package / "pkgtest_weights" / "weights" / "pkg-mini", copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["metrics"]["splits"]["test"]["acc"] += 0.01
    (copy / "config.json").write_text(json.dumps(cfg))
    res = CliRunner().invoke(cli, ["verify", str(copy)])
    assert res.exit_code == 1 and "DIFFERS test             acc" in res.output, res.output
