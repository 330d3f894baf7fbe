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
from milzoo.metrics import higher_is_better, instance_accuracy, youden_threshold
from milzoo.train import _feed, random_stream

if TYPE_CHECKING:
    from milzoo.train.trainer import Trainer

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- predictions, metrics
@torch.no_grad()
def predict(tr: Trainer, ds: MILDataset) -> dict[str, Any]:
    """Bag predictions (the task's: class probabilities for classification), labels and instance predictions
    of a whole split, by ``tr.eval_model``."""
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
        probs.append(model.task.predict(out).cpu())
        ys.append(batch.y.cpu())
        ids.extend(batch.bag_ids)
        if batch.inst_y is not None and out.inst_probs is not None:
            inst_true.append(batch.inst_y[batch.mask].cpu())
            inst_probs.append(at_least_float32(out.inst_probs)[batch.mask].cpu())
    res = {
        "probs": torch.cat(probs).numpy() if probs else np.zeros((0, len(model.task.columns(ds.class_names)))),
        "y": torch.cat(ys).numpy() if ys else np.zeros((0, *np.shape(ds.labels)[1:]), dtype=ds.labels.dtype),
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
    on which splits are evaluated (:mod:`milzoo.train.random_stream`, step 6)."""
    with random_stream.evaluation(device):
        return {name: predict_split(ds) for name, ds in evals.items()}


def updated_threshold(protocol, preds: dict[str, dict[str, Any]], current: float | None) -> float | None:
    """The binary threshold after this evaluation: Youden's on validation when the protocol asks for it."""
    val = preds.get("val")
    if protocol.threshold == "youden" and val is not None and val["probs"].shape[1] == 2:
        return youden_threshold(val["y"], val["probs"][:, 1])
    return current


def evaluate(task, preds: dict[str, Any], threshold: float | None, groups: dict[str, Any] | None = None
             ) -> dict[str, float]:
    """The task's metrics of a split's predictions (with ``loss``), and instance accuracy where labels exist.

    With ``groups`` (bag id -> patient), the task's metrics of the patients too, as ``patient_<metric>``: a
    patient's prediction is the mean of its bags' predictions, its label their common label.
    """
    m = task.metrics(preds["y"], preds["probs"], threshold)
    if groups is not None:
        y, pred = patient_predictions(preds, groups)
        m.update({f"patient_{k}": v for k, v in task.metrics(y, pred, threshold).items()})
    if preds["inst_true"] is not None:
        m["inst_acc"] = instance_accuracy(preds["inst_true"], preds["inst_probs"])
    return m


def patient_predictions(preds: dict[str, Any], groups: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and mean predictions per patient, patients in order of first appearance.  A patient whose bags
    carry different labels is a :class:`~milzoo.errors.DataError`: its label would be a guess."""
    from milzoo.errors import DataError

    order: dict[Any, list[int]] = {}
    for i, bag_id in enumerate(preds["bag_ids"]):
        order.setdefault(groups.get(bag_id, bag_id), []).append(i)
    y, pred = np.asarray(preds["y"]), np.asarray(preds["probs"], dtype=np.float64)
    labels, means = [], []
    for patient, rows in order.items():
        first = y[rows[0]]
        if any(not np.array_equal(y[r], first) for r in rows[1:]):
            raise DataError(f"patient {patient!r} has bags with different labels ({sorted({str(y[r]) for r in rows})}); "
                            "patient-level metrics need one label per patient. Fix the table, or set "
                            "protocol.patient_metrics = \"none\".")
        labels.append(first)
        means.append(pred[rows].mean(axis=0))
    return np.stack(labels) if labels else y[:0], np.stack(means) if means else pred[:0]


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


# ---------------------------------------------------------------------------------------- selection, summary
def improved(best: dict[str, Any] | None, value: float, monitor: str, loss: float = math.nan) -> bool:
    """Whether an epoch with validation ``monitor`` = ``value`` (and validation ``loss``) becomes the selected one.

    A better ``value`` wins; NaN never does.  A tie (a saturated metric: validation AUC 1.0 from the first
    epoch on an easy set) is broken by the validation loss, and a tie of both by the later epoch, so the
    earliest of equal epochs (often a barely trained model) is never kept just for being first.
    """
    if best is None or math.isnan(best["value"]):
        return not math.isnan(value)
    if math.isnan(value):
        return False
    if value != best["value"]:
        return value > best["value"] if higher_is_better(monitor) else value < best["value"]
    best_loss = best.get("loss", math.nan)
    if math.isnan(loss) or math.isnan(best_loss) or loss == best_loss:
        return True  # the later epoch
    return loss < best_loss


def stops_early(early_stopping, epoch: int, bad_epochs: int, has_val: bool) -> bool:
    """Whether ``train.early_stopping`` ends the fold after ``epoch`` (it needs a validation split)."""
    return (early_stopping is not None and has_val and epoch + 1 >= early_stopping.min_epochs
            and bad_epochs >= early_stopping.patience)


def summary(fold: int, history: list[dict[str, Any]], best: dict[str, Any] | None, monitor: str,
            eval_names: list[str], stopped_early: bool, headline: str = "acc") -> dict[str, Any]:
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
    # validation splits (`val`, and `val_instances` of the image datasets) are never "test"
    test_names = [n for n in eval_names if n != "val" and not n.startswith("val_")]
    if test_names:
        primary = test_names[0]
        sign = 1 if higher_is_better(headline) else -1

        def score(h: dict[str, Any]) -> float:
            v = h["splits"][primary].get(headline, math.nan)
            return -math.inf if v is None or math.isnan(v) else sign * v

        best_h = max(history, key=score)
        res["best_epoch_on_test"] = {
            "note": "OPTIMISTIC: epoch chosen on the test split itself (as some papers report); not a fair estimate",
            "split": primary, "epoch": best_h["epoch"], **best_h["splits"][primary],
        }
    return res
