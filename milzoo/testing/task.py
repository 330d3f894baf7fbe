"""Checks of tasks: labels, fitting on training labels, predictions, metrics and the fitted state.

A task is checked on its own ``example_labels`` with a small model (mlp encoder + mean pooling whose head
has the task's ``out_dim`` outputs): the labels pass ``check_labels``, ``fit`` runs on them, ``predict``
gives one finite row of ``len(columns)`` values per bag, ``metrics`` returns finite numbers including
``loss``, and the fitted state survives a safetensors round trip into a fresh task (predictions identical).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from milzoo.testing._core import (
    ComponentSpec, fail, load_fresh, make_bags, make_dataset, padded_batch, register_check, safetensors_roundtrip,
)

TASK_DIM = 6
TASK_LENGTHS = [3, 1, 4, 2, 5, 3, 2, 4]
TASK_CLASSES = 2


def _setup(spec: ComponentSpec, seed: int = 0):
    from milzoo.builtin.encoders import MLPEncoder
    from milzoo.builtin.poolings import MeanPooling
    from milzoo.model.mil import MILModel

    task = spec.cls(spec.config())
    try:
        labels = list(task.example_labels(len(TASK_LENGTHS), seed=seed))
    except NotImplementedError:
        fail(spec, "the task needs example_labels(n, seed): n plausible labels the contract suite can use")
    if len(labels) != len(TASK_LENGTHS):
        fail(spec, f"example_labels({len(TASK_LENGTHS)}) returned {len(labels)} labels")
    bags = make_bags(TASK_LENGTHS, (TASK_DIM,), TASK_CLASSES, seed=40 + seed)
    for bag, y in zip(bags, labels):
        bag.y = y
    ds = make_dataset(bags, TASK_CLASSES)
    out_dim = task.out_dim(TASK_CLASSES)
    if not isinstance(out_dim, int) or out_dim < 1:
        fail(spec, f"out_dim({TASK_CLASSES}) must be a positive int, got {out_dim!r}")
    torch.manual_seed(seed)
    enc = MLPEncoder(MLPEncoder.Config(dims=[TASK_DIM]), (TASK_DIM,))
    model = MILModel(enc, MeanPooling(MeanPooling.Config(), enc.out_dim, out_dim), task=task)
    return task, ds, model


@register_check("task")
def check_task_labels_and_fit(spec: ComponentSpec) -> None:
    """``example_labels`` pass ``check_labels``; ``fit`` runs on them; the dataset's strata are integers."""
    task, ds, _ = _setup(spec)
    task.check_labels(ds.labels, "the example labels")
    task.fit(ds)
    strata = np.asarray(ds.strata)
    if strata.shape != (len(ds),) or not np.issubdtype(strata.dtype, np.integer):
        fail(spec, f"the labels give strata of shape {strata.shape} and type {strata.dtype}; k-fold splits need "
                   "one integer per bag (MILDataset.strata, docs/tasks.md)")


@register_check("task")
def check_task_predictions_and_metrics(spec: ComponentSpec) -> None:
    """``predict`` gives ``[B, len(columns)]`` finite values; ``metrics`` gives finite numbers and a ``loss``."""
    task, ds, model = _setup(spec)
    task.fit(ds)
    batch = padded_batch(ds)
    model.eval()
    with torch.no_grad():
        pred = task.predict(model(batch))
    columns = task.columns(ds.class_names)
    if tuple(pred.shape) != (len(ds), len(columns)):
        fail(spec, f"predict gave shape {tuple(pred.shape)}, expected ({len(ds)}, {len(columns)}) "
                   f"(one row per bag, one value per column {columns})")
    if not torch.isfinite(pred).all():
        fail(spec, "predict gave NaN/inf values")
    if not task.label_columns():
        fail(spec, "label_columns() is empty: the predictions file needs the labels' column names")
    metrics = task.metrics(ds.labels, pred.double().numpy())
    if "loss" not in metrics:
        fail(spec, f"metrics must include 'loss' (the default monitor); got {sorted(metrics)}")
    bad = {k: v for k, v in metrics.items() if not isinstance(v, float) or math.isinf(v)}
    if bad:
        fail(spec, f"metrics must be Python floats (NaN where undefined, never inf): {bad}")


@register_check("task")
def check_task_state_roundtrip(spec: ComponentSpec) -> None:
    """The fitted state survives a safetensors round trip: a fresh task loaded with it predicts the same."""
    task, ds, model = _setup(spec)
    task.fit(ds)
    state = safetensors_roundtrip(spec, task)
    fresh = spec.cls(spec.config())
    load_fresh(spec, fresh, state)
    batch = padded_batch(ds)
    model.eval()
    with torch.no_grad():
        out = model(batch)
        a, b = task.predict(out), fresh.predict(out)
    if not torch.equal(a, b):
        fail(spec, "a fresh task loaded with the fitted state predicts differently; keep fitted state in buffers")
