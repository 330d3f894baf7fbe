"""Kaplan-Meier report of a fold: risk groups cut on the validation bags, compared on the test bags.

The cut-off between "low risk" and "high risk" is a quantile (the median by default) of the **validation**
bags' risk; the test bags are only split with it, never used to choose it (a median taken on the test bags
would be a cut-off tuned on test).  The two test groups' Kaplan-Meier curves are drawn with matplotlib (Agg, PNG
bytes) and compared with the log-rank test (scikit-survival's ``compare_survival``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milzoo.errors import DataError, RunDirError

__all__ = ["KMReport", "SplitPredictions", "km_report", "km_report_for_run", "read_split_predictions"]


@dataclass
class SplitPredictions:
    """A split's survival predictions: bag ids, times, events (1 = event observed) and risks."""

    bag_ids: list[str]
    time: np.ndarray
    event: np.ndarray
    risk: np.ndarray


@dataclass
class KMReport:
    """What :func:`km_report` found: the cut-off and where it was chosen, the groups, the log-rank test, the PNG."""

    cutoff: float
    cutoff_split: str  # the split whose risks chose the cut-off: always "val"
    quantile: float
    n_low: int
    n_high: int
    events_low: int
    events_high: int
    statistic: float
    p_value: float
    png: bytes

    def summary(self) -> str:
        p = "nan" if math.isnan(self.p_value) else f"{self.p_value:.4g}"
        return (f"log-rank p = {p} (chi2 = {self.statistic:.3f}); cut-off risk {self.cutoff:.6g} = the "
                f"{self.quantile:g} quantile of the {self.cutoff_split} bags' risk; test bags: {self.n_low} low risk "
                f"({self.events_low} events), {self.n_high} high risk ({self.events_high} events)")


def _logrank(time: np.ndarray, event: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    from sksurv.compare import compare_survival
    from sksurv.util import Surv

    if high.all() or not high.any() or not (event > 0.5).any():
        return math.nan, math.nan
    y = Surv.from_arrays(event=event > 0.5, time=time)
    chi2, p = compare_survival(y, high.astype(int))
    return float(chi2), float(p)


def _draw(time, event, high, title: str, p_value: float) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sksurv.nonparametric import kaplan_meier_estimator

    fig = Figure(figsize=(5.5, 4.0), dpi=120)  # no pyplot: the caller's backend and figures are left alone
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for mask, label, color in ((~high, "low risk", "tab:blue"), (high, "high risk", "tab:red")):
        if not mask.any():
            continue
        x, s = kaplan_meier_estimator(event[mask] > 0.5, time[mask])
        ax.step(np.concatenate([[0.0], x]), np.concatenate([[1.0], s]), where="post", color=color,
                label=f"{label} (n = {int(mask.sum())})")
        cens = mask & (event < 0.5)
        if cens.any():  # censoring ticks on the curve
            at = np.interp(time[cens], x, s, left=1.0)
            ax.plot(time[cens], at, "|", color=color, markersize=6)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    p = "n/a" if math.isnan(p_value) else f"{p_value:.3g}"
    ax.set_title(f"{title}  log-rank p = {p}" if title else f"log-rank p = {p}", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def km_report(val_risk, test_time, test_event, test_risk, *, quantile: float = 0.5, title: str = "") -> KMReport:
    """Cut the test bags into low/high risk at the ``quantile`` of the **validation** risks (median by default),
    draw both groups' Kaplan-Meier curves and compare them with the log-rank test.

    Only ``val_risk`` chooses the cut-off; the test arrays (time, event 1 = observed, risk) are split by it. A
    test bag whose risk is above the cut-off is high risk.  The p-value is NaN when a group is empty or the test
    bags have no event.
    """
    val_risk = np.asarray(val_risk, np.float64)
    t, e, r = (np.asarray(a, np.float64) for a in (test_time, test_event, test_risk))
    if val_risk.size == 0 or not np.isfinite(val_risk).all():
        raise DataError("the Kaplan-Meier cut-off is chosen on the validation bags' risk, but there is none (or it is "
                        "not finite). Run the recipe with a validation split (protocol.val_fraction, or a dataset "
                        "with a 'val' split).")
    if not (len(t) == len(e) == len(r)) or len(t) == 0:
        raise DataError(f"the test predictions have {len(t)} times, {len(e)} events and {len(r)} risks: they must be "
                        "one per test bag, and at least one.")
    if not 0.0 < quantile < 1.0:
        raise DataError(f"the cut-off quantile must be between 0 and 1 (exclusive); got {quantile}.")
    cutoff = float(np.quantile(val_risk, quantile))
    high = r > cutoff
    chi2, p = _logrank(t, e, high)
    return KMReport(
        cutoff=cutoff, cutoff_split="val", quantile=quantile,
        n_low=int((~high).sum()), n_high=int(high.sum()),
        events_low=int((e[~high] > 0.5).sum()), events_high=int((e[high] > 0.5).sum()),
        statistic=chi2, p_value=p, png=_draw(t, e, high, title, p),
    )


def read_split_predictions(path: str | Path) -> SplitPredictions:
    """A survival predictions file (``bag_id, time, event, risk, ...``) as :class:`SplitPredictions`."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise RunDirError(f"cannot read {path} ({exc.strerror or exc}); check the run directory and the fold.") from None
    header = rows[0] if rows else []
    need = ["bag_id", "time", "event", "risk"]
    if any(c not in header for c in need):
        raise RunDirError(f"{path} is not a survival predictions file: its header is {header[:6]}, without "
                          f"{[c for c in need if c not in header]}. Is this a run of a recipe with [task] name = "
                          "\"survival\"?")
    col = {c: header.index(c) for c in need}
    try:
        body = [r for r in rows[1:] if r]
        ids = [r[col["bag_id"]] for r in body]
        vals = {c: np.array([float(r[col[c]]) for r in body]) for c in ("time", "event", "risk")}
    except (ValueError, IndexError) as exc:
        raise RunDirError(f"{path} is damaged ({exc}); run the fold again (--resume after deleting its result.json).") \
            from None
    return SplitPredictions(ids, vals["time"], vals["event"], vals["risk"])


def km_report_for_run(run_dir: str | Path, fold: int = 0, checkpoint: str = "best", *,
                      quantile: float = 0.5) -> tuple[KMReport, Path, Path]:
    """:func:`km_report` of one fold of a run directory, from ``fold-XX/<checkpoint>/predictions-{val,test}.csv``.
    Returns the report and the two files read (validation, test)."""
    folder = Path(run_dir) / f"fold-{fold:02d}" / checkpoint
    val_path, test_path = folder / "predictions-val.csv", folder / "predictions-test.csv"
    if not folder.is_dir():
        raise RunDirError(f"{folder} does not exist: {run_dir} has no fold {fold} with a {checkpoint!r} checkpoint. "
                          "Check RUN_DIR, --fold and --checkpoint (best needs a validation split; else use last).")
    for p, split in ((val_path, "validation"), (test_path, "test")):
        if not p.is_file():
            raise RunDirError(f"{p} is missing: the Kaplan-Meier report needs the fold's {split} predictions (the "
                              "cut-off is chosen on validation, the curves drawn on test). Run the recipe with a "
                              "validation split and a test split.")
    val, test = read_split_predictions(val_path), read_split_predictions(test_path)
    report = km_report(val.risk, test.time, test.event, test.risk, quantile=quantile,
                       title=f"{Path(run_dir).name} fold {fold} ({checkpoint})")
    return report, val_path, test_path
