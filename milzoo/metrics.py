"""Bag- and instance-level metrics.

Accuracy, F1 and ROC AUC are a few lines of numpy with scikit-learn's definitions
(``tests/test_metrics_sklearn.py`` checks them against scikit-learn): importing
``sklearn.metrics`` costs a second or more of every run.  The Youden threshold still
uses scikit-learn's ``roc_curve``, imported when a recipe asks for it.
"""

from __future__ import annotations

import math

import numpy as np

from milzoo.errors import DataError


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean labels ``positive`` (both classes present): the trapezoidal
    area under the ROC curve with one point per distinct score, as ``sklearn.metrics.roc_auc_score``."""
    order = np.argsort(score, kind="mergesort")[::-1]
    s, t = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), t.size - 1]  # the last position of each distinct score
    tps = np.r_[0.0, np.cumsum(t, dtype=np.float64)[last]]
    fps = np.r_[0.0, 1 + last - tps[1:]]
    return float(np.trapezoid(tps / tps[-1], fps / fps[-1]))


def f1(y_true: np.ndarray, pred: np.ndarray, label: int) -> float:
    """F1 of one class: 2 tp / (2 tp + fp + fn), 0 when that is 0 / 0 (scikit-learn's zero_division=0)."""
    t, p = y_true == label, pred == label
    tp = int(np.sum(t & p))
    denominator = 2 * tp + int(np.sum(~t & p)) + int(np.sum(t & ~p))
    return 2 * tp / denominator if denominator else 0.0


def check_finite_predictions(pred: np.ndarray) -> None:
    """Refuse NaN/inf predictions (``[n, p]``) with the bags' positions: bad data never gives a confident number."""
    bad = np.flatnonzero(~np.isfinite(pred).all(axis=1))
    if bad.size:
        raise DataError(
            f"the model's predictions of {bad.size} of {len(pred)} bags are NaN/inf (bags at positions "
            f"{bad[:5].tolist()}{' ...' if bad.size > 5 else ''} of the split): their features hold NaN/inf "
            "values, or the weights diverged. Check the data (or lower optim.lr / set train.grad_clip)."
        )


def bag_metrics(y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Accuracy, AUC and F1 of bag predictions.

    ``probs`` is ``[n, k]``.  Binary: AUC of the positive-class probability and F1
    of the positive class; the prediction is ``p1 >= threshold`` when a threshold
    is given, else the argmax.  Multi-class: macro one-vs-rest AUC and macro F1.
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    check_finite_predictions(probs)
    if k == 2 and threshold is not None:
        pred = (probs[:, 1] >= threshold).astype(int)
    else:
        pred = probs.argmax(1)
    out = {"acc": float(np.mean(y_true == pred)) if len(y_true) else math.nan}
    present = np.unique(y_true)
    if k == 2:
        out["f1"] = float(f1(y_true, pred, 1))
        out["auc"] = binary_auc(y_true == 1, probs[:, 1]) if len(present) == 2 else math.nan
    else:  # macro averages over the k classes; AUC one-vs-rest
        out["f1"] = float(np.mean([f1(y_true, pred, c) for c in range(k)]))
        if len(present) == k:
            p = probs / probs.sum(1, keepdims=True).clip(1e-12)
            out["auc"] = float(np.mean([binary_auc(y_true == c, p[:, c]) for c in range(k)]))
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


#: the one standard deviation milzoo states over folds, seeds or ensemble members (``summary.json``, the
#: ``milzoo run`` summary, the HTML report, model cards): the sample standard deviation, ``n - 1`` in the
#: denominator (numpy's ``ddof=1``, Python's ``statistics.stdev``); ``summary.json`` records it as ``std_ddof``
STD_DDOF = 1
#: the ``std_ddof`` of a ``summary.json`` that has none: written before the key existed, with numpy's default
LEGACY_SUMMARY_DDOF = 0


def std_words(ddof: int = STD_DDOF) -> str:
    """Which standard deviation, in words, for a page or a printout: ``sample standard deviation (n − 1)``
    (``ddof`` 1) or ``population standard deviation (n)`` (``ddof`` 0, old ``summary.json`` files)."""
    if ddof == 0:
        return "population standard deviation (n)"
    return "sample standard deviation (n − 1)" if ddof == 1 else f"standard deviation (ddof {ddof})"


def mean_std(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (:data:`STD_DDOF`) of the values that are not None or NaN.

    The standard deviation of a single value is undefined: NaN (``null`` in JSON), never a spread of 0.
    """
    arr = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    std = float(arr.std(ddof=STD_DDOF)) if arr.size > STD_DDOF else math.nan
    return float(arr.mean()), std


#: metrics where a smaller value is better (errors and losses); every other metric is better larger
LOWER_IS_BETTER = frozenset({"loss", "mae", "rmse", "mse", "ibs", "brier"})


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (all but the losses and errors of LOWER_IS_BETTER)."""
    return metric not in LOWER_IS_BETTER


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (what Spearman's correlation correlates)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b) / denominator) if denominator > 0 else math.nan


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R², Pearson's r and Spearman's rho of ``pred`` against ``y_true`` (both ``[n, t]``; the
    mean over the ``t`` targets).  R² is 1 - SS_res / SS_tot per target (scikit-learn's ``r2_score``); a
    correlation with a constant side is NaN, never a confident number."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(pred), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(y_true), -1)
    check_finite_predictions(pred)
    if len(y_true) == 0:
        return {k: math.nan for k in ("mae", "rmse", "r2", "pearson", "spearman")}
    err = pred - y_true
    out = {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}
    r2, pr, sp = [], [], []
    for j in range(y_true.shape[1]):
        yt, yp = y_true[:, j], pred[:, j]
        ss_tot = float(np.sum((yt - yt.mean()) ** 2))
        r2.append(1.0 - float(np.sum((yt - yp) ** 2)) / ss_tot if ss_tot > 0 else math.nan)
        pr.append(_pearson(yt, yp))
        sp.append(_pearson(_ranks(yt), _ranks(yp)))
    out["r2"], out["pearson"], out["spearman"] = (float(np.mean(v)) for v in (r2, pr, sp))
    return out
