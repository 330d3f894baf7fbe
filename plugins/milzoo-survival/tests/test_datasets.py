"""The FMNIST survival and regression bag sources: the generative model, its ceiling, and a run end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from milzoo.datasets import collate_bags
from milzoo.datasets.resident import Moved, make_resident
from milzoo.errors import DataError

from milzoo_survival import metrics as sm
from milzoo_survival.datasets import FMNISTRegressionBags, FMNISTSurvivalBags, censoring_rate

SMALL = dict(bag_size=8, max_key=3, train_bags=120, val_bags=40, test_bags=200)


def test_censoring_rate_gives_the_share_asked_for():
    hazards = 0.02 * np.exp(0.8 * np.arange(5))
    mu = censoring_rate(hazards, 0.3)
    assert math.isclose(float(np.mean(mu / (mu + hazards))), 0.3, rel_tol=1e-9)
    rng = np.random.default_rng(0)
    lam = np.repeat(hazards, 20000)
    share = np.mean(rng.exponential(1 / mu, lam.size) < rng.exponential(1 / lam))
    assert abs(share - 0.3) < 0.01


def test_survival_bags_follow_the_generative_model(fake_fmnist):
    src = FMNISTSurvivalBags(FMNISTSurvivalBags.Config(root=str(fake_fmnist), **SMALL))
    splits = src.load()
    assert set(splits) == {"train", "val", "test"}
    test = splits["test"]
    assert test.labels.shape == (200, 2) and set(np.unique(test.labels[:, 1])) <= {0.0, 1.0}
    assert np.array_equal(test.strata, test.labels[:, 1].astype(np.int64))
    # each bag holds K key images (class 1), K uniform on 0..3; the oracle risk is beta K
    assert set(np.unique(test.key_counts)) == {0, 1, 2, 3}
    assert np.allclose(test.oracle, 0.8 * test.key_counts)
    # the oracle ranks the bags well: the ceiling of the benchmark
    y = np.concatenate([s.labels for s in splits.values()])
    oracle = np.concatenate([s.oracle for s in splits.values()])
    assert sm.harrell_c(y[:, 0], y[:, 1], oracle) > 0.68
    assert sm.harrell_c(y[:, 0], y[:, 1], -oracle) < 0.32
    assert 0.2 < 1 - y[:, 1].mean() < 0.4  # about 30% censored
    # no image twice within a split; validation images are not training images
    for s in splits.values():
        assert len(np.unique(s.index)) == s.index.size
    assert not set(splits["train"].index.ravel()) & set(splits["val"].index.ravel())
    bag = test[0]
    assert bag.x.shape == (8, 1, 28, 28) and isinstance(bag.y, tuple) and len(bag.y) == 2


def test_bags_are_reproducible_and_batch_the_same_both_ways(fake_fmnist):
    cfg = FMNISTSurvivalBags.Config(root=str(fake_fmnist), **SMALL)
    a, b = FMNISTSurvivalBags(cfg).load()["train"], FMNISTSurvivalBags(cfg).load()["train"]
    assert np.array_equal(a.index, b.index) and np.array_equal(a.labels, b.labels)
    rows = [3, 0, 7]
    host = collate_bags([a[i] for i in rows])
    dev = make_resident(a, Moved(torch.device("cpu"))).batch(rows, torch.tensor(rows))
    assert host.y.dtype == torch.float32 and host.y.shape == (3, 2)
    assert torch.equal(host.x, dev.x) and torch.equal(host.y, dev.y)


def test_regression_bags_and_their_noise_limited_ceiling(fake_fmnist):
    splits = FMNISTRegressionBags(FMNISTRegressionBags.Config(root=str(fake_fmnist), noise=0.02, **SMALL)).load()
    test = splits["test"]
    assert test.labels.shape == (200,)
    assert np.allclose(test.oracle, test.key_counts / 8)
    rmse = float(np.sqrt(np.mean((test.labels - test.oracle) ** 2)))
    assert 0.015 < rmse < 0.025  # the noise
    assert collate_bags([test[0], test[1]]).y.shape == (2,)


def test_too_many_bags_for_the_images_is_explained(fake_fmnist):
    src = FMNISTSurvivalBags(FMNISTSurvivalBags.Config(root=str(fake_fmnist), bag_size=16, train_bags=100, test_bags=500))
    with pytest.raises(DataError, match="lower test_bags"):
        src.load()


def test_config_refuses_more_keys_than_instances():
    with pytest.raises(Exception, match="max_key"):
        FMNISTSurvivalBags.Config(bag_size=4, max_key=5)


def test_real_fmnist_oracle_is_high():
    from milzoo_vision.readers import DEBIAN_FMNIST

    if not DEBIAN_FMNIST.is_dir():
        pytest.skip("the Debian package dataset-fashion-mnist is not installed")
    test = FMNISTSurvivalBags(FMNISTSurvivalBags.Config()).load()["test"]
    y = test.labels
    assert sm.harrell_c(y[:, 0], y[:, 1], test.oracle) > 0.7
    assert 0.25 < 1 - y[:, 1].mean() < 0.35


@pytest.mark.parametrize("recipe, monitor", [("survival/fmnist_abmil", "c_index"),
                                             ("survival/fmnist_abmil_cox", "c_index"),
                                             ("regression/fmnist_transmil", "r2")])
def test_shipped_recipe_runs_end_to_end(fake_fmnist, tmp_path, recipe, monitor):
    import milzoo

    out = tmp_path / "run"
    summary = milzoo.run(recipe, out=str(out), progress=False, overrides=[
        f'data.root="{fake_fmnist}"', "data.bag_size=8", "data.max_key=3", "data.train_bags=64", "data.val_bags=32",
        "data.test_bags=64", "train.epochs=2", "train.threads=1"])
    assert math.isfinite(summary["selected"]["test"][monitor]["mean"])
    # the checkpoint loads back with its task and fitted state (time bins, target scaler), predicting the same
    model = milzoo.load_model(out / "fold-00" / "last")
    assert model.task.name == recipe.split("/")[0]
    assert model.task.columns(model.class_names)[0] in ("risk", "pred")
    if recipe.startswith("survival"):
        from milzoo_survival.km import km_report_for_run

        header = (out / "fold-00" / "best" / "predictions-test.csv").read_text().splitlines()[0]
        assert header.startswith("bag_id,time,event,risk")
        rep, _, _ = km_report_for_run(out, 0)
        assert rep.cutoff_split == "val" and rep.n_low + rep.n_high == 64
        # the HTML report draws what the task draws: the Kaplan-Meier curves, with the cut-off's origin
        from milzoo.report import build_report

        html = build_report([out], embed=False, attention=False)
        assert "Survival figures" in html and "Kaplan-Meier curves of fold 0" in html
        assert "quantile of the val bags" in html and "skipped" not in html
