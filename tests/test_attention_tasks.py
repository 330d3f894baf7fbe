"""Attention views and the words of models whose task has no classes (regression, survival): the attention is
shown, and the bag's prediction and label are said in the label's units, never as a class with a decision rule."""

from __future__ import annotations

import gzip
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from milzoo.builtin.encoders import IdentityEncoder
from milzoo.builtin.poolings import MaxPooling, MeanPooling
from milzoo.builtin.tasks import RegressionTask
from milzoo.cli import cli
from milzoo.cli.report import add_commands
from milzoo.datasets.base import BagListDataset
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.errors import ComponentError
from milzoo.model.decision import (
    TaskPrediction,
    label_text,
    no_classes_text,
    predicts_classes,
    rule_text,
    task_prediction,
    task_words,
)
from milzoo.model.mil import MILModel
from milzoo.report import attention as att

add_commands(cli)
PNG = b"\x89PNG\r\n\x1a\n"


def _regression_model(in_shape=(3,), targets=1, pooling=MeanPooling):
    task = RegressionTask(RegressionTask.Config(targets=targets))
    d = int(np.prod(in_shape))
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), in_shape), pooling(pooling.Config(), d, targets),
                     class_names=[f"t{i}" for i in range(targets)] if targets > 1 else ["target"], task=task)
    with torch.no_grad():
        model.pooling.classifier.weight.fill_(0.5)
        model.pooling.classifier.bias.zero_()
        task.target_mean.fill_(10.0)
        task.target_scale.fill_(2.0)
    return model


def _survival_task(head="discrete"):
    from milzoo import registry

    try:
        cls = registry.get_component("task", "survival")
    except Exception:  # noqa: BLE001
        pytest.skip("the survival task is not installed (pip install milzoo-survival)")
    return cls(cls.Config(head=head, bins=3))


# --------------------------------------------------------------------------- the words (milzoo.model.decision)


def test_words_of_a_regression_model():
    model = _regression_model()
    assert not predicts_classes(model) and task_words(model) == "regression"
    assert no_classes_text(model) == "no classes: the task predicts pred (regression)"
    assert rule_text(model) == no_classes_text(model)  # never a class rule
    assert label_text(model, 11.7) == "target 11.7" and label_text(model, np.float32(2.0)) == "target 2"
    bag = Bag(x=torch.ones(4, 3), y=1.0)
    out = model.predict(collate_bags([bag]))
    p = task_prediction(model, out)
    # mean pooling: 0.5 * 3 = 1.5 standardised -> 1.5 * 2 + 10 in the target's units
    assert p == TaskPrediction(("pred",), (pytest.approx(13.0),), "regression")
    assert p.text == "pred 13 (regression)" and str(p) == p.text
    two = _regression_model(targets=2)
    assert label_text(two, np.array([1.25, 3.0], np.float32)) == "target_0 1.25, target_1 3"
    assert task_prediction(two, two.predict(collate_bags([bag]))).text == "pred_0 13, pred_1 13 (regression)"


def test_words_of_a_survival_model_and_of_classes():
    task = _survival_task()
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (3,)), MeanPooling(MeanPooling.Config(), 3, 3),
                     class_names=["risk"], task=task)
    assert no_classes_text(model) == "no classes: the task predicts risk, S_bin0, S_bin1, S_bin2 (survival, " \
                                     "discrete head)"
    assert label_text(model, (14.0, 1.0)) == "time 14, event 1"
    assert label_text(model, np.array([3.25, 0.0], np.float32)) == "time 3.25, event 0"
    p = task_prediction(model, model.predict(collate_bags([Bag(x=torch.randn(5, 3), y=(1.0, 1.0))])))
    assert p.columns == ("risk", "S_bin0", "S_bin1", "S_bin2")
    assert p.text == f"risk {p.values[0]:.4g} (survival, discrete head)"  # the curve is not in the words
    # a class model keeps its class and its rule
    cls = MILModel(IdentityEncoder(IdentityEncoder.Config(), (3,)), MeanPooling(MeanPooling.Config(), 3, 2),
                   class_names=["normal", "tumor"])
    assert predicts_classes(cls) and label_text(cls, 1) == "tumor" and rule_text(cls) == "argmax"
    assert task_prediction(cls, cls.predict(collate_bags([Bag(x=torch.randn(5, 3), y=1)]))).columns == (
        "p_normal", "p_tumor")


def test_many_targets_are_cut_short():
    p = TaskPrediction(tuple(f"pred_{i}" for i in range(6)), tuple(float(i) for i in range(6)), "regression")
    assert p.text == "pred_0 0, pred_1 1, pred_2 2, pred_3 3, ... (regression)"
    assert TaskPrediction((), (), "count").text == "no prediction (count)"


# --------------------------------------------------------------------------- bag views


def _feature_ds(n_bags=3, n=7, d=3, y=lambda i: 1.5 * i):
    g = torch.Generator().manual_seed(0)
    bags = [Bag(x=torch.randn(n, d, generator=g), y=float(y(i)), bag_id=f"b{i}",
                inst_y=(torch.arange(n) % 3 == 0).long()) for i in range(n_bags)]
    return BagListDataset(bags, ["target"])


def test_bar_view_of_a_regression_bag():
    model, ds = _regression_model(), _feature_ds()
    assert att.choose_bag(ds, task=model.task) == 0  # no class 0 to skip: the first bag
    v = att.bag_view(model, ds, 2)
    assert not v.classes and v.decision is None and v.inst_pred is None and v.bag_pred == -1
    assert v.value_name == "attention" and v.values == pytest.approx(np.full(7, 1 / 7))
    assert v.label == "target 3" and v.rule == "no classes: the task predicts pred (regression)"
    with torch.no_grad():
        expect = float(model.predict(collate_bags([ds[2]])).extras["prediction"][0, 0])
    assert v.prediction.values == (pytest.approx(expect),)
    assert att.prediction_text(v) == f"pred {expect:.4g} (regression)"
    assert att._header(v) == f"bag b2 · label target 3 · pred {expect:.4g} (regression) · 7 instances"
    png, kind = att.attention_png(v)
    assert kind == "bars" and png.startswith(PNG)
    assert att.attention_png(v, order="attention")[0].startswith(PNG)


def test_image_and_slide_views_of_a_regression_bag(monkeypatch):
    model = _regression_model(in_shape=(1, 4, 4))
    bag = Bag(x=torch.rand(5, 1, 4, 4), y=2.5, bag_id="img", inst_y=torch.tensor([0, 1, 0, 0, 1]))
    v = att.bag_view(model, BagListDataset([bag], ["target"]), 0)
    png, kind = att.attention_png(v)
    assert kind == "images" and png.startswith(PNG) and v.inst_name(1) == "label 1"
    # a slide: the heatmap, and a scatter without the WSI plugin
    model = _regression_model()
    coords = torch.stack([torch.arange(6) % 3, torch.arange(6) // 3], 1) * 256
    slide = Bag(x=torch.randn(6, 3), y=4.0, bag_id="s", coords=coords, inst_y=torch.tensor([0, 0, 1, 1, 0, 0]))
    v = att.bag_view(model, BagListDataset([slide], ["target"]), 0)
    png, kind = att.attention_png(v)
    assert kind == "heatmap" and png.startswith(PNG)
    monkeypatch.setitem(sys.modules, "milzoo_wsi.localization", None)
    png, kind = att.attention_png(v)
    assert kind == "heatmap" and png.startswith(PNG)


def test_a_survival_view_starts_at_an_observed_event():
    task = _survival_task("cox")
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (3,)), MeanPooling(MeanPooling.Config(), 3, 1),
                     class_names=["risk"], task=task)
    g = torch.Generator().manual_seed(1)
    bags = [Bag(x=torch.randn(4, 3, generator=g), y=np.array([5.0 + i, float(i == 2)], np.float32), bag_id=f"p{i}")
            for i in range(4)]
    ds = BagListDataset(bags, ["risk"])
    pos = att.choose_bag(ds, task=task)
    assert pos == 2
    v = att.bag_view(model, ds, pos)
    assert v.label == "time 7, event 1" and v.prediction.text.endswith("(survival, cox head)")
    assert math.isnan(v.bag_prob) and v.rule == "no classes: the task predicts risk (survival, cox head)"
    assert att.attention_png(v)[1] == "bars"


def test_a_pooling_without_attention_is_refused_for_a_task_without_classes():
    model = _regression_model(pooling=MaxPooling)
    with pytest.raises(ComponentError, match="exports no attention, and the regression task has no classes"):
        att.bag_view(model, _feature_ds(), 0)


# --------------------------------------------------------------------------- milzoo attention on a run


def _idx(path: Path, arr: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(f"{path}.gz", "wb") as fh:
        fh.write(head + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    """fmnist_regression (milzoo-survival) on generated idx files: bags of 4 images, 1 epoch."""
    from milzoo import registry

    try:
        registry.get_component("dataset", "fmnist_regression")
    except Exception:  # noqa: BLE001
        pytest.skip("the fmnist_regression dataset is not installed (pip install milzoo-survival)")
    from milzoo.runs.runner import run

    data = tmp_path_factory.mktemp("fake-fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 400), ("t10k", 200)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        images[labels == 1, 4:24, 12:16] = 255  # trousers: a bright bar
        _idx(data / f"{prefix}-images-idx3-ubyte", images)
        _idx(data / f"{prefix}-labels-idx1-ubyte", labels)
    recipe = {
        "name": "tiny-regression", "seed": 0,
        "data": {"name": "fmnist_regression", "root": str(data), "bag_size": 4, "max_key": 2, "train_bags": 16,
                 "val_bags": 0, "test_bags": 6},
        "task": {"name": "regression"},
        "encoder": {"name": "cnn2", "dim": 8},
        "pooling": {"name": "abmil"},
        "train": {"epochs": 1, "batch_size": 4, "progress": False, "threads": 1},
        "protocol": {"kind": "holdout", "eval_splits": ["test"]},
    }
    out = tmp_path_factory.mktemp("regression_run") / "run"
    run(recipe, out=out)
    return out


def test_milzoo_attention_on_a_regression_run(regression_run, tmp_path):
    out = tmp_path / "a.png"
    res = CliRunner().invoke(cli, ["attention", str(regression_run), "--index", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "(images, bag " in lines[0] and out.read_bytes().startswith(PNG)
    assert lines[-1] == "no classes: the task predicts pred (regression)"
    assert lines[-2].startswith("pred ") and " (regression); label target " in lines[-2]
    assert "decision rule" not in res.output and "predicted" not in res.output
    from milzoo.report.context import RunContext

    png, kind, v = att.run_attention(RunContext(regression_run), split="test", index=1)
    assert kind == "images" and lines[-2] == f"{att.prediction_text(v)}; label {v.label}"
    assert v.values.sum() == pytest.approx(1.0, abs=1e-5)
    res = CliRunner().invoke(cli, ["attention", str(regression_run), "--index", "99"])
    assert res.exit_code == 2 and "out of range" in res.output and "Traceback" not in res.output
