"""Measuring a trained model again on a fold's evaluated splits, exactly as the run that trained it did.

``milzoo verify`` and the weight distributions' tests use this to check that a shipped model still gives the
metrics its model card records: the same batches (``eval_batch_size``), the same autocast setting, the same
threshold and the same metric code as the trainer's evaluation (:mod:`milzoo.train._evaluate`).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
import torch

from milzoo.datasets.base import MILDataset
from milzoo.train import _evaluate
from milzoo.train._feed import Feed
from milzoo.train._precision import MixedPrecision
from milzoo.train.settings import resolve_batch_size

log = logging.getLogger(__name__)

__all__ = ["measure"]


def measure(model, recipe, evals: dict[str, MILDataset], threshold: float | None = None,
            device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
    """Split -> metrics of ``model`` (a loaded :class:`~milzoo.model.MILModel`) on ``evals``, computed the way
    the trainer of ``recipe`` computed them (its batches, precision, threshold and patient grouping)."""
    device = torch.device(device)
    tc = recipe.root.train
    model = model.to(device).eval()
    # what _evaluate.predict reads from a trainer, and nothing else
    view = SimpleNamespace(eval_model=model, recipe=recipe, dist=None, feed=Feed(tc, device),
                           batch_size=resolve_batch_size(tc.batch_size, device),
                           amp=MixedPrecision(tc.precision, device))
    preds = _evaluate.predict_splits(lambda ds: _evaluate.predict(view, ds), evals, device)
    out: dict[str, dict[str, float]] = {}
    for name, p in preds.items():
        groups = None
        if recipe.root.protocol.patient_metrics != "none" and evals[name].groups is not None:
            groups = dict(zip(evals[name].bag_ids, evals[name].groups.tolist()))
        out[name] = _evaluate.evaluate(model.task, p, threshold, groups)
    return out
