"""Tasks (docs/tasks.md): classification stays what it was, bit for bit; regression end to end; task checks."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import milzoo
from milzoo.datasets import Bag, BagListDataset
from milzoo.errors import ComponentError, RecipeError, UserError
from milzoo.metrics import regression_metrics

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "data" / "quickstart_classification_golden.json").read_text())
#: recipe options added after the golden run was made, with their defaults (which change nothing)
NEW_DEFAULTS = {("protocol", "patient_metrics"): "none",
                # options added for `milzoo convert` (MIL-Lab ABMIL): their defaults keep models bit-identical
                ("encoder", "last_dropout"): True, ("pooling", "attn_dropout"): 0.0}


def _cpu() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = info.splitlines()
    model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), "")
    flags = next((l for l in lines if l.startswith("flags")), "")
    return {"model": model, "avx512f": " avx512f" in flags, "avx512_bf16": " avx512_bf16" in flags,
            "machine": platform.machine()}


def _run(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    milzoo.run(ROOT / "recipes" / "quickstart.toml", out=str(out), progress=False,
               overrides=["train.epochs=3", "protocol.folds=3", *extra])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        m.pop("time_s", None)
    return {
        "metrics": metrics,
        "predictions": {str(p.relative_to(out)): p.read_text() for p in sorted(out.glob("fold-*/*/predictions-*.csv"))},
        "weights_sha256": {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                           for p in sorted(out.glob("fold-*/*/model.safetensors"))},
        "recipe_toml": (out / "recipe.toml").read_text(),
    }


@pytest.mark.parametrize("extra", [(), ("task.name=classification",)], ids=["default", "explicit"])
def test_classification_is_todays_behaviour_bit_for_bit(tmp_path, extra):
    """The shipped quickstart recipe, with the task left out or named, gives what milzoo gave before tasks
    existed (tests/data/quickstart_classification_golden.json, made by commit f810f3e): the same metrics,
    predictions files, weights and resolved recipe.  fp32 numerics differ between CPU types, so the exact
    comparison holds on the CPU type that made the file; elsewhere the metrics must agree to 1e-5."""
    now = _run(tmp_path, "run", *extra)
    # the resolved recipe is the same, but for the defaults of options added since (none of them changes a run)
    resolved = tomllib.loads(now["recipe_toml"])
    for (section, key), default in NEW_DEFAULTS.items():
        assert resolved[section].pop(key) == default
    assert resolved == tomllib.loads(GOLDEN["recipe_toml"])
    assert [(m["fold"], m["epoch"], m["split"]) for m in now["metrics"]] == \
        [(m["fold"], m["epoch"], m["split"]) for m in GOLDEN["metrics"]]
    assert list(now["predictions"]) == list(GOLDEN["predictions"])
    if _cpu() == GOLDEN["cpu"]:
        assert now["metrics"] == GOLDEN["metrics"]
        assert now["predictions"] == GOLDEN["predictions"]
        assert now["weights_sha256"] == GOLDEN["weights_sha256"]
    else:
        for a, b in zip(now["metrics"], GOLDEN["metrics"]):
            for key, value in b.items():
                if isinstance(value, float):
                    assert a[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key


def _toy_bags(n: int = 60, seed: int = 0) -> list[Bag]:
    g = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        x = g.normal(size=(int(g.integers(3, 9)), 4)).astype(np.float32)
        y = float(x[:, 0].max() * 2.0 + 1.0)  # the largest first feature of the bag: a MIL target
        bags.append(Bag(x=torch.from_numpy(x), y=y, bag_id=f"b{i}"))
    return bags


def _fit_regression(tmp_path, **task):
    from milzoo.datasets import FoldData
    from milzoo.recipe import load_recipe
    from milzoo.train import Trainer

    raw = {"name": "reg", "seed": 0, "data": {"name": "classic", "dataset": "musk1"},
           "task": {"name": "regression", **task}, "pooling": {"name": "abmil"},
           "encoder": {"name": "mlp", "dims": [16]}, "optim": {"name": "adam", "lr": 0.01},
           "train": {"epochs": 25, "batch_size": 4}}
    bags = _toy_bags()
    train, test = BagListDataset(bags[:45], ["target"]), BagListDataset(bags[45:], ["target"])
    tr = Trainer(load_recipe(raw), FoldData(0, train, None, {"test": test}), tmp_path, emit=lambda r: None)
    return tr, tr.fit(progress=False), test


def test_regression_learns_a_mil_target_and_predicts_in_its_units(tmp_path):
    tr, result, test = _fit_regression(tmp_path)
    last = result["last"]["test"]
    assert last["r2"] > 0.5 and last["pearson"] > 0.7
    # standardised on the training bags; the fitted mean and scale are in the checkpoint
    y = np.asarray(tr.data.train.labels)
    assert float(tr.model.task.target_mean) == pytest.approx(y.mean(), rel=1e-5)
    model = milzoo.load_model(tmp_path / "last")
    assert float(model.task.target_scale) == pytest.approx(y.std(), rel=1e-5)
    batch = milzoo.collate_bags([test[i] for i in range(len(test))])
    pred = model.task.predict(model.predict(batch)).squeeze(1).numpy()
    assert regression_metrics(np.asarray(test.labels), pred)["rmse"] == pytest.approx(last["rmse"], rel=1e-4)
    header = (tmp_path / "last" / "predictions-test.csv").read_text().splitlines()[0]
    assert header == "bag_id,target,pred"


def test_regression_metrics_match_scipy_and_sklearn():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    g = np.random.default_rng(3)
    y = g.normal(size=50)
    p = y + g.normal(scale=0.5, size=50)
    p[:5] = p[5]  # ties for Spearman
    m = regression_metrics(y, p)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, p)))
    assert m["r2"] == pytest.approx(r2_score(y, p))
    assert m["pearson"] == pytest.approx(pearsonr(y, p)[0])
    assert m["spearman"] == pytest.approx(spearmanr(y, p)[0])
    assert math.isnan(regression_metrics(y, np.zeros(50))["pearson"])  # a constant side: no confident number


def test_a_classification_loss_refuses_a_regression_task(tmp_path):
    with pytest.raises(ComponentError, match="the 'bag_ce' loss trains class labels, but the recipe's task is 'regression'"):
        _fit_regression_with_loss(tmp_path, "bag_ce")


def _fit_regression_with_loss(tmp_path, loss):
    from milzoo.datasets import FoldData
    from milzoo.recipe import load_recipe
    from milzoo.train import Trainer

    raw = {"data": {"name": "classic", "dataset": "musk1"}, "task": {"name": "regression"},
           "pooling": {"name": "abmil"}, "loss": [{"name": loss}], "train": {"epochs": 1}}
    bags = _toy_bags(12)
    return Trainer(load_recipe(raw), FoldData(0, BagListDataset(bags, ["t"]), None, {}), tmp_path, emit=print)


def test_protocols_that_need_classes_are_refused_for_regression():
    from milzoo.recipe import load_recipe

    base = {"data": {"name": "classic", "dataset": "musk1"}, "task": {"name": "regression"},
            "pooling": {"name": "abmil"}}
    with pytest.raises(RecipeError, match="cv_ensemble takes a majority vote"):
        load_recipe({**base, "protocol": {"kind": "cv_ensemble", "folds": 3}})
    with pytest.raises(RecipeError, match="Youden threshold"):
        load_recipe({**base, "protocol": {"threshold": "youden"}})


def test_a_loss_that_needs_several_bags_per_step_refuses_one(tmp_path):
    from milzoo.builtin.losses import MSELoss

    class NeedsMany(MSELoss):
        """MSE that declares it compares bags within a step."""

        min_bags_per_step = 8

    from milzoo.train import _epoch

    with pytest.raises(UserError, match="needs at least 8 bags per step, but train.batch_size is 1"):
        _epoch.check_bags_per_step([NeedsMany(NeedsMany.Config(), 1)], 1, 100)


def test_classification_labels_must_be_class_indices():
    from milzoo.builtin.tasks import ClassificationTask
    from milzoo.errors import DataError

    with pytest.raises(DataError, match="regression"):
        ClassificationTask(ClassificationTask.Config()).check_labels(np.array([0.5, 1.2]), "the bags")


def test_a_third_party_task_passes_the_contract_suite():
    """A task written from docs/tasks.md: binary labels scored by a single logit (a sigmoid head)."""
    from milzoo.components import ComponentConfig, Task
    from milzoo.metrics import bag_metrics
    from milzoo.testing import check_task

    class SigmoidTask(Task):
        """Binary labels with one logit: p(positive) = sigmoid(logit)."""

        name = "sigmoid_binary"
        classes = True
        headline = "auc"

        class Config(ComponentConfig):
            pass

        def out_dim(self, num_classes):
            return 1

        def example_labels(self, n, seed=0):
            return [i % 2 for i in range(n)]

        def predict(self, out):
            p = torch.sigmoid(out.bag_logits[:, :1].float())
            return torch.cat([1 - p, p], dim=1)

        def columns(self, class_names):
            return ["p_negative", "p_positive"]

        def metrics(self, y, pred, threshold=None):
            m = bag_metrics(np.asarray(y), pred, threshold)
            m["loss"] = float(-np.log(np.clip(pred[np.arange(len(y)), np.asarray(y)], 1e-7, 1)).mean())
            return m

    check_task(SigmoidTask)


def test_patient_metrics_average_a_patients_bags(tmp_path):
    from milzoo.datasets import FoldData
    from milzoo.errors import DataError
    from milzoo.recipe import load_recipe
    from milzoo.train import Trainer, _evaluate

    preds = {"bag_ids": ["a1", "b1", "a2", "c1"], "y": np.array([1, 0, 1, 0]),
             "probs": np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])}
    y, p = _evaluate.patient_predictions(preds, {"a1": "A", "a2": "A", "b1": "B", "c1": "C"})
    assert y.tolist() == [1, 0, 0] and np.allclose(p[0], [0.3, 0.7])
    with pytest.raises(DataError, match="patient 'A' has bags with different labels"):
        _evaluate.patient_predictions({**preds, "y": np.array([1, 0, 0, 0])}, {"a1": "A", "a2": "A"})

    g = np.random.default_rng(1)
    bags = [Bag(x=torch.from_numpy(g.normal(size=(4, 3)).astype(np.float32)) + (i % 2), y=i % 2, bag_id=f"s{i}")
            for i in range(24)]
    patients = [f"P{i // 2 % 6}-{i % 2}" for i in range(24)]  # two bags (slides) per patient, one label each
    ds = BagListDataset(bags, ["neg", "pos"], groups=patients)
    raw = {"data": {"name": "classic", "dataset": "musk1"}, "pooling": {"name": "mean"},
           "train": {"epochs": 2}, "protocol": {"patient_metrics": "mean"}}
    records = []
    tr = Trainer(load_recipe(raw), FoldData(0, ds, None, {"test": ds}), tmp_path, emit=records.append)
    tr.fit(progress=False)
    test = [r for r in records if r["split"] == "test"][-1]
    assert {"auc", "patient_auc", "patient_acc", "patient_loss"} <= set(test)
