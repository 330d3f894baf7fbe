"""The WSI protocol through the core functions (re-exported by milzoo_wsi.protocol), hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

import milzoo.model.ensemble
import milzoo.metrics
import milzoo.datasets.protocols
from milzoo.errors import UserError
from milzoo_wsi import protocol
from milzoo_wsi.protocol import (
    assert_no_group_leak,
    dsmil_selection_score,
    ensemble_metrics,
    fold_predictions,
    kfold_indices,
    majority_vote,
    youden_threshold,
)


def test_the_plugin_reexports_the_core():
    # one implementation: the runner's functions are the ones users get from milzoo_wsi.protocol
    assert protocol.kfold_indices is milzoo.datasets.protocols.kfold_indices
    assert protocol.assert_no_group_leak is milzoo.datasets.protocols.assert_no_group_leak
    assert protocol.youden_threshold is milzoo.metrics.youden_threshold
    assert protocol.majority_vote is milzoo.model.ensemble.majority_vote
    assert protocol.ensemble_metrics is milzoo.model.ensemble.ensemble_metrics
    assert protocol.fold_predictions is milzoo.model.ensemble.fold_predictions


def _cohort():
    # 12 patients with 1-4 slides; a patient's slides share its label
    counts = [1, 2, 3, 4, 1, 2, 3, 4, 2, 2, 3, 3]
    groups = np.repeat([f"p{i}" for i in range(12)], counts).astype(object)
    labels = np.repeat([i % 2 for i in range(12)], counts)
    return labels, groups


def test_folds_grouped_stratified_and_seeded():
    labels, groups = _cohort()
    folds = kfold_indices(labels, groups, k=3, seed=0)
    assert len(folds) == 3
    assert_no_group_leak(folds, groups)
    val = np.concatenate([va for _, va in folds])
    assert sorted(val.tolist()) == list(range(len(labels)))  # every slide validated exactly once
    for tr, va in folds:
        assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
        assert not set(groups[tr]) & set(groups[va])  # no patient on both sides
        assert set(labels[va].tolist()) == {0, 1}  # stratified: both classes in every fold
    same = kfold_indices(labels, groups, k=3, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, same))
    others = [kfold_indices(labels, groups, k=3, seed=s) for s in range(1, 6)]
    assert any(not np.array_equal(o[0][1], folds[0][1]) for o in others)


def test_too_few_patients_is_a_user_error():
    labels, groups = _cohort()  # 29 slides but 12 patients
    with pytest.raises(UserError, match="only 12 groups"):
        kfold_indices(labels, groups, k=13, seed=0)


def test_grouped_folds_when_no_class_has_k_bags():
    # 4 slides per class, 8 patients, k=5: StratifiedGroupKFold refuses; folds are grouped unstratified
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    groups = np.array(["a", "a", "b", "c", "d", "e", "f", "g"], dtype=object)
    folds = kfold_indices(labels, groups, k=5, seed=0)
    assert len(folds) == 5
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(8))
    assert all(not set(groups[tr]) & set(groups[va]) for tr, va in folds)


def test_folds_without_groups_are_plain_stratified():
    labels = np.array([0] * 10 + [1] * 5)
    folds = kfold_indices(labels, None, k=5, seed=1)
    assert [int(labels[va].sum()) for _, va in folds] == [1] * 5
    # one slide per patient is the same as no groups
    ids = np.array([f"s{i}" for i in range(15)], dtype=object)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, kfold_indices(labels, ids, k=5, seed=1)))


def test_group_leak_detected():
    groups = np.array(["a", "a", "b", "c"], dtype=object)
    assert_no_group_leak([(np.array([0, 1]), np.array([2, 3])), (np.array([2, 3]), np.array([0, 1]))], groups)
    with pytest.raises(AssertionError, match=r"group leak .*\['a'\]"):
        assert_no_group_leak([(np.array([0, 1]), np.array([2, 3])), (np.array([0, 2]), np.array([1, 3]))], groups)


def test_youden_threshold_by_hand():
    # ROC points (threshold: TPR, FPR): .9: .5,0  .6: .5,1/3  .5: 1,1/3  .3: 1,2/3  -> J max 2/3 at 0.5
    assert youden_threshold([0, 0, 0, 1, 1], [0.2, 0.3, 0.6, 0.5, 0.9]) == pytest.approx(0.5)
    # tie: J = 0.5 at 0.8 (TPR .5, FPR 0) and at 0.35 (TPR 1, FPR .5) -> the higher threshold
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    # one class only -> 0.5
    assert youden_threshold([1, 1], [0.2, 0.9]) == 0.5
    # ties among the probabilities: J at 0.4 is 1 - 1/2 (both positives, one of two negatives)
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.7]) == pytest.approx(0.7)
    assert youden_threshold([0, 0, 1, 1, 1], [0.1, 0.4, 0.4, 0.7, 0.4]) == pytest.approx(0.4)


def test_fold_predictions_threshold_or_argmax():
    p = np.array([[0.7, 0.3], [0.45, 0.55], [0.2, 0.8]])
    assert fold_predictions(p, 0.3).tolist() == [1, 1, 1]  # p1 >= t, boundary included
    assert fold_predictions(p, 0.6).tolist() == [0, 0, 1]
    assert fold_predictions(p, None).tolist() == [0, 1, 1]
    p3 = np.array([[0.2, 0.5, 0.3]])
    assert fold_predictions(p3, 0.9).tolist() == [1]  # thresholds apply to binary tasks only


def test_majority_vote_and_ties():
    mean = np.full((3, 2), 0.5)
    assert majority_vote(np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0]]), mean).tolist() == [1, 1, 0]
    # binary 2-2 tie: the class with the higher mean probability wins (not always the negative class)
    assert majority_vote(np.array([[1], [1], [0], [0]]), np.array([[0.4, 0.6]])).tolist() == [1]
    assert majority_vote(np.array([[1], [1], [0], [0]]), np.array([[0.7, 0.3]])).tolist() == [0]
    # 2-2-1: only the tied classes 1 and 2 compete; class 0 has the highest mean but only one vote
    assert majority_vote(np.array([[2], [1], [2], [1], [0]]), np.array([[0.5, 0.2, 0.3]])).tolist() == [2]
    # three-way 1-1-1 tie
    assert majority_vote(np.array([[0], [1], [2]]), np.array([[0.2, 0.5, 0.3]])).tolist() == [1]
    # a clear majority ignores the probabilities
    assert majority_vote(np.array([[0], [0], [1]]), np.array([[0.1, 0.9]])).tolist() == [0]


def _two(p):
    p = np.asarray(p, dtype=np.float64)
    return np.stack([1.0 - p, p], axis=1)


A = [0.1, 0.6, 0.7, 0.4, 0.9]  # t=.5  -> 0 1 1 0 1
B = [0.2, 0.3, 0.5, 0.6, 0.35]  # t=.3  -> 0 1 1 1 1
C = [0.7, 0.85, 0.2, 0.8, 0.6]  # t=.65 -> 1 1 0 1 0
Y = np.array([0, 0, 1, 1, 1])


def test_ensemble_metrics_by_hand():
    m = ensemble_metrics([_two(A), _two(B), _two(C)], [0.5, 0.3, 0.65], Y)
    # vote 0 1 1 1 1 -> acc 4/5; TP 3 FP 1 FN 0 -> F1 6/7
    assert m["acc"] == pytest.approx(0.8) and m["f1"] == pytest.approx(6 / 7)
    # mean p1: .333 .583 .467 .6 .617: negatives .333 < all 3 positives, .583 < 2 of them -> AUC 5/6
    assert m["auc"] == pytest.approx(5 / 6) and m["n_models"] == 3


def test_ensemble_ties_go_to_the_highest_mean_probability():
    # two models, slide 3 votes 0 (A: .4 < .5) vs 1 (B2: .9 >= .3): mean p1 = .65 -> tumour
    B2 = [0.2, 0.3, 0.5, 0.9, 0.35]
    m = ensemble_metrics([_two(A), _two(B2)], [0.5, 0.3], Y)
    # vote 0 1 1 1 1: acc 4/5, F1 6/7 (the lowest-class rule would give 0 1 1 0 1: acc 3/5, F1 2/3)
    assert m["acc"] == pytest.approx(0.8) and m["f1"] == pytest.approx(6 / 7)
    # mean p1 .15 .45 .6 .65 .625: every positive above every negative
    assert m["auc"] == pytest.approx(1.0)
    # same tie with B3[3] = .35 (>= .3 -> 1): mean p1 = .375 -> normal; vote 0 1 1 0 1: acc 3/5, F1 2/3
    B3 = [0.2, 0.3, 0.5, 0.35, 0.35]
    m = ensemble_metrics([_two(A), _two(B3)], [0.5, 0.3], Y)
    assert m["acc"] == pytest.approx(0.6) and m["f1"] == pytest.approx(2 / 3)


def test_ensemble_metrics_multiclass_argmax():
    p1 = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    p2 = np.array([[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
    m = ensemble_metrics([p1, p2], [None, None], np.array([0, 1, 2]))
    # votes: s0 0,0 -> 0; s1 1,2 -> tie, mean (.2 .55 .25) -> 1; s2 2,2 -> 2: all right
    assert m["acc"] == 1.0 and m["f1"] == 1.0 and m["auc"] == 1.0
    assert math.isnan(ensemble_metrics([_two(A)], [0.5], np.ones(5, dtype=int))["auc"])


def test_dsmil_selection_score_by_hand():
    # acc at 0.5: preds 0 0 0 1 -> 3/4; AUC of class 1 = 3/4 and of class 0 the same -> (0.75*2 + 0.75) / 2
    p = _two([0.1, 0.4, 0.35, 0.8])
    assert dsmil_selection_score([0, 0, 1, 1], p, 0.5) == pytest.approx(1.125)
    # with the Youden threshold 0.8 (chosen on the same data, as DSMIL does): acc 3/4 again
    assert dsmil_selection_score([0, 0, 1, 1], p, 0.8) == pytest.approx(1.125)
    # argmax without a threshold; a class absent from y_true adds no AUC
    assert dsmil_selection_score([1, 1], _two([0.2, 0.9]), None) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        dsmil_selection_score([0, 1], [0.2, 0.9])
