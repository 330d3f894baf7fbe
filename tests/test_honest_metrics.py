"""No accuracy without its caveats: undefined AUC is said, summaries stay standard JSON (issue 14)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

import milzoo
from milzoo.cli import format_summary
from milzoo.errors import DataError, UserError
from milzoo.metrics import bag_metrics, json_safe


def _strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path} holds the non-JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _csv(path, labels_per_bag, n_feat=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for b, y in enumerate(labels_per_bag):
        for _ in range(3):
            rows.append([y, b + 1, *(rng.normal(size=n_feat) + 2 * y)])
    np.savetxt(path, np.array(rows), delimiter=",", fmt="%.6g")
    return str(path)


def test_nan_predictions_are_a_clear_error_not_a_sklearn_traceback():
    probs = np.array([[0.2, 0.8], [np.nan, np.nan], [0.6, 0.4]])
    with pytest.raises(DataError, match="predictions of 1 of 3 bags are NaN"):
        bag_metrics(np.array([1, 0, 0]), probs)


def test_json_safe():
    out = json_safe({"a": [1.0, math.nan], "b": {"c": math.inf}, "d": np.float32(2.5), "e": "x"})
    assert out == {"a": [1.0, None], "b": {"c": None}, "d": 2.5, "e": "x"}
    json.dumps(out, allow_nan=False)


def test_more_folds_than_the_smaller_class_warns_and_counts_undefined_auc(tmp_path, recipe_factory, caplog):
    path = _csv(tmp_path / "d.csv", [0] * 9 + [1] * 3)
    recipe = recipe_factory(data={"name": "classic", "path": path}, protocol={"kind": "cv", "folds": 6},
                            train={"epochs": 1})
    with caplog.at_level(logging.WARNING, logger="milzoo"):
        summary = milzoo.run(recipe, out=tmp_path / "run")
    assert any("class 1 has only 3 bag(s)" in r.getMessage() for r in caplog.records)
    stored = _strict_json(tmp_path / "run" / "summary.json")
    auc = stored["last"]["test"]["auc"]
    assert auc["undefined_in"] >= 3 and None in auc["values"]
    for fold in sorted((tmp_path / "run").glob("fold-*")):
        _strict_json(fold / "result.json")
    assert "undefined in" in format_summary(summary)


def test_leave_one_out_warns(tmp_path, recipe_factory, caplog):
    path = _csv(tmp_path / "d.csv", [0, 1, 0, 1])
    recipe = recipe_factory(data={"name": "classic", "path": path}, protocol={"kind": "cv", "folds": 4},
                            train={"epochs": 1})
    with caplog.at_level(logging.WARNING, logger="milzoo"):
        summary = milzoo.run(recipe, out=tmp_path / "run")
    assert any("leave-one-out" in r.getMessage() for r in caplog.records)
    assert summary["last"]["test"]["auc"]["mean"] is None
    assert "auc undefined" in format_summary(summary)


def test_a_training_fold_of_one_class_is_refused(tmp_path, recipe_factory):
    path = _csv(tmp_path / "d.csv", [0] * 6 + [1])
    recipe = recipe_factory(data={"name": "classic", "path": path}, protocol={"kind": "cv", "folds": 2})
    with pytest.raises(UserError, match="training bags of fold .* all have the class 'negative'"):
        milzoo.run(recipe, out=tmp_path / "run")


def test_format_summary_says_when_auc_is_undefined():
    summary = {"name": "x", "protocol": "holdout", "num_folds": 1, "last": {"test": {
        "acc": {"mean": 1.0, "std": 0.0, "values": [1.0]},
        "auc": {"mean": None, "std": None, "values": [None], "undefined_in": 1}}}}
    text = format_summary(summary)
    assert "acc 1.000" in text and "auc undefined" in text


def test_best_epoch_on_test_never_picks_a_validation_split():
    """Image recipes evaluate `val_instances` before `test_instances`: the optimistic 'best epoch on test' must
    be chosen on the test split, not on the first split that is not called exactly `val`."""
    from milzoo.train._evaluate import summary

    history = [{"epoch": e, "splits": {"val_instances": {"acc": v}, "test_instances": {"acc": t}}}
               for e, (v, t) in enumerate([(0.9, 0.1), (0.1, 0.8), (0.2, 0.2)])]
    res = summary(0, history, None, "acc", ["val_instances", "test_instances"], False)
    assert res["best_epoch_on_test"]["split"] == "test_instances"
    assert res["best_epoch_on_test"]["epoch"] == 1
    only_val = summary(0, history, None, "acc", ["val", "val_instances"], False)
    assert "best_epoch_on_test" not in only_val
