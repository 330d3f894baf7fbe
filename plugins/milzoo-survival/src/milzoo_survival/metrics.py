"""Survival metrics on numpy arrays, through scikit-survival: Harrell's and Uno's C, time-dependent AUC, the
integrated Brier score, and the losses evaluated on a whole split.

Every function takes the split's ``time`` and ``event`` (1 = event observed, 0 = censored) and a risk score
(higher = worse: an earlier event expected) or survival curves.  A metric the split cannot support (no event,
no comparable pair, no time where both cases and controls exist) is NaN, never a made-up number.

The inverse-probability-of-censoring weights of Uno's C, the time-dependent AUC and the Brier score need the
censoring distribution; it is estimated (Kaplan-Meier) **on the evaluated split itself**, so a metric is a
function of that split's labels and predictions only (pycox's ``EvalSurv`` does the same by default).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = [
    "UNO_QUANTILE", "cox_partial_nll", "discrete_nll", "evaluation_times", "harrell_c", "integrated_brier",
    "interpolate_survival", "structured", "time_dependent_auc", "uno_c",
]

#: Uno's C is truncated at this quantile of the split's observed times (events and censorings together)
UNO_QUANTILE = 0.8


def structured(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """The structured array scikit-survival takes (``event`` bool, ``time`` float)."""
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event) > 0.5, time=np.asarray(time, dtype=np.float64))


def _ok(time: np.ndarray, event: np.ndarray) -> bool:
    return len(time) >= 2 and bool((np.asarray(event) > 0.5).any())


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index (ties in risk count one half; scikit-survival's
    ``concordance_index_censored``); NaN without an event or a comparable pair."""
    from sksurv.metrics import concordance_index_censored

    if not _ok(time, event):
        return math.nan
    try:
        return float(concordance_index_censored(np.asarray(event) > 0.5, np.asarray(time, np.float64),
                                                np.asarray(risk, np.float64))[0])
    except Exception:  # noqa: BLE001 - sksurv raises NoComparablePairException (and ValueError) when undefined
        return math.nan


def uno_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray, quantile: float = UNO_QUANTILE) -> float:
    """Uno's IPCW concordance, truncated at the ``quantile`` (0.8) of the split's observed times; the censoring
    distribution is the split's own Kaplan-Meier estimate.  NaN when undefined."""
    from sksurv.metrics import concordance_index_ipcw

    if not _ok(time, event):
        return math.nan
    y = structured(time, event)
    tau = float(np.quantile(np.asarray(time, np.float64), quantile))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(concordance_index_ipcw(y, y, np.asarray(risk, np.float64), tau=tau)[0])
    except Exception:  # noqa: BLE001
        return math.nan


def evaluation_times(time: np.ndarray, event: np.ndarray, quantiles=(0.25, 0.5, 0.75)) -> np.ndarray:
    """Times at which the time-dependent metrics are evaluated: the given quantiles of the split's *event*
    times, kept strictly inside the range of its observed times (where cases and controls both exist)."""
    time = np.asarray(time, np.float64)
    ev = time[np.asarray(event) > 0.5]
    if ev.size == 0:
        return np.zeros(0)
    t = np.unique(np.quantile(ev, quantiles))
    return t[(t >= time.min()) & (t < time.max())]


def time_dependent_auc(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Cumulative/dynamic AUC (scikit-survival's ``cumulative_dynamic_auc``) averaged over
    :func:`evaluation_times`, weighted as scikit-survival's ``mean_auc``; NaN when undefined."""
    from sksurv.metrics import cumulative_dynamic_auc

    if not _ok(time, event):
        return math.nan
    times = evaluation_times(time, event)
    if times.size == 0:
        return math.nan
    y = structured(time, event)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auc, mean_auc = cumulative_dynamic_auc(y, y, np.asarray(risk, np.float64), times)
    except Exception:  # noqa: BLE001
        return math.nan
    value = float(mean_auc) if times.size > 1 else float(np.asarray(auc).reshape(-1)[0])
    return value if math.isfinite(value) else math.nan


def interpolate_survival(surv: np.ndarray, edges: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Survival curves of the discrete-time head at continuous ``times``: ``[n, k]`` per-bin survival
    ``S_j = P(T >= end of bin j)`` and the ``k + 1`` bin ``edges`` (0, the k - 1 quantile edges, the training
    bags' largest time) -> ``[n, len(times)]``, linear between the bin ends (1 at time 0), constant after."""
    surv = np.asarray(surv, np.float64)
    knots = np.asarray(edges, np.float64)
    values = np.concatenate([np.ones((len(surv), 1)), surv], axis=1)  # S at knots 0, e_1, ..., e_k
    return np.stack([np.interp(times, knots, row) for row in values]) if len(surv) else np.zeros((0, len(times)))


def integrated_brier(time: np.ndarray, event: np.ndarray, surv: np.ndarray, edges: np.ndarray,
                     points: int = 20) -> float:
    """Integrated Brier score (scikit-survival's ``integrated_brier_score``, IPCW) of the discrete head's
    survival curves over ``points`` times evenly spaced from the 10th to the 80th percentile of the split's
    observed times; NaN when undefined (lower is better)."""
    from sksurv.metrics import integrated_brier_score

    if not _ok(time, event):
        return math.nan
    t = np.asarray(time, np.float64)
    lo, hi = np.quantile(t, [0.1, 0.8])
    if not hi > lo:
        return math.nan
    grid = np.linspace(lo, hi, points)
    grid = grid[(grid >= t.min()) & (grid < t.max())]
    if grid.size < 2:
        return math.nan
    y = structured(time, event)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(integrated_brier_score(y, y, interpolate_survival(surv, edges, grid), grid))
    except Exception:  # noqa: BLE001
        return math.nan


def discrete_nll(bin_index: np.ndarray, event: np.ndarray, surv: np.ndarray, eps: float = 1e-7) -> float:
    """The discrete-time survival NLL (alpha = 0) of a split from its per-bin survival ``[n, k]``: the hazards
    are recovered as ``h_j = 1 - S_j / S_{j-1}``, logs clamped at ``eps`` as in the official code."""
    surv = np.asarray(surv, np.float64)
    if len(surv) == 0:
        return math.nan
    padded = np.concatenate([np.ones((len(surv), 1)), surv], axis=1)  # S(-1) = 1
    y = np.asarray(bin_index, np.int64)
    rows = np.arange(len(surv))
    s_before = padded[rows, y]  # S(y - 1)
    s_at = padded[rows, y + 1]  # S(y)
    hazard = 1.0 - s_at / np.maximum(s_before, eps)
    e = np.asarray(event, np.float64)
    nll = -e * (np.log(np.maximum(s_before, eps)) + np.log(np.maximum(hazard, eps))) \
        - (1 - e) * np.log(np.maximum(s_at, eps))
    return float(nll.mean())


def cox_partial_nll(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """The negative Cox partial log-likelihood with Breslow ties, divided by the number of events (what the
    ``cox`` loss computes on a batch), on the whole split; NaN without an event."""
    t = np.asarray(time, np.float64)
    e = np.asarray(event) > 0.5
    r = np.asarray(risk, np.float64)
    if not e.any():
        return math.nan
    order = np.argsort(-t, kind="stable")  # latest first: a prefix of this order is a risk set
    ts, rs, es = t[order], r[order], e[order]
    cum = np.logaddexp.accumulate(rs)  # log sum of exp(risk) over the first p + 1 bags
    last = np.searchsorted(-ts, -ts, side="right") - 1  # Breslow: tied times share the whole tie group
    log_den = cum[last]
    return float(-(rs[es] - log_den[es]).sum() / es.sum())
