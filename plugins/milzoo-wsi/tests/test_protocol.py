"""Protocol helpers with hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from milzoo.errors import DataError
from milzoo_wsi.protocol import (
    assert_no_group_leak,
    dsmil_selection_score,
    ensemble_metrics,
    ensemble_predict,
    majority_vote,
    patient_grouped_folds,
    youden_threshold,
)


def _cohort():
    # 12 patients with 1-4 slides; a patient's slides share its label
    counts = [1, 2, 3, 4, 1, 2, 3, 4, 2, 2, 3, 3]
    groups = np.repeat([f"p{i}" for i in range(12)], counts)
    labels = np.repeat([i % 2 for i in range(12)], counts)
    return labels, groups


def test_folds_grouped_stratified_and_seeded():
    labels, groups = _cohort()
    folds = patient_grouped_folds(labels, groups, k=3, seed=0)
    assert len(folds) == 3
    assert_no_group_leak(folds, groups)
    val = np.concatenate([va for _, va in folds])
    assert sorted(val.tolist()) == list(range(len(labels)))  # every slide validated exactly once
    for tr, va in folds:
        assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
        assert set(labels[va].tolist()) == {0, 1}  # stratified: both classes in every fold
    same = patient_grouped_folds(labels, groups, k=3, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, same))
    others = [patient_grouped_folds(labels, groups, k=3, seed=s) for s in range(1, 6)]
    assert any(not np.array_equal(o[0][1], folds[0][1]) for o in others)
    with pytest.raises(DataError, match="at least 13 patients"):
        patient_grouped_folds(labels, groups, k=13, seed=0)


def test_folds_without_groups_are_plain_stratified():
    labels = np.array([0] * 10 + [1] * 5)
    folds = patient_grouped_folds(labels, None, k=5, seed=1)
    assert [int(labels[va].sum()) for _, va in folds] == [1] * 5


def test_group_leak_detected():
    groups = np.array(["a", "a", "b", "c"])
    assert_no_group_leak([([0, 1], [2, 3]), ([2, 3], [0, 1])], groups)
    with pytest.raises(AssertionError, match="fold 1: 1 patients .*'a'"):
        assert_no_group_leak([([0, 1], [2, 3]), ([0, 2], [1, 3])], groups)
    with pytest.raises(AssertionError, match="in both train and validation"):
        assert_no_group_leak([([0, 1, 2], [2, 3])], groups)


def test_youden_threshold_by_hand():
    # ROC points (threshold: TPR, FPR): .9: .5,0  .6: .5,1/3  .5: 1,1/3  .3: 1,2/3  -> J max 2/3 at 0.5
    assert youden_threshold([0, 0, 0, 1, 1], [0.2, 0.3, 0.6, 0.5, 0.9]) == pytest.approx(0.5)
    # tie: J = 0.5 at 0.8 (TPR .5, FPR 0) and at 0.35 (TPR 1, FPR .5) -> the higher threshold
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    # [n, 2] probabilities give the same; one class only -> 0.5
    p2 = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert youden_threshold([0, 0, 1, 1], p2) == pytest.approx(0.8)
    assert youden_threshold([1, 1], [0.2, 0.9]) == 0.5


def test_youden_agrees_with_core_metric():
    from milzoo.metrics import youden_threshold as core

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 30)
        p = np.clip(0.3 * y + rng.uniform(0, 0.7, 30), 0, 1).round(2)  # ties included
        assert youden_threshold(y, p) == pytest.approx(core(y, p))


def test_majority_vote_and_ties():
    preds = [[1, 0, 1], [1, 1, 0], [0, 1, 0]]
    assert majority_vote(preds).tolist() == [1, 1, 0]
    assert majority_vote([[1], [1], [0], [0]]).tolist() == [0]  # binary tie -> negative
    assert majority_vote([[2], [1], [2], [1], [0]]).tolist() == [1]  # 2-2-1 tie -> lowest class
    assert majority_vote([[3, 3]], num_classes=5).tolist() == [3, 3]
    with pytest.raises(ValueError):
        majority_vote([[-1]])


A = [0.1, 0.6, 0.7, 0.4, 0.9]  # t=.5  -> 0 1 1 0 1
B = [0.2, 0.3, 0.5, 0.6, 0.35]  # t=.3  -> 0 1 1 1 1
C = [0.7, 0.85, 0.2, 0.8, 0.6]  # t=.65 -> 1 1 0 1 0
Y = [0, 0, 1, 1, 1]


def test_ensemble_metrics_by_hand():
    m = ensemble_metrics([A, B, C], [0.5, 0.3, 0.65], Y)
    # vote 0 1 1 1 1 -> acc 4/5; TP 3 FP 1 FN 0 -> F1 6/7
    assert m["acc"] == pytest.approx(0.8) and m["f1"] == pytest.approx(6 / 7)
    # mean p1: .333 .583 .467 .6 .617: negatives .333 < all 3 positives, .583 < 2 of them -> AUC 5/6
    assert m["auc"] == pytest.approx(5 / 6) and m["n_models"] == 3
    vote, mean_p = ensemble_predict([A, B, C], [0.5, 0.3, 0.65])
    assert vote.tolist() == [0, 1, 1, 1, 1]
    np.testing.assert_allclose(mean_p[:, 1], np.mean([A, B, C], axis=0))


def test_ensemble_metrics_with_a_tie():
    # two models: sample 3 votes 0 vs 1 -> tie -> 0; vote 0 1 1 0 1: acc 3/5, TP 2 FP 1 FN 1 -> F1 2/3
    m = ensemble_metrics([np.array(A), np.array(B)], [0.5, 0.3], Y)
    assert m["acc"] == pytest.approx(0.6) and m["f1"] == pytest.approx(2 / 3)


def test_ensemble_metrics_multiclass_argmax():
    p1 = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    p2 = np.array([[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
    m = ensemble_metrics([p1, p2], None, [0, 1, 2])
    # votes: s0 0,0 -> 0; s1 1,2 -> tie -> 1; s2 2,2 -> 2: all right; mean probs rank each class first
    assert m["acc"] == 1.0 and m["f1"] == 1.0 and m["auc"] == 1.0
    with pytest.raises(ValueError, match="binary"):
        ensemble_metrics([p1], [0.5], [0, 1, 2])
    assert math.isnan(ensemble_metrics([A], [0.5], [1, 1, 1, 1, 1])["auc"])


def test_dsmil_selection_score_by_hand():
    # acc at 0.5: preds 0 0 0 1 -> 3/4; AUC of class 1 = 3/4 and of class 0 the same -> (0.75*2 + 0.75) / 2
    assert dsmil_selection_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5) == pytest.approx(1.125)
