"""Regression and survival with the models of issue 26: CLAM-SB, CLAM-MB, Transformer-MIL, ILRA-MIL, RRT-MIL, WiKG.

Each model trains one epoch of each task (regression with ``mse``; survival with the discrete head and
``surv_nll``, and with the Cox head and ``cox``) on synthetic slides with patient outcomes, through
``milzoo.run``, the ``slides`` source and the predictions files.  CLAM's own loss (``clam``: the instance
clustering, which needs each bag's class) is refused for these tasks with a message that names the task's loss;
the CLAM network trains with the task's loss instead (docs/tasks.md, "Models and tasks").
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import tomli_w
from click.testing import CliRunner

import milzoo
from milzoo import registry
from milzoo.cli import cli
from milzoo.errors import ComponentError

pytest.importorskip("milzoo_wsi")

#: the models, with options that make them tiny (8-d features, bags of about 16 patches)
MODELS = {
    "clam_sb": {"k_sample": 2},
    "clam_mb": {"k_sample": 2},
    "vit_mil": {"dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16},
    "ilra": {"hidden_feat": 16, "num_heads": 2},
    "rrt": {"n_heads": 2, "crmsa_heads": 2},
    "wikg": {"dim_hidden": 16},
}
#: task table, its loss, the slides' target, batch size (cox compares the bags of a step: at least 8)
TASKS = {
    "regression": ({"name": "regression"}, "mse", "regression", 2),
    "survival": ({"name": "survival", "head": "discrete", "bins": 2}, "surv_nll", "survival", 2),
    "survival_cox": ({"name": "survival", "head": "cox"}, "cox", "survival", 8),
}


def _survival_installed() -> bool:
    try:
        registry.get_component("task", "survival")
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.fixture(scope="module")
def outcome_slides(tmp_path_factory):
    from milzoo_wsi.synthetic import make_synthetic_slides

    return make_synthetic_slides(str(tmp_path_factory.mktemp("model-tasks") / "s"), n_slides=32, mean_patches=16,
                                 dim=8, seed=5, signal=3.0, slides_per_patient=2, outcomes=True,
                                 patient_column="case_id")


def _recipe(data: dict, model: str, task: str, loss: str | None = None) -> dict:
    table, default_loss, target, batch = TASKS[task]
    return {
        "name": f"{model}_{task}", "seed": 0,
        "data": {"name": "slides", "features": data["features"], "table": data["table"], "target": target,
                 "test_fraction": 0.25, "load_workers": 1},
        "task": table,
        "encoder": {"name": "identity"},
        "pooling": {"name": model, **MODELS[model]},
        "loss": [{"name": loss or default_loss}],
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": batch, "threads": 1, "progress": False},
        "protocol": {"kind": "holdout"},
    }


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("model", list(MODELS))
def test_each_model_trains_one_epoch_of_each_task(model, task, outcome_slides, tmp_path):
    if task.startswith("survival") and not _survival_installed():
        pytest.skip("the survival task is not installed (pip install milzoo-survival)")
    summary = milzoo.run(_recipe(outcome_slides, model, task), out=tmp_path / "run", progress=False)
    test = summary["last"]["test"]
    assert math.isfinite(test["loss"]["mean"]), test["loss"]
    rows = _rows(tmp_path / "run" / "fold-00" / "last" / "predictions-test.csv")
    assert len(rows) == 8  # 25% of the 16 patients, 2 slides each
    if task == "regression":
        assert list(rows[0]) == ["bag_id", "target", "pred"] and "r2" in test
        assert all(math.isfinite(float(r["pred"])) for r in rows)
    else:
        bins = ["S_bin0", "S_bin1"] if task == "survival" else []
        assert list(rows[0]) == ["bag_id", "time", "event", "risk", *bins] and "c_index" in test
        assert all(math.isfinite(float(r["risk"])) for r in rows)
        assert len({r["risk"] for r in rows}) > 1  # the risk depends on the slide


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("model", ["clam_sb", "clam_mb"])
def test_the_clam_loss_is_refused_for_a_task_without_classes(model, task, outcome_slides, tmp_path):
    if task.startswith("survival") and not _survival_installed():
        pytest.skip("the survival task is not installed (pip install milzoo-survival)")
    own = TASKS[task][1]
    with pytest.raises(ComponentError, match=rf"the 'clam' loss trains class labels, but the recipe's task is "
                                             rf"'{TASKS[task][0]['name']}'.*its default is '{own}'"):
        milzoo.run(_recipe(outcome_slides, model, task, loss="clam"), out=tmp_path / "run", progress=False)
    # from the command line: one paragraph, exit code 2, no traceback
    path = tmp_path / "recipe.toml"
    path.write_text(tomli_w.dumps(_recipe(outcome_slides, model, task, loss="clam")))
    res = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "cli")])
    assert res.exit_code == 2, res.output
    assert "the 'clam' loss trains class labels" in res.output and "Traceback" not in res.output


def test_without_a_loss_clam_trains_with_the_tasks_loss_and_without_clustering(outcome_slides, tmp_path):
    """Leaving [[loss]] out gives the task's default loss (mse), not CLAM's: no clustering part is logged."""
    recipe = _recipe(outcome_slides, "clam_sb", "regression")
    del recipe["loss"]
    summary = milzoo.run(recipe, out=tmp_path / "run", progress=False)
    assert math.isfinite(summary["last"]["test"]["r2"]["mean"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 1 and math.isfinite(train[0]["loss"])
    assert not {"clam_bag", "clam_inst"} & set(train[0])  # the clam loss logs these parts; mse has none
