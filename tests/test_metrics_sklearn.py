"""milzoo's numpy metrics and stratified folds equal scikit-learn's (which milzoo no longer imports for them)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from milzoo.metrics import bag_metrics, binary_auc
from milzoo.datasets.protocols import kfold_indices, stratified_kfold


@pytest.mark.parametrize("seed", range(12))
def test_stratified_folds_are_sklearns(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    n_classes = int(rng.integers(2, 5))
    labels = rng.integers(0, n_classes, size=int(rng.integers(k * n_classes * 2, 150)))
    labels[: k * n_classes] = np.repeat(np.arange(n_classes), k)  # every class has >= k bags
    rng.shuffle(labels)
    if seed % 3 == 0:  # labels need not be 0..k-1 nor sorted by first appearance
        labels = np.array([7, 3, 5, 11])[labels]
    X = np.zeros((len(labels), 1))
    ours = stratified_kfold(labels, k, seed)
    theirs = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, labels))
    assert len(ours) == len(theirs) == k
    for (tr, te), (tr2, te2) in zip(ours, theirs):
        assert np.array_equal(tr, tr2) and np.array_equal(te, te2)


def test_kfold_indices_uses_them():
    labels = np.array([0, 1] * 23 + [1])
    folds = kfold_indices(labels, None, 10, 0)
    theirs = StratifiedKFold(n_splits=10, shuffle=True, random_state=0).split(np.zeros((47, 1)), labels)
    for (tr, te), (tr2, te2) in zip(folds, theirs):
        assert np.array_equal(tr, np.sort(tr2)) and np.array_equal(te, np.sort(te2))


@pytest.mark.parametrize("seed", range(20))
def test_binary_metrics_are_sklearns(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y = rng.integers(0, 2, size=n)
    y[0], y[-1] = 0, 1
    p1 = rng.random(n)
    if seed % 2:  # ties, as a model that saturates gives
        p1 = np.round(p1 * 4) / 4
    probs = np.stack([1 - p1, p1], 1)
    for threshold in (None, 0.3):
        pred = (p1 >= threshold).astype(int) if threshold is not None else probs.argmax(1)
        m = bag_metrics(y, probs, threshold)
        assert m["acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-15)
        assert m["f1"] == pytest.approx(f1_score(y, pred, pos_label=1, zero_division=0), abs=1e-15)
        assert m["auc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
    assert binary_auc(y == 1, p1) == pytest.approx(roc_auc_score(y, p1), abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_multiclass_metrics_are_sklearns(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 6))
    n = int(rng.integers(k, 80))
    y = rng.integers(0, k, size=n)
    y[:k] = np.arange(k)
    logits = rng.normal(size=(n, k)) * (3 if seed % 2 else 1)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = bag_metrics(y, probs)
    pred = probs.argmax(1)
    labels = list(range(k))
    assert m["acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-15)
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=labels, zero_division=0), abs=1e-15)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels),
                                     abs=1e-12)


def test_f1_zero_division_and_missing_classes_are_sklearns():
    y = np.array([0, 0, 0, 2])
    probs = np.eye(3)[[0, 0, 0, 0]] * 0.8 + 0.2 / 3
    m = bag_metrics(y, probs)  # class 1 neither true nor predicted, class 2 never predicted
    assert m["f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro", labels=[0, 1, 2],
                                             zero_division=0), abs=1e-15)
    assert math.isnan(m["auc"])  # not every class present: undefined, as before
    y = np.array([0, 0, 1])
    m = bag_metrics(y, np.array([[0.9, 0.1]] * 3))  # nothing predicted positive
    assert m["f1"] == 0.0 == f1_score(y, [0, 0, 0], pos_label=1, zero_division=0)
