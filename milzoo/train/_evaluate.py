"""Evaluation of a fold and what is decided from it: predictions of a split, their metrics, the binary
threshold, the epoch's metric records, the validation-selected epoch with early stopping, and the fold's
result summary.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from milzoo.datasets.base import MILDataset
from milzoo.layers.precision import at_least_float32
from milzoo.metrics import bag_metrics, higher_is_better, instance_accuracy, youden_threshold
from milzoo.train import _feed

if TYPE_CHECKING:
    from milzoo.train.trainer import Trainer

log = logging.getLogger(__name__)

#: metrics the progress bar shows, of the test split (else validation)
SHOWN_METRICS = ("acc", "auc", "inst_acc")


# ---------------------------------------------------------------------------------------- predictions, metrics
@torch.no_grad()
def predict(tr: Trainer, ds: MILDataset) -> dict[str, Any]:
    """Bag probabilities, labels and instance predictions of a whole split, by ``tr.eval_model``."""
    model = tr.eval_model
    model.eval()
    bs = tr.recipe.root.train.eval_batch_size or tr.batch_size
    indices = list(range(len(ds)))
    if tr.dist is not None:
        indices = tr.dist.shard(indices, pad=False)
    probs, ys, ids = [], [], []
    inst_true, inst_probs = [], []
    for batch in tr.feed.iter_batches(ds, _feed.batches(indices, bs)):
        with tr.amp.autocast():
            out = model(batch)
        probs.append(at_least_float32(out.bag_probs).cpu())
        ys.append(batch.y.cpu())
        ids.extend(batch.bag_ids)
        if batch.inst_y is not None and out.inst_probs is not None:
            inst_true.append(batch.inst_y[batch.mask].cpu())
            inst_probs.append(at_least_float32(out.inst_probs)[batch.mask].cpu())
    res = {
        "probs": torch.cat(probs).numpy() if probs else np.zeros((0, ds.num_classes)),
        "y": torch.cat(ys).numpy() if ys else np.zeros(0, dtype=int),
        "bag_ids": ids,
        "inst_true": torch.cat(inst_true).numpy() if inst_true else None,
        "inst_probs": torch.cat(inst_probs).numpy() if inst_probs else None,
    }
    if tr.dist is not None:
        res = tr.dist.gather_predictions(res)
    return res


def predict_splits(predict_split: Callable[[MILDataset], dict[str, Any]], evals: dict[str, MILDataset],
                   device: torch.device) -> dict[str, dict[str, Any]]:
    """``predict_split`` of every evaluated split, on a fork of torch's random streams: a DataLoader's iterator
    (and so each evaluated split) draws from the global RNG, which would make the training that follows depend
    on which splits are evaluated."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return {name: predict_split(ds) for name, ds in evals.items()}


def updated_threshold(protocol, preds: dict[str, dict[str, Any]], current: float | None) -> float | None:
    """The binary threshold after this evaluation: Youden's on validation when the protocol asks for it."""
    val = preds.get("val")
    if protocol.threshold == "youden" and val is not None and val["probs"].shape[1] == 2:
        return youden_threshold(val["y"], val["probs"][:, 1])
    return current


def evaluate(preds: dict[str, Any], threshold: float | None) -> dict[str, float]:
    """Bag metrics of predictions (and the mean cross-entropy, and instance accuracy where labels exist)."""
    probs, y = preds["probs"], preds["y"]
    m = bag_metrics(y, probs, threshold)
    eps = 1e-7
    m["loss"] = float(-np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)).mean()) if len(y) else math.nan
    if preds["inst_true"] is not None:
        m["inst_acc"] = instance_accuracy(preds["inst_true"], preds["inst_probs"])
    return m


# ---------------------------------------------------------------------------------------- records of an epoch
def epoch_records(fold: int, epoch: int, lr: float, time_s: float, train_stats: dict[str, float],
                  results: dict[str, dict[str, Any]], threshold: float | None) -> tuple[list[dict], dict[str, Any]]:
    """The metric records an epoch emits (train first, then each split), and its entry in the history."""
    records = [{"fold": fold, "epoch": epoch, "split": "train", "lr": lr, "time_s": round(time_s, 4), **train_stats}]
    entry: dict[str, Any] = {"epoch": epoch, "train": train_stats, "splits": {}}
    for name, r in results.items():
        rec = {"fold": fold, "epoch": epoch, "split": name, **r["metrics"]}
        if threshold is not None:
            rec["threshold"] = threshold
        records.append(rec)
        entry["splits"][name] = r["metrics"]
    return records, entry


def progress_fields(train_stats: dict[str, float], results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """What the progress bar shows of an epoch: the training loss and a few metrics of test (else val)."""
    metrics = (results.get("test") or results.get("val") or {"metrics": {}})["metrics"]
    bar_metrics = {k: f"{v:.3f}" for k, v in metrics.items() if k in SHOWN_METRICS}
    return {"loss": f"{train_stats.get('loss', float('nan')):.3f}", **bar_metrics}


# ---------------------------------------------------------------------------------------- selection, summary
def improved(best: dict[str, Any] | None, value: float, monitor: str) -> bool:
    """Whether ``value`` of the validation ``monitor`` beats the best epoch so far (NaN never does)."""
    if best is None or math.isnan(best["value"]):
        return not math.isnan(value)
    if math.isnan(value):
        return False
    return value > best["value"] if higher_is_better(monitor) else value < best["value"]


def stops_early(early_stopping, epoch: int, bad_epochs: int, has_val: bool) -> bool:
    """Whether ``train.early_stopping`` ends the fold after ``epoch`` (it needs a validation split)."""
    return (early_stopping is not None and has_val and epoch + 1 >= early_stopping.min_epochs
            and bad_epochs >= early_stopping.patience)


def summary(fold: int, history: list[dict[str, Any]], best: dict[str, Any] | None, monitor: str,
            eval_names: list[str], stopped_early: bool) -> dict[str, Any]:
    """The fold's summary: last epoch, validation-selected epoch, and (labelled) best epoch on test."""
    if not history:
        return {}
    last = history[-1]
    res: dict[str, Any] = {
        "fold": fold,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "last": {"epoch": last["epoch"], **last["splits"]},
    }
    if best is not None:
        sel = next(h for h in history if h["epoch"] == best["epoch"])
        res["selected"] = {"epoch": sel["epoch"], "monitor": f"val/{monitor}",
                           "threshold": best.get("threshold"), **sel["splits"]}
    test_names = [n for n in eval_names if n != "val"]
    if test_names:
        primary = test_names[0]
        key = "acc"
        best_h = max(history, key=lambda h: h["splits"][primary].get(key, -1))
        res["best_epoch_on_test"] = {
            "note": "OPTIMISTIC: epoch chosen on the test split itself (as some papers report); not a fair estimate",
            "split": primary, "epoch": best_h["epoch"], **best_h["splits"][primary],
        }
    return res
