"""Pure helpers of the WSI protocol (methods.md section 7.8): folds, thresholds, votes.

CAMELYON16: 5-fold CV on the training slides; per fold the best model and its
Youden threshold; the test slides are predicted by the 5 models and the
thresholded predictions voted.  [choice] The vote gives ACC/F1, the mean of
the 5 models' probabilities gives AUC.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from milzoo.errors import DataError


# --------------------------------------------------------------------------- folds


def patient_grouped_folds(labels, groups, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train_idx, val_idx) pairs, stratified by label and grouped by patient.

    scikit-learn's ``StratifiedGroupKFold(shuffle=True, random_state=seed)``:
    every slide of a patient falls in the same validation fold, and each
    validation fold keeps the class ratio as well as the grouping allows.
    ``groups=None`` treats every slide as its own patient.  Indices are sorted.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    n = len(labels)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} labels")
    if k < 2:
        raise ValueError("k must be at least 2")
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise DataError(f"{k}-fold cross-validation needs at least {k} patients; this set has {n_groups}.")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        folds = [(np.sort(tr), np.sort(va)) for tr, va in cv.split(np.zeros(n), labels, groups)]
    assert_no_group_leak(folds, groups)
    return folds


def assert_no_group_leak(folds: Sequence[tuple[Sequence[int], Sequence[int]]], groups) -> None:
    """Raise ``AssertionError`` when a fold shares a patient (or a slide) between train and validation."""
    groups = np.asarray(groups)
    for f, (tr, va) in enumerate(folds):
        tr, va = np.asarray(tr, dtype=np.int64), np.asarray(va, dtype=np.int64)
        both = np.intersect1d(tr, va)
        if both.size:
            raise AssertionError(f"fold {f}: indices {both[:10].tolist()} are in both train and validation")
        leak = set(groups[tr].tolist()) & set(groups[va].tolist())
        if leak:
            raise AssertionError(
                f"fold {f}: {len(leak)} patients have slides in both train and validation "
                f"(e.g. {sorted(map(str, leak))[:5]})"
            )


# --------------------------------------------------------------------------- thresholds


def _positive_prob(prob) -> np.ndarray:
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim == 2:
        if p.shape[1] != 2:
            raise ValueError("a threshold needs binary probabilities: [n] or [n, 2]")
        p = p[:, 1]
    return p


def youden_threshold(y_true, prob) -> float:
    """The threshold maximising Youden's J = TPR - FPR, where ``prob >= t`` predicts positive.

    ``prob`` is the positive-class probability ``[n]`` (or ``[n, 2]``).  The
    candidates are the observed probabilities; among thresholds with the same J
    the **highest** wins (DSMIL's argmin of FPR-TPR over the ROC in decreasing
    threshold order).  With a single class present, or when no threshold beats
    J = 0 (the best is "predict nothing positive"), 0.5 is returned.
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true).astype(int)
    p = _positive_prob(prob)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    i = int(np.argmax(tpr - fpr))
    t = float(thr[i])
    return min(max(t, 0.0), 1.0) if math.isfinite(t) else 0.5


# --------------------------------------------------------------------------- vote


def majority_vote(pred_matrix, num_classes: int | None = None) -> np.ndarray:
    """The most frequent class per sample of ``pred_matrix`` ``[n_models, n_samples]``.

    Tie rule: the **lowest class index** wins (like ``scipy.stats.mode``, which
    DSMIL's standalone-test vote uses); for a binary task a tie (possible with
    an even number of models) therefore predicts negative (class 0).
    """
    m = np.asarray(pred_matrix, dtype=np.int64)
    if m.ndim == 1:
        m = m[:, None]
    if m.ndim != 2 or m.shape[0] == 0:
        raise ValueError("pred_matrix must be [n_models, n_samples] with at least one model")
    if (m < 0).any():
        raise ValueError("predictions must be class indices >= 0")
    k = int(num_classes) if num_classes is not None else int(m.max()) + 1
    counts = np.stack([(m == c).sum(axis=0) for c in range(k)])  # [k, n_samples]
    return counts.argmax(axis=0)  # argmax returns the first (lowest) class among ties


def _as_class_probs(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 1:
        return np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ValueError("probabilities must be [n] (positive class) or [n, k]")
    return p


def model_predictions(probs, threshold: float | None) -> np.ndarray:
    """One model's class predictions: ``p1 >= threshold`` (binary) or the argmax."""
    p = _as_class_probs(probs)
    if threshold is None:
        return p.argmax(axis=1)
    if p.shape[1] != 2:
        raise ValueError("a threshold only applies to binary tasks; give None for multi-class models")
    return (p[:, 1] >= threshold).astype(np.int64)


def ensemble_predict(probs_per_model, thresholds_per_model=None) -> tuple[np.ndarray, np.ndarray]:
    """``(vote [n], mean probability [n, k])`` of several models on the same samples."""
    probs = [_as_class_probs(p) for p in probs_per_model]
    if not probs:
        raise ValueError("no models")
    shapes = {p.shape for p in probs}
    if len(shapes) != 1:
        raise ValueError(f"models disagree on the probability shape: {sorted(shapes)}")
    if thresholds_per_model is None:
        thresholds_per_model = [None] * len(probs)
    if len(thresholds_per_model) != len(probs):
        raise ValueError(f"{len(thresholds_per_model)} thresholds for {len(probs)} models")
    preds = np.stack([model_predictions(p, t) for p, t in zip(probs, thresholds_per_model)])
    k = probs[0].shape[1]
    return majority_vote(preds, num_classes=k), np.mean(np.stack(probs), axis=0)


def ensemble_metrics(probs_per_model, thresholds_per_model, y_true) -> dict[str, float]:
    """ACC and F1 of the majority vote of per-model thresholded predictions; AUC of the mean probability.

    ``probs_per_model``: one ``[n]`` (positive class) or ``[n, k]`` array per
    model; ``thresholds_per_model``: one float (binary, ``p1 >= t``) or None
    (argmax) per model, or None for all-argmax.  Binary: F1 of class 1 and the
    AUC of the mean ``p1``; multi-class: macro F1 and macro one-vs-rest AUC.
    AUC is NaN when a class is absent from ``y_true``.
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y = np.asarray(y_true).astype(int)
    probs_per_model = list(probs_per_model)
    vote, mean_p = ensemble_predict(probs_per_model, thresholds_per_model)
    if len(y) != len(vote):
        raise ValueError(f"{len(y)} labels for {len(vote)} predictions")
    k = mean_p.shape[1]
    out = {"acc": float(accuracy_score(y, vote)), "n_models": float(len(probs_per_model))}
    present = np.unique(y)
    if k == 2:
        out["f1"] = float(f1_score(y, vote, pos_label=1, zero_division=0))
        out["auc"] = float(roc_auc_score(y, mean_p[:, 1])) if len(present) == 2 else math.nan
    else:
        out["f1"] = float(f1_score(y, vote, average="macro", labels=list(range(k)), zero_division=0))
        if len(present) == k:
            p = mean_p / mean_p.sum(1, keepdims=True).clip(1e-12)
            out["auc"] = float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))
        else:
            out["auc"] = math.nan
    return out


def dsmil_selection_score(y_true, probs, threshold: float | None = None) -> float:
    """DSMIL's per-fold model-selection score ``(sum_c AUC_c + accuracy) / 2``.

    The per-class one-vs-rest AUCs are *summed* (two AUCs for k=2, as the
    official code does; methods.md 2.4 and 7.8); accuracy uses ``threshold``
    on ``p1`` for binary tasks, else the argmax.  A class absent from
    ``y_true`` contributes 0.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(int)
    p = _as_class_probs(probs)
    acc = float((model_predictions(p, threshold) == y).mean())
    aucs = 0.0
    for c in range(p.shape[1]):
        yc = (y == c).astype(int)
        if 0 < yc.sum() < len(yc):
            aucs += float(roc_auc_score(yc, p[:, c]))
    return (aucs + acc) / 2.0
