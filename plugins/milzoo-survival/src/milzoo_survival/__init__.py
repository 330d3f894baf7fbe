"""milzoo-survival: survival analysis for milzoo (docs/tasks.md).

Public API (imported on first use, so ``import milzoo_survival`` stays cheap):

- :class:`SurvivalTask` (task ``survival``), :class:`DiscreteSurvivalNLL` (loss ``surv_nll``),
  :class:`CoxLoss` (loss ``cox``), and the tensor functions ``discrete_survival_nll`` and ``cox_nll``;
- :func:`read_survival_labels`: ``(time, event)`` from table rows (CLAM/MCAT's ``censorship``: 1 = censored);
- :func:`km_report`, :func:`km_report_for_run`: Kaplan-Meier curves and the log-rank test of risk groups cut
  on validation;
- :mod:`milzoo_survival.metrics`: Harrell's and Uno's C, time-dependent AUC, integrated Brier score;
- the benchmark sources :class:`FMNISTSurvivalBags` (``fmnist_survival``) and :class:`FMNISTRegressionBags`
  (``fmnist_regression``).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SurvivalTask": "task",
    "DiscreteSurvivalNLL": "losses",
    "CoxLoss": "losses",
    "discrete_survival_nll": "losses",
    "cox_nll": "losses",
    "read_survival_labels": "labels",
    "km_report": "km",
    "km_report_for_run": "km",
    "KMReport": "km",
    "FMNISTSurvivalBags": "datasets",
    "FMNISTRegressionBags": "datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'milzoo_survival' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"milzoo_survival.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
