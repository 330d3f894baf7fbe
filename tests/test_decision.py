"""The one decision rule (milzoo.model.decision): threshold chosen on validation, else argmax; an ensemble's vote."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from milzoo.builtin.encoders import IdentityEncoder
from milzoo.builtin.poolings import MeanPooling
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.model import (
    Ensemble,
    apply_recorded_threshold,
    decide,
    fold_predictions,
    predict_classes,
    recorded_threshold,
    rule_text,
    summary_rule_text,
)
from milzoo.model.decision import ARGMAX, THRESHOLD, VOTE, model_decisions
from milzoo.model.mil import MILModel

NAMES = ["normal", "tumor"]


def _model(d=3, k=2, names=NAMES, bias=(0.0, 0.0)):
    m = MILModel(IdentityEncoder(IdentityEncoder.Config(), (d,)), MeanPooling(MeanPooling.Config(), d, k),
                 class_names=list(names))
    with torch.no_grad():
        m.pooling.classifier.weight.zero_()
        m.pooling.classifier.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return m


def test_threshold_then_argmax():
    d = decide([0.568, 0.432], 0.31, NAMES)
    assert (d.index, d.rule, d.class_name) == (1, THRESHOLD, "tumor")
    assert d.text == "predicted tumor (p(tumor)=0.432 >= threshold 0.310 chosen on validation)"
    d = decide([0.9, 0.1], 0.31, NAMES)
    assert d.index == 0 and d.text == "predicted normal (p(tumor)=0.100 < threshold 0.310 chosen on validation)"
    d = decide([0.568, 0.432], None, NAMES)
    assert (d.index, d.rule) == (0, ARGMAX) and d.text == "predicted normal (p=0.568, argmax)"
    # p1 == threshold is class 1, as the trainer's metrics count it
    assert decide([0.5, 0.5], 0.5).index == 1
    # more than two classes: the threshold does not apply
    d = decide([0.2, 0.3, 0.5], 0.1, ["a", "b", "c"])
    assert (d.index, d.rule) == (2, ARGMAX)
    # junk thresholds mean argmax
    for junk in (float("nan"), "0.3", True, None):
        assert decide([0.6, 0.4], junk).rule == ARGMAX


def test_vectorised_rule_matches_the_ensembles_and_the_metrics():
    from milzoo.metrics import bag_metrics

    rng = np.random.default_rng(0)
    p1 = rng.uniform(size=200)
    probs = np.stack([1 - p1, p1], 1)
    for t in (None, 0.2, 0.5, 0.73):
        got = predict_classes(probs, t)
        np.testing.assert_array_equal(got, fold_predictions(probs, t))
        np.testing.assert_array_equal(got, [decide(p, t).index for p in probs])
        y = rng.integers(0, 2, size=200)
        assert bag_metrics(y, probs, t)["acc"] == pytest.approx(float((got == y).mean()))


def test_rule_text():
    assert rule_text(None) == "argmax"
    assert rule_text(0.31, NAMES) == "tumor when p(tumor) >= 0.310 (threshold chosen on validation), else normal"
    m = _model()
    assert rule_text(m) == "argmax"
    m.decision_threshold = 0.25
    assert rule_text(m).startswith("tumor when p(tumor) >= 0.250")


def test_predict_carries_the_class_and_the_rule():
    m = _model(bias=(0.2, 0.0))  # p(tumor) = 0.450 for every bag
    batch = collate_bags([Bag(x=torch.randn(4, 3), y=0), Bag(x=torch.randn(2, 3), y=1)])
    out = m.predict(batch)
    assert out.extras["pred"].tolist() == [0, 0] and out.extras["decision_rule"] == "argmax"
    apply_recorded_threshold(m, {"threshold": 0.4})
    assert m.decision_threshold == 0.4
    out = m.predict(batch)
    assert out.extras["pred"].tolist() == [1, 1]
    assert out.extras["decision_rule"].startswith("tumor when p(tumor) >= 0.400")
    texts = [d.text for d in model_decisions(m, out)]
    assert texts == ["predicted tumor (p(tumor)=0.450 >= threshold 0.400 chosen on validation)"] * 2


def test_ensemble_predict_is_the_vote():
    members = [_model(bias=(0.2, 0.0)) for _ in range(3)]
    ens = Ensemble(members, thresholds=[0.4, 0.4, None])
    out = ens.predict(collate_bags([Bag(x=torch.randn(5, 3), y=1)]))
    assert torch.equal(out.extras["pred"], out.extras["vote"]) and out.extras["pred"].tolist() == [1]
    assert out.extras["decision_rule"].startswith("majority vote of 3 members")
    (d,) = model_decisions(ens, out)
    assert d.rule == VOTE and d.index == 1 and "majority vote 2 of 3 members" in d.text


def test_recorded_threshold_from_a_checkpoint(tmp_path):
    from milzoo.checkpoint import load_model, save_model

    m = _model()
    save_model(m, tmp_path / "ck", {"threshold": 0.37})
    assert recorded_threshold(tmp_path / "ck") == pytest.approx(0.37)
    assert recorded_threshold(tmp_path / "ck" / "config.json") == pytest.approx(0.37)
    assert recorded_threshold({"extra": {"threshold": 0.2}}) == 0.2
    assert recorded_threshold({"threshold": None}) is None and recorded_threshold(tmp_path / "nothing") is None
    loaded = apply_recorded_threshold(load_model(tmp_path / "ck"), tmp_path / "ck")
    assert loaded.decision_threshold == pytest.approx(0.37)
    (tmp_path / "ck" / "config.json").write_text(json.dumps({**json.loads((tmp_path / "ck" / "config.json")
                                                                         .read_text()), "threshold": None}))
    assert apply_recorded_threshold(loaded, tmp_path / "ck").decision_threshold is None


def test_a_threshold_on_a_multiclass_model_is_refused(caplog):
    m = _model(k=3, names=["a", "b", "c"], bias=(0.0, 0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="milzoo"):
        apply_recorded_threshold(m, 0.3)
    assert m.decision_threshold is None and "3-class" in caplog.text


def test_summary_text_says_the_rule():
    from milzoo.cli._app import format_summary

    base = {"name": "r", "protocol": "cv", "num_folds": 2,
            "last": {"test": {"acc": {"mean": 0.8, "std": 0.1, "values": [0.7, 0.9]}}}}
    folds = [{"selected": {"threshold": 0.31}}, {"selected": {"threshold": 0.42}}]
    assert summary_rule_text({**base, "folds": folds}) == \
        "p(class 1) >= each fold's threshold chosen on validation (0.310, 0.420)"
    assert summary_rule_text({**base, "folds": [{"selected": {"threshold": None}}]}) == "argmax"
    text = format_summary({**base, "folds": folds})
    assert text.splitlines()[-1] == ("  decision rule (acc, f1): p(class 1) >= each fold's threshold chosen on "
                                     "validation (0.310, 0.420)")
    assert format_summary({**base, "folds": []}).splitlines()[-1].endswith("decision rule (acc, f1): argmax")
    regression = {**base, "last": {"test": {"r2": {"mean": 0.5, "std": 0.1, "values": [0.4, 0.6]}}}}
    assert "decision rule" not in format_summary({**regression, "folds": []})  # no classes, no rule
