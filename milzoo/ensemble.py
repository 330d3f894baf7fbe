"""Combining fold models on a shared test set (the DSMIL/PSMIL whole-slide protocol)."""

from __future__ import annotations

import numpy as np

from milzoo.metrics import bag_metrics


def fold_predictions(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class predictions of one model: thresholded positive probability (binary) or argmax."""
    if probs.shape[1] == 2 and threshold is not None:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(1)


def majority_vote(preds: np.ndarray, mean_probs: np.ndarray) -> np.ndarray:
    """Per-bag majority over models (``preds`` is ``[models, bags]``).

    Ties (e.g. 2 vs 2 of 4 models, or a three-way split) go to the class with the
    highest mean probability among the tied classes.
    """
    n_models, n_bags = preds.shape
    k = mean_probs.shape[1]
    out = np.empty(n_bags, dtype=int)
    for b in range(n_bags):
        counts = np.bincount(preds[:, b], minlength=k)
        tied = np.flatnonzero(counts == counts.max())
        out[b] = tied[np.argmax(mean_probs[b, tied])] if len(tied) > 1 else tied[0]
    return out


def ensemble_metrics(probs_per_model: list[np.ndarray], thresholds: list[float | None], y_true: np.ndarray) -> dict:
    """ACC/F1 of the majority vote; AUC of the mean probability (methods.md 7.8 [choice])."""
    probs = np.stack(probs_per_model)  # [models, bags, k]
    mean = probs.mean(0)
    preds = np.stack([fold_predictions(p, t) for p, t in zip(probs_per_model, thresholds)])
    vote = majority_vote(preds, mean)
    # accuracy/F1 from the vote: feed one-hot "probabilities" of the vote to bag_metrics
    onehot = np.eye(mean.shape[1])[vote]
    m_vote = bag_metrics(y_true, onehot)
    m_mean = bag_metrics(y_true, mean)
    return {"acc": m_vote["acc"], "f1": m_vote["f1"], "auc": m_mean["auc"], "n_models": len(probs_per_model),
            "note": "acc/f1 from the majority vote of thresholded fold models; auc from their mean probability"}
