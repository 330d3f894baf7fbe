"""The built-in tasks: classification (the default) and regression.

A task says what a bag's label is and what is done with the model's bag outputs (docs/tasks.md).
Classification is what milzoo always did: class indices, ``num_classes`` logits, softmax probabilities, the
bag metrics of :func:`milzoo.metrics.bag_metrics`.  Regression predicts one or more continuous targets,
standardised on each fold's training bags; the fitted mean and scale are buffers of the task, so a checkpoint
carries them and predictions come back in the target's own units.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from milzoo.components.base import ComponentConfig, Task
from milzoo.components.output import MILOutput
from milzoo.errors import DataError
from milzoo.layers.precision import at_least_float32
from milzoo.metrics import bag_metrics, regression_metrics


class ClassificationTask(Task):
    """Class labels: the bag head has one logit per class; predictions are class probabilities."""

    name = "classification"
    headline = "acc"
    thresholds = True
    #: labels are class indices (losses such as bag_ce need them)
    classes = True

    class Config(ComponentConfig):
        pass

    def out_dim(self, num_classes: int) -> int:
        return int(num_classes)

    def example_labels(self, n: int, seed: int = 0) -> list[Any]:
        return [i % 2 for i in range(n)]

    def check_labels(self, labels: Any, where: str) -> None:
        y = np.asarray(labels)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: the classification task needs one class index per bag, but the labels are "
                            f"{y.dtype} of shape {list(y.shape)}. Set [task] name = \"regression\" (or "
                            "\"survival\") for continuous labels, or fix the label column.")

    def predict(self, out: MILOutput) -> Tensor:
        return at_least_float32(out.bag_probs)

    def columns(self, class_names: list[str]) -> list[str]:
        return [f"p_{c}" for c in class_names]

    def metrics(self, y: Any, pred: Any, threshold: float | None = None) -> dict[str, float]:
        """Accuracy, AUC, F1 (:func:`~milzoo.metrics.bag_metrics`) and the mean cross-entropy as ``loss``."""
        y = np.asarray(y)
        m = bag_metrics(y, pred, threshold)
        eps = 1e-7
        m["loss"] = float(-np.log(np.clip(pred[np.arange(len(y)), y], eps, 1.0)).mean()) if len(y) else math.nan
        return m


class RegressionTask(Task):
    """Continuous targets: the bag head has one output per target, trained on standardised targets.

    The targets are standardised with the mean and standard deviation of each fold's training bags (fitted
    before training, kept in the checkpoint); predictions are returned in the targets' own units.  Metrics:
    MAE, RMSE, R², Pearson's and Spearman's correlation (averaged over targets), and ``loss``, the mean
    squared error in standardised units (what the ``mse`` loss minimises).
    """

    name = "regression"
    default_loss = "mse"
    headline = "r2"
    classes = False

    class Config(ComponentConfig):
        targets: int = Field(default=1, ge=1, le=1024, description="number of continuous targets per bag")
        standardize: bool = Field(default=True, description="train on targets standardised on each fold's "
                                                            "training bags (predictions stay in their units)")

    def __init__(self, config: Config):
        super().__init__(config)
        t = config.targets
        self.register_buffer("target_mean", torch.zeros(t))
        self.register_buffer("target_scale", torch.ones(t))

    def out_dim(self, num_classes: int) -> int:
        return self.config.targets

    def _as_matrix(self, labels: Any, where: str) -> np.ndarray:
        y = np.asarray(labels, dtype=np.float64)
        y = y[:, None] if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[1] != self.config.targets:
            raise DataError(f"{where}: the regression task expects {self.config.targets} target(s) per bag, but the "
                            f"labels have shape {list(np.asarray(labels).shape)}. Set task.targets or fix the "
                            "target columns.")
        return y

    def check_labels(self, labels: Any, where: str) -> None:
        if np.issubdtype(np.asarray(labels).dtype, np.integer):
            raise DataError(f"{where}: the regression task got integer labels, which is what a dataset gives for "
                            "class indices; give the continuous target column (the slides dataset: target = "
                            "\"regression\" and target_columns), or write integer targets as floats.")
        y = self._as_matrix(labels, where)
        bad = np.flatnonzero(~np.isfinite(y).all(axis=1))
        if bad.size:
            raise DataError(f"{where}: {bad.size} bag(s) have a missing or non-finite target (e.g. positions "
                            f"{bad[:5].tolist()}); drop those bags or fill their targets.")

    def fit(self, train) -> None:
        y = self._as_matrix(train.labels, "the training bags")
        if not self.config.standardize:
            return
        mean, scale = y.mean(axis=0), y.std(axis=0)
        if len(y) < 2 or not (scale > 0).all():
            raise DataError("the training bags' targets do not vary (a single bag, or the same value everywhere): "
                            "nothing can be learnt about them. Check the target column and the split.")
        self.target_mean.copy_(torch.as_tensor(mean, dtype=self.target_mean.dtype))
        self.target_scale.copy_(torch.as_tensor(scale, dtype=self.target_scale.dtype))

    def standardized(self, y: Tensor) -> Tensor:
        """Batch targets ``[B]`` or ``[B, t]`` in the units the head is trained in, ``[B, t]``."""
        y = y.reshape(y.shape[0], -1).to(self.target_mean.dtype)
        return (y - self.target_mean) / self.target_scale

    def predict(self, out: MILOutput) -> Tensor:
        z = at_least_float32(out.bag_logits)[:, : self.config.targets]
        return z * self.target_scale.to(z.dtype) + self.target_mean.to(z.dtype)

    def columns(self, class_names: list[str]) -> list[str]:
        t = self.config.targets
        return ["pred"] if t == 1 else [f"pred_{i}" for i in range(t)]

    def label_columns(self) -> list[str]:
        t = self.config.targets
        return ["target"] if t == 1 else [f"target_{i}" for i in range(t)]

    def example_labels(self, n: int, seed: int = 0) -> list[Any]:
        g = np.random.default_rng(seed)
        values = g.normal(size=(n, self.config.targets))
        return [float(v[0]) if self.config.targets == 1 else v.astype(np.float32) for v in values]

    def metrics(self, y: Any, pred: Any, threshold: float | None = None) -> dict[str, float]:
        y = np.asarray(y, dtype=np.float64).reshape(len(pred), -1)
        pred = np.asarray(pred, dtype=np.float64)
        m = regression_metrics(y, pred)
        scale = self.target_scale.detach().cpu().double().numpy()
        m["loss"] = float(np.mean(((pred - y) / scale) ** 2)) if len(y) else math.nan
        return m
