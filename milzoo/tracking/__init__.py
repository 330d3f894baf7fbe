"""Experiment tracking: the run's loggers (TensorBoard, MLflow, Weights & Biases, CSV or a plugin's) as one.

A logger is a registry component (:class:`milzoo.components.Logger`, hook ``milzoo_register_loggers``) chosen by
``[[log]]`` tables in a recipe or ``milzoo run --log NAME``.  ``tracker`` builds the run's loggers and fans its
events out to them (:class:`Tracker`); ``support`` holds what logger implementations share: checking an optional
package (:func:`require`), the id of a run a logger keeps across starts (:func:`shared_run_id`), a folder in the
run directory (:func:`logger_dir`) and summary.json as flat figures (:func:`summary_figures`).  docs/tracking.md.
"""

from milzoo._lazy import attach

_EXPORTS = {
    # tracker
    "Tracker": "tracker", "build_tracker": "tracker",
    # support
    "require": "support", "shared_run_id": "support", "logger_dir": "support", "summary_figures": "support",
    "numeric_metrics": "support",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
