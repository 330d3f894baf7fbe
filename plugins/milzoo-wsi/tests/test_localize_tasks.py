"""``milzoo localize`` and ``milzoo attention`` on runs whose task has no classes (survival, regression): the
attention is drawn, and each slide gets the task's prediction and its label in words instead of a class."""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import milzoo
from milzoo import registry
from milzoo.cli import cli
from milzoo.cli._app import _add_plugin_commands
from milzoo.errors import ComponentError
from milzoo.model.decision import TaskPrediction, no_classes_text
from milzoo_wsi.localization import decision_rule, instance_outputs, localization_table, write_localization
from milzoo_wsi.synthetic import make_synthetic_slides

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _survival_installed() -> bool:
    try:
        registry.get_component("task", "survival")
    except Exception:  # noqa: BLE001
        return False
    return True


needs_survival = pytest.mark.skipif(not _survival_installed(),
                                    reason="the survival task is not installed (pip install milzoo-survival)")


@pytest.fixture(scope="module")
def runner():
    _add_plugin_commands()
    return CliRunner()


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsi-task-loc")
    return make_synthetic_slides(str(root / "s"), n_slides=16, mean_patches=12, dim=6, seed=5, signal=3.0,
                                 slides_per_patient=2, outcomes=True, patient_column="case_id")


def _recipe(data: dict, target: str, task: dict, batch_size: int = 2) -> dict:
    return {
        "name": f"tiny_{target}_{task.get('head', '')}", "seed": 0,
        "data": {"name": "slides", "features": data["features"], "table": data["table"], "target": target,
                 "test_fraction": 0.0, "load_workers": 1},
        "task": task,
        "encoder": {"name": "mlp", "dims": [8]},
        "pooling": {"name": "abmil", "attn_hidden": 8},
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": batch_size, "threads": 1, "progress": False},
        "protocol": {"kind": "cv", "folds": 2},
    }


def _train(recipe: dict, out: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        milzoo.run(recipe, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(slides, tmp_path_factory):
    root = tmp_path_factory.mktemp("wsi-task-runs")
    out = {"regression": _train(_recipe(slides, "regression", {"name": "regression"}), root / "regression")}
    if _survival_installed():
        out["discrete"] = _train(_recipe(slides, "survival", {"name": "survival", "head": "discrete", "bins": 2}),
                                 root / "discrete")
        out["cox"] = _train(_recipe(slides, "survival", {"name": "survival", "head": "cox"}, batch_size=8),
                            root / "cox")
    return out


def _truth(slides: dict) -> dict[str, dict]:
    return {r["slide_id"]: r for r in _rows(slides["table"])}


# (run key, label columns, prediction columns, task words)
CASES = [
    pytest.param("discrete", ["time", "event"], ["risk", "S_bin0", "S_bin1"], "survival, discrete head",
                 marks=needs_survival, id="survival-discrete"),
    pytest.param("cox", ["time", "event"], ["risk"], "survival, cox head", marks=needs_survival, id="survival-cox"),
    pytest.param("regression", ["target"], ["pred"], "regression", id="regression"),
]


# --------------------------------------------------------------------------- milzoo localize


@pytest.mark.parametrize("key, label_cols, pred_cols, words", CASES)
def test_localize_gives_the_task_prediction_instead_of_a_class(runner, runs, slides, key, label_cols, pred_cols,
                                                               words):
    run_dir = runs[key]
    res = runner.invoke(cli, ["localize", str(run_dir), "--fold", "1"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1] == f"no classes: the task predicts {', '.join(pred_cols)} ({words})"
    assert "decision rule" not in res.output and "predicted" not in res.output and "argmax" not in res.output

    out = run_dir / "localization" / "fold-01" / "test"
    index = _rows(out / "slides.csv")
    assert list(index[0]) == ["split", "slide_id", *label_cols, *pred_cols, "csv", "png", "geojson", "slide_image"]
    # the predictions are those the run wrote for the same fold's test bags; the labels those of the table
    written = {r["bag_id"]: r for r in _rows(run_dir / "fold-01" / "last" / "predictions-test.csv")}
    truth = _truth(slides)
    assert sorted(r["slide_id"] for r in index) == sorted(written)
    for r in index:
        for c in pred_cols:
            assert float(r[c]) == pytest.approx(float(written[r["slide_id"]][c]), rel=1e-4, abs=1e-5)
        t = truth[r["slide_id"]]
        if key == "regression":
            assert float(r["target"]) == pytest.approx(float(t["target"]), rel=1e-5)
        else:
            assert float(r["time"]) == pytest.approx(float(t["survival_months"]), rel=1e-5)
            assert int(r["event"]) == 1 - int(t["censorship"])  # event = 1 - censorship
        # the per-patch table: the attention, no class scores
        table = _rows(out / f"{r['slide_id']}.csv")
        assert list(table[0]) == ["slide_id", "patch", "x", "y", "attention"]
        assert sum(float(p["attention"]) for p in table) == pytest.approx(1.0, abs=1e-4)
        assert (out / f"{r['slide_id']}.png").read_bytes()[:8] == PNG
        fc = json.loads((out / f"{r['slide_id']}.geojson").read_text())
        assert len(fc["features"]) == len(table)
        assert set(fc["features"][0]["properties"]["measurements"]) == {"attention"}
    # each slide's line: its prediction, then its label in words
    first = index[0]
    shown = next(line for line in lines if line.startswith(f"  {first['slide_id']}: "))
    head = pred_cols[0]
    said = re.match(rf"  {first['slide_id']}: {head} (\S+) \({re.escape(words)}\); label ", shown)
    assert said and float(said.group(1)) == pytest.approx(float(first[head]), rel=1e-3, abs=1e-4)
    if key == "regression":
        assert shown.endswith(f"; label target {float(first['target']):.4g}")
    else:
        assert shown.endswith(f"; label time {float(first['time']):.4g}, event {first['event']}")


@pytest.mark.parametrize("key", [pytest.param("discrete", marks=needs_survival), "regression"])
def test_localize_refuses_instance_scores_for_a_task_without_classes(runner, runs, key, tmp_path):
    res = runner.invoke(cli, ["localize", str(runs[key]), "--heatmap-value", "score", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert "has no classes" in res.output and "--heatmap-value attention" in res.output
    # the attention is what it draws
    res = runner.invoke(cli, ["localize", str(runs[key]), "--heatmap-value", "attention", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output


@needs_survival
def test_localize_a_survival_checkpoint_with_a_table(runner, runs, slides, tmp_path):
    """A checkpoint folder with --features/--table: the table is read with the survival labels."""
    ckpt = runs["discrete"] / "fold-00" / "last"
    res = runner.invoke(cli, ["localize", str(ckpt), "--features", slides["features"], "--table", slides["table"],
                              "--out", str(tmp_path / "loc"), "--no-heatmaps", "--slide", "slide_0003"])
    assert res.exit_code == 0, res.output
    (row,) = _rows(tmp_path / "loc" / "slides.csv")
    t = _truth(slides)["slide_0003"]
    assert row["slide_id"] == "slide_0003" and float(row["time"]) == pytest.approx(float(t["survival_months"]))
    assert row["png"] == "" and "risk" in row


# --------------------------------------------------------------------------- the Python functions


def _fold_data(run_dir: Path, fold: int = 0):
    from milzoo import checkpoint as ckpt
    from milzoo.datasets import folds_for
    from milzoo.recipe import load_recipe

    data = folds_for(load_recipe(run_dir / "recipe.toml"))[fold]
    return ckpt.load_model(run_dir / f"fold-{fold:02d}" / "last"), data.evals["test"]


@needs_survival
def test_write_localization_returns_predictions_and_labels(runs, tmp_path):
    model, ds = _fold_data(runs["discrete"])
    assert decision_rule(model) == no_classes_text(model) == (
        "no classes: the task predicts risk, S_bin0, S_bin1 (survival, discrete head)")
    outs = instance_outputs(model, ds[0])
    assert outs["scores"] is None and outs["decision"] is None and outs["pred"] is None
    assert isinstance(outs["prediction"], TaskPrediction) and outs["attention"].shape == (len(ds[0]),)
    assert list(localization_table(model, ds[0])[0]) == ["slide_id", "patch", "x", "y", "attention"]

    res = write_localization(model, ds, str(tmp_path / "loc"), indices=[0, 1])
    for r, i in zip(res, (0, 1)):
        bag = ds[i]
        p = r["prediction"]
        assert r["decision"] is None and r["pred"] is None and r["probs"] is None
        assert r["label"] == pytest.approx([float(v) for v in np.asarray(bag.y).reshape(-1)])
        assert r["label_text"] == f"time {float(bag.y[0]):.4g}, event {int(bag.y[1])}"
        assert p.columns == ("risk", "S_bin0", "S_bin1") and p.task == "survival, discrete head"
        with torch.no_grad():
            expect = model.task.predict(model.predict(milzoo.datasets.collate_bags([bag]))).numpy()[0]
        np.testing.assert_allclose(p.values, expect, rtol=1e-5)
        assert p.text == f"risk {expect[0]:.4g} (survival, discrete head)"
        assert -p.values[0] == pytest.approx(sum(p.values[1:]), rel=1e-5)  # risk = -sum S_j
        assert Path(r["png"]).read_bytes()[:8] == PNG
    with pytest.raises(ComponentError, match="survival task has no classes.*heatmap_value 'attention'"):
        write_localization(model, ds, str(tmp_path / "s"), heatmap_value="score")


def test_a_regression_ensemble_predicts_its_members_mean(runs, tmp_path):
    from milzoo.model import Ensemble

    m0, ds = _fold_data(runs["regression"], 0)
    m1, _ = _fold_data(runs["regression"], 1)
    ens = Ensemble([m0, m1])
    (r,) = write_localization(ens, ds, str(tmp_path / "loc"), indices=[0])
    batch = milzoo.datasets.collate_bags([ds[0]])
    mean = (m0.predict(batch).extras["prediction"] + m1.predict(batch).extras["prediction"]) / 2
    assert r["prediction"].values[0] == pytest.approx(float(mean[0, 0]), rel=1e-5)
    assert r["prediction"].text.endswith("(regression, mean of 2 members)")
    assert decision_rule(ens) == "no classes: the task predicts pred (regression)"


def test_a_pooling_without_attention_cannot_localise_a_regression(tmp_path):
    from milzoo.builtin.encoders import IdentityEncoder
    from milzoo.builtin.poolings import MaxPooling
    from milzoo.builtin.tasks import RegressionTask
    from milzoo.datasets.batch import Bag
    from milzoo.model.mil import MILModel

    task = RegressionTask(RegressionTask.Config())
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (3,)), MaxPooling(MaxPooling.Config(), 3, 1),
                     class_names=["target"], task=task)
    bag = Bag(x=torch.randn(4, 3), y=1.5, bag_id="s", coords=torch.arange(8).reshape(4, 2) * 256,
              meta={"slide_id": "s"})
    with pytest.raises(ComponentError, match="exports no attention, and the regression task has no classes"):
        write_localization(model, [bag], str(tmp_path / "loc"))


# --------------------------------------------------------------------------- milzoo attention


@pytest.mark.parametrize("key, label_cols, pred_cols, words", CASES)
def test_attention_draws_the_attention_and_says_the_prediction(runner, runs, key, label_cols, pred_cols, words,
                                                               tmp_path):
    from milzoo.report.attention import run_attention
    from milzoo.report.context import RunContext

    run_dir = runs[key]
    out = tmp_path / "a.png"
    res = runner.invoke(cli, ["attention", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "(heatmap, bag " in lines[0] and out.read_bytes()[:8] == PNG
    geo = json.loads(out.with_suffix(".geojson").read_text())
    measures = set(geo["features"][0]["properties"]["measurements"])
    assert "attention" in measures and "instance class" not in measures and "instance p" not in measures
    assert lines[-1] == f"no classes: the task predicts {', '.join(pred_cols)} ({words})"
    assert "decision rule" not in res.output and "predicted" not in res.output

    png, kind, view = run_attention(RunContext(run_dir), fold=0, split="test")
    assert kind == "heatmap" and not view.classes and view.decision is None and view.inst_pred is None
    assert view.value_name == "attention" and view.values.sum() == pytest.approx(1.0, abs=1e-4)
    assert view.prediction.columns == tuple(pred_cols)
    assert lines[-2] == f"{view.prediction.text}; label {view.label}"
    assert view.prediction.text.startswith(f"{pred_cols[0]} ") and view.prediction.text.endswith(f"({words})")
    y = np.asarray(view.bag.y, dtype=np.float64).reshape(-1)
    if key == "regression":
        assert view.label == f"target {y[0]:.4g}"
    else:
        assert view.label == f"time {y[0]:.4g}, event {int(y[1])}"
        assert y[1] == 1  # by default the first bag whose event was observed
        assert math.isnan(view.bag_prob)


@needs_survival
def test_attention_of_a_named_slide_and_the_html_report(runner, runs, tmp_path):
    from milzoo.report.html import write_report

    run_dir = runs["discrete"]
    tested = _rows(run_dir / "fold-01" / "last" / "predictions-test.csv")[-1]
    res = runner.invoke(cli, ["attention", str(run_dir), "--bag", tested["bag_id"], "--fold", "1", "--no-geojson",
                              "--out", str(tmp_path / "b.png")])
    assert res.exit_code == 0, res.output
    assert f"bag {tested['bag_id']}" in res.output and not (tmp_path / "b.geojson").exists()
    event = int(float(tested["event"]))
    assert f"; label time {float(tested['time']):.4g}, event {event}" in res.output
    risk = re.search(r"^risk (\S+) \(survival, discrete head\); label", res.output, re.M)
    assert risk and float(risk.group(1)) == pytest.approx(float(tested["risk"]), rel=1e-3, abs=1e-4)
    res = runner.invoke(cli, ["attention", str(run_dir), "--bag", "no_such_slide"])
    assert res.exit_code == 2 and "no bag 'no_such_slide'" in res.output and "Traceback" not in res.output
    page = write_report([run_dir], tmp_path / "r.html", embed=False).read_text()
    assert "risk " in page and "(survival, discrete head)" in page and "no classes: the task predicts" in page


def test_per_output_attention_of_a_two_target_regression(tmp_path):
    from milzoo.builtin.encoders import IdentityEncoder
    from milzoo.builtin.tasks import RegressionTask
    from milzoo.components import ComponentConfig, MILOutput, Pooling
    from milzoo.datasets.batch import Bag
    from milzoo.layers import masked_softmax
    from milzoo.model.mil import MILModel

    class PerOutput(Pooling):
        """Test pooling: one attention per head output (softmax over instances of the first k features)."""

        name = "test_per_output_attention"

        class Config(ComponentConfig):
            pass

        def forward(self, h, mask):
            a = masked_softmax(h[..., : self.num_classes], mask, dim=1)
            return MILOutput(bag_logits=torch.einsum("bnk,bnd->bk", a, h), mask=mask, attention=a)

    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (3,)), PerOutput(PerOutput.Config(), 3, 2),
                     class_names=["purity", "tmb"], task=RegressionTask(RegressionTask.Config(targets=2)))
    bag = Bag(x=torch.randn(6, 3), y=np.array([0.4, 7.0], np.float32), bag_id="s",
              coords=torch.stack([torch.arange(6) % 3, torch.arange(6) // 3], 1) * 256, meta={"slide_id": "s"})
    (r,) = write_localization(model, [bag], str(tmp_path / "a"))
    assert list(_rows(r["csv"])[0]) == ["slide_id", "patch", "x", "y", "attention_purity", "attention_tmb"]
    assert r["label_text"] == "target_0 0.4, target_1 7" and r["prediction"].columns == ("pred_0", "pred_1")
    geo = json.loads(Path(r["geojson"]).read_text())
    assert set(geo["features"][0]["properties"]["measurements"]) == {"attention_purity", "attention_tmb"}
    (r1,) = write_localization(model, [bag], str(tmp_path / "b"), heatmap_class=1)
    assert Path(r1["png"]).read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="not among the 2 attention columns"):
        write_localization(model, [bag], str(tmp_path / "c"), heatmap_class=2)
