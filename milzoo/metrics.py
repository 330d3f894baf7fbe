"""Bag- and instance-level metrics (scikit-learn does the maths)."""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from milzoo.errors import DataError


def bag_metrics(y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Accuracy, AUC and F1 of bag predictions.

    ``probs`` is ``[n, k]``.  Binary: AUC of the positive-class probability and F1
    of the positive class; the prediction is ``p1 >= threshold`` when a threshold
    is given, else the argmax.  Multi-class: macro one-vs-rest AUC and macro F1.
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad.size:
        raise DataError(
            f"the model's predictions of {bad.size} of {len(probs)} bags are NaN/inf (bags at positions "
            f"{bad[:5].tolist()}{' ...' if bad.size > 5 else ''} of the split): their features hold NaN/inf "
            "values, or the weights diverged. Check the data (or lower optim.lr / set train.grad_clip)."
        )
    if k == 2 and threshold is not None:
        pred = (probs[:, 1] >= threshold).astype(int)
    else:
        pred = probs.argmax(1)
    out = {"acc": float(accuracy_score(y_true, pred))}
    present = np.unique(y_true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if k == 2:
            out["f1"] = float(f1_score(y_true, pred, pos_label=1, zero_division=0))
            out["auc"] = float(roc_auc_score(y_true, probs[:, 1])) if len(present) == 2 else math.nan
        else:
            out["f1"] = float(f1_score(y_true, pred, average="macro", labels=list(range(k)), zero_division=0))
            if len(present) == k:
                p = probs / probs.sum(1, keepdims=True).clip(1e-12)
                out["auc"] = float(roc_auc_score(y_true, p, multi_class="ovr", average="macro", labels=list(range(k))))
            else:
                out["auc"] = math.nan
    return out


def instance_accuracy(inst_true: np.ndarray, inst_probs: np.ndarray) -> float:
    """Accuracy of argmax instance predictions over instances with a known label."""
    inst_true = np.asarray(inst_true)
    keep = inst_true >= 0
    if not keep.any():
        return math.nan
    return float((np.asarray(inst_probs)[keep].argmax(1) == inst_true[keep]).mean())


def youden_threshold(y_true: np.ndarray, p_pos: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (chosen on validation only)."""
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, p_pos)
    i = int(np.argmax(tpr - fpr))
    t = float(thr[i])
    return min(max(t, 0.0), 1.0) if math.isfinite(t) else 0.5


def json_safe(obj):
    """``obj`` with every NaN/inf float replaced by None, so ``json.dumps(..., allow_nan=False)`` works
    (bare ``NaN`` is not JSON: other tools refuse such files)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std())
