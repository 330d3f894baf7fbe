"""The WSI protocol of docs/methods.md section 7.8, as the milzoo core implements it.

CAMELYON16: 5-fold CV on the training slides (folds stratified by label and
grouped by patient); per fold the validation-selected model and its Youden
threshold; the test slides are predicted by the 5 models and their
thresholded predictions voted.  [choice] The vote gives ACC/F1, the mean of
the 5 models' probabilities gives AUC.

The core is the single home of these rules (``protocol.kind = "cv_ensemble"``
runs them); this module re-exports them for convenience and adds only what the
core lacks:

- :func:`kfold_indices`, :func:`assert_no_group_leak` (``milzoo.protocols``)
- :func:`youden_threshold` (``milzoo.metrics``)
- :func:`fold_predictions`, :func:`majority_vote`, :func:`ensemble_metrics` (``milzoo.ensemble``)
- :func:`dsmil_selection_score` (here): DSMIL's per-fold selection score
"""

from __future__ import annotations

import numpy as np

from milzoo.model.ensemble import ensemble_metrics, fold_predictions, majority_vote
from milzoo.metrics import youden_threshold
from milzoo.datasets.protocols import assert_no_group_leak, kfold_indices

__all__ = [
    "assert_no_group_leak",
    "dsmil_selection_score",
    "ensemble_metrics",
    "fold_predictions",
    "kfold_indices",
    "majority_vote",
    "youden_threshold",
]


def dsmil_selection_score(y_true, probs, threshold: float | None = None) -> float:
    """DSMIL's per-fold model-selection score ``(sum_c AUC_c + accuracy) / 2``.

    ``probs`` is ``[n, k]``.  The per-class one-vs-rest AUCs are *summed* (two
    AUCs for k=2, as the official code does; docs/methods.md 2.4 and 7.8); accuracy
    uses ``threshold`` on ``p1`` for binary tasks, else the argmax (the core's
    :func:`~milzoo.model.ensemble.fold_predictions`).  A class absent from ``y_true``
    contributes 0.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError("probs must be [n, k] class probabilities")
    acc = float((fold_predictions(p, threshold) == y).mean())
    aucs = 0.0
    for c in range(p.shape[1]):
        yc = (y == c).astype(int)
        if 0 < yc.sum() < len(yc):
            aucs += float(roc_auc_score(yc, p[:, c]))
    return (aucs + acc) / 2.0
