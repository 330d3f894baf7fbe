"""The survival task: bag labels ``(time, event)``, a discrete-time hazard head or a Cox head (docs/tasks.md).

Labels: ``MILBatch.y`` is float ``[B, 2]``, column 0 the follow-up time (any unit, >= 0), column 1 the event
indicator, **1 = event observed, 0 = censored** (CLAM/MCAT tables store ``censorship = 1 - event``:
:func:`milzoo_survival.labels.read_survival_labels` converts them).

Heads:

- ``discrete`` (default; Zadeh & Schmid 2021, as in Patch-GCN, MCAT and PORPOISE): ``bins`` outputs, the logits
  of the hazards ``h_j = sigmoid(z_j) = P(T in bin j | T >= start of bin j)``.  The bins are the quantiles of
  the training bags' *uncensored* event times, fitted on each fold's training bags (:meth:`SurvivalTask.fit`)
  into the buffer ``edges`` (saved in the checkpoint).  The survival after bin ``j`` is
  ``S_j = prod_{i <= j} (1 - h_i)``; the risk is ``-sum_j S_j`` (MCAT's), higher = worse.
- ``cox``: one output, the log relative hazard, which is also the risk.

Predictions (``predict``, the predictions file's columns): ``risk`` and, for the discrete head, ``S_bin0`` ...
``S_bin{k-1}``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from milzoo.components import ComponentConfig, MILOutput, Task
from milzoo.errors import DataError
from milzoo.layers import at_least_float32

from milzoo_survival import metrics as sm

__all__ = ["SurvivalTask", "as_time_event"]


def as_time_event(labels: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(time, event)`` float arrays from survival labels ``[n, 2]``, or a :class:`DataError`."""
    try:
        y = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: the survival task needs labels (time, event) per bag as numbers; got "
                        f"{type(labels).__name__}. Build the labels with milzoo_survival.read_survival_labels.") from None
    if y.ndim != 2 or y.shape[1] != 2:
        raise DataError(f"{where}: the survival task needs one (time, event) pair per bag, a [n, 2] array, but the "
                        f"labels have shape {list(y.shape)}. Give the dataset survival labels (time, event: 1 = "
                        "event observed, 0 = censored), or choose the task that fits them ([task] name).")
    return y[:, 0], y[:, 1]


class SurvivalTask(Task):
    """Time-to-event labels (time, event): a discrete-time hazard head or a Cox head; C-index metrics."""

    name = "survival"
    #: the discrete head's loss; the instance says ``cox`` when ``head = "cox"`` (read ``task.default_loss``)
    default_loss = "surv_nll"
    headline = "c_index"
    thresholds = False
    classes = False

    class Config(ComponentConfig):
        head: Literal["discrete", "cox"] = Field(
            default="discrete",
            description="discrete: one hazard logit per time bin (NLL, Zadeh & Schmid 2021); cox: one log "
            "relative hazard (Cox partial likelihood, needs several bags per step)",
        )
        bins: int = Field(
            default=4, ge=2, le=64,
            description="discrete head: time bins, at the quantiles of the training bags' uncensored times",
        )

    def __init__(self, config: Config):
        super().__init__(config)
        self.default_loss = "cox" if config.head == "cox" else "surv_nll"
        k = config.bins
        # bin edges [0, q_1, ..., q_{k-1}, largest training time]: placeholders until fit()
        self.register_buffer("edges", torch.arange(k + 1, dtype=torch.float64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.uint8))
        #: ``fitted`` as the host last saw it set: checked once, not read back from a GPU in every step
        self._fitted_seen = False

    # ------------------------------------------------------------------ labels
    @property
    def discrete(self) -> bool:
        return self.config.head == "discrete"

    def out_dim(self, num_classes: int) -> int:
        return self.config.bins if self.discrete else 1

    def label_columns(self) -> list[str]:
        return ["time", "event"]

    def columns(self, class_names: list[str]) -> list[str]:
        return ["risk"] + ([f"S_bin{j}" for j in range(self.config.bins)] if self.discrete else [])

    def report_figures(self, run_dir: Any, fold: int = 0) -> list[tuple[str, bytes, str]]:
        """Kaplan-Meier curves of the test bags split at a risk cut-off chosen on validation (the fold's
        validation-selected checkpoint when it exists, else its last), with the log-rank p-value."""
        from pathlib import Path

        from milzoo_survival.km import km_report_for_run

        folder = Path(run_dir) / f"fold-{fold:02d}"
        checkpoint = "best" if (folder / "best" / "predictions-val.csv").is_file() else "last"
        report, _, _ = km_report_for_run(run_dir, fold=fold, checkpoint=checkpoint)
        return [(f"Kaplan-Meier curves of fold {fold}'s test bags ({checkpoint} checkpoint)", report.png,
                 report.summary() + f". Same command: milzoo survival km {run_dir} --fold {fold}.")]

    def example_labels(self, n: int, seed: int = 0) -> list[Any]:
        """``n`` labels ``(time, event)``: distinct exponential times, every third bag censored."""
        g = np.random.default_rng(seed)
        times = 1.0 + g.exponential(10.0, size=n)
        return [(float(t), 0.0 if i % 3 == 2 else 1.0) for i, t in enumerate(times)]

    def check_labels(self, labels: Any, where: str) -> None:
        time, event = as_time_event(labels, where)
        bad = np.flatnonzero(~np.isfinite(time) | (time < 0))
        if bad.size:
            raise DataError(f"{where}: {bad.size} bag(s) have a missing, negative or non-finite time (e.g. positions "
                            f"{bad[:5].tolist()}); a follow-up time is a duration >= 0. Fix or drop those bags.")
        bad = np.flatnonzero(~np.isin(event, (0.0, 1.0)))
        if bad.size:
            raise DataError(f"{where}: {bad.size} bag(s) have an event indicator other than 0 or 1 (e.g. positions "
                            f"{bad[:5].tolist()}: {event[bad[:3]].tolist()}); the survival label's event is 1 = event "
                            "observed, 0 = censored (CLAM/MCAT's censorship column is the opposite: read tables with "
                            "milzoo_survival.read_survival_labels).")
        if len(event) and not (event == 1).any():
            raise DataError(f"{where}: none of the {len(event)} bags has an observed event (all are censored), so "
                            "no survival model can be trained or measured on it (no comparable pair). Check the "
                            "event/censorship column (1 = censored in CLAM/MCAT tables) or make the split larger.")

    def fit(self, train) -> None:
        """The discrete head's bin edges: quantiles of the training bags' uncensored times (Patch-GCN, MCAT,
        PORPOISE), the first edge 0 and the last the largest training time (events and censorings)."""
        time, event = as_time_event(train.labels, "the training bags")
        self.check_labels(train.labels, "the training bags")
        k = self.config.bins
        upper = float(time.max())
        if self.discrete:
            events = time[event == 1]
            inner = np.quantile(events, np.arange(1, k) / k)
            if events.size < k or np.any(np.diff(inner) <= 0) or inner[0] <= 0 or inner[-1] >= upper:
                raise DataError(
                    f"the training bags have {events.size} observed event time(s), too few or too tied to cut into "
                    f"task.bins = {k} time bins of distinct edges (quantile edges: "
                    f"{', '.join(f'{v:g}' for v in inner)}). Lower task.bins, or use head = \"cox\"."
                )
            edges = np.concatenate([[0.0], inner, [upper]])
        else:
            edges = np.linspace(0.0, upper, k + 1)  # unused by the cox head; kept for the record
        self.edges.copy_(torch.as_tensor(edges, dtype=self.edges.dtype))
        self.fitted.fill_(1)
        self._fitted_seen = True

    def _load_from_state_dict(self, *args, **kwargs):
        self._fitted_seen = False  # a loaded state says for itself whether it is fitted
        super()._load_from_state_dict(*args, **kwargs)

    def bin_index(self, time: Tensor) -> Tensor:
        """The discrete time bin of each time, ``[B] -> [B]`` long: bin ``j`` holds ``[q_j, q_{j+1})`` (the
        first bin starts at 0, the last one has no end: times past the training range fall into it)."""
        if not self._fitted_seen and bool(self.fitted):
            self._fitted_seen = True
        if not self._fitted_seen:
            from milzoo.errors import ComponentError

            raise ComponentError("the survival task's time bins are not fitted: SurvivalTask.fit(train) must run on "
                                 "the training bags before the discrete survival loss (milzoo's trainer does this).")
        inner = self.edges[1:-1]
        return torch.searchsorted(inner, time.to(inner.dtype).contiguous(), right=True)

    # ------------------------------------------------------------------ predictions
    def survival(self, logits: Tensor) -> Tensor:
        """Discrete head: hazard logits ``[B, k]`` -> survival after each bin, ``S_j = prod_{i<=j} (1 - h_i)``."""
        return torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=1))

    def predict(self, out: MILOutput) -> Tensor:
        z = at_least_float32(out.bag_logits)[:, : self.out_dim(0)]
        if not self.discrete:
            return z
        s = self.survival(z)
        return torch.cat([-s.sum(dim=1, keepdim=True), s], dim=1)

    def metrics(self, y: Any, pred: Any, threshold: float | None = None) -> dict[str, float]:
        """``c_index`` (Harrell), ``c_index_uno`` (truncated at the split's 80th percentile time, censoring
        estimated on the split), ``td_auc`` (mean cumulative/dynamic AUC at the quartiles of the split's event
        times), ``ibs`` (discrete head; NaN for cox, which has no baseline hazard) and ``loss`` (the split's
        discrete NLL with alpha = 0, or its Cox partial likelihood per event)."""
        time, event = as_time_event(y, "the evaluated split")
        pred = np.asarray(pred, dtype=np.float64).reshape(len(time), -1)
        bad = np.flatnonzero(~np.isfinite(pred).all(axis=1))
        if bad.size:
            raise DataError(
                f"the model's predictions of {bad.size} of {len(pred)} bags are NaN/inf (positions {bad[:5].tolist()}"
                "): their features hold NaN/inf values, or the weights diverged. Check the data (or lower optim.lr / "
                "set train.grad_clip)."
            )
        risk = pred[:, 0]
        m = {
            "c_index": sm.harrell_c(time, event, risk),
            "c_index_uno": sm.uno_c(time, event, risk),
            "td_auc": sm.time_dependent_auc(time, event, risk),
        }
        if self.discrete:
            edges = self.edges.detach().cpu().double().numpy()
            surv = pred[:, 1:]
            m["ibs"] = sm.integrated_brier(time, event, surv, edges)
            y_bin = np.searchsorted(edges[1:-1], time, side="right")
            m["loss"] = sm.discrete_nll(y_bin, event, surv) if len(time) else math.nan
        else:
            m["ibs"] = math.nan
            m["loss"] = sm.cox_partial_nll(time, event, risk) if len(time) else math.nan
        return m
