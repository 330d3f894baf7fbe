"""Metrics and the ensemble vote, on hand-computed cases."""

import math

import numpy as np

from milzoo.model.ensemble import ensemble_metrics, majority_vote
from milzoo.metrics import bag_metrics, instance_accuracy, youden_threshold


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    m = bag_metrics(y, np.stack([1 - p1, p1], 1))
    # argmax predictions 0,1,0,1: 2 of 4 right; TP=1 FP=1 FN=1 -> F1 0.5; AUC: 3 of 4 pairs ordered
    assert m["acc"] == 0.5 and m["f1"] == 0.5 and m["auc"] == 0.75
    m = bag_metrics(y, np.stack([1 - p1, p1], 1), threshold=0.35)
    assert m["acc"] == 0.75  # predictions 0,1,1,1


def test_multiclass_and_missing_class():
    y = np.array([0, 1, 2])
    probs = np.eye(3)[[0, 1, 1]] * 0.8 + 0.2 / 3
    m = bag_metrics(y, probs)
    assert math.isclose(m["acc"], 2 / 3) and 0 < m["f1"] < 1 and not math.isnan(m["auc"])
    assert math.isnan(bag_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]))["auc"])


def test_instance_accuracy_ignores_unknown():
    assert instance_accuracy(np.array([1, -1, 0]), np.array([[0, 1], [1, 0], [0, 1]])) == 0.5


def test_youden_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    # thresholds 0.7 (tpr 2/3, fpr 0) and 0.5 (tpr 1, fpr 1/3) tie on J = 2/3; sklearn's roc order picks 0.7
    assert youden_threshold(y, p) in (0.7, 0.5)
    assert youden_threshold(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5


def test_vote_with_tie_broken_by_mean_probability():
    preds = np.array([[1, 0, 1], [1, 1, 0]])  # bag 1 and 2: one vote each
    mean = np.array([[0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert majority_vote(preds, mean).tolist() == [1, 0, 1]


def test_ensemble_metrics_vote_and_mean_auc():
    y = np.array([0, 1, 1, 0])
    m1 = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m2 = np.array([[0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.7, 0.3]])
    m3 = np.array([[0.6, 0.4], [0.3, 0.7], [0.3, 0.7], [0.6, 0.4]])
    out = ensemble_metrics([m1, m2, m3], [0.5, 0.5, 0.5], y)
    # votes: bag0 0,0,0 -> 0; bag1 1,1,1 -> 1; bag2 0,1,1 -> 1; bag3 1,0,0 -> 0  => all right
    assert out["acc"] == 1.0 and out["f1"] == 1.0 and out["auc"] == 1.0 and out["n_models"] == 3
