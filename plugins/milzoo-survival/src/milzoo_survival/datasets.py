"""Fashion-MNIST bags with a survival or a regression target that depends on their key instances, and a known
ceiling (docs/tasks.md, docs/results.md "Survival and regression benchmarks").

Every bag holds ``bag_size`` images: ``K`` of the key class (``key_class``, default 1 = "Trouser") and
``bag_size - K`` of the other nine classes, in random order; ``K`` is uniform on ``0 .. max_key``.  No image is
used twice in a split; the validation bags come from training images that no training bag uses, the test bags
from the test images.  The images are read by milzoo-vision's readers (the Debian package
``dataset-fashion-mnist``, or ``root``).

``fmnist_survival``: the event time is exponential with the hazard ``lambda_K = base_rate * exp(beta * K)``
(a Cox model whose log relative hazard is ``beta * K``); the censoring time is independent, exponential with the
rate ``mu`` solved so that the expected censored share is ``censoring`` (0.3):
``mean_K mu / (mu + lambda_K) = censoring``.  The observed label is ``(min(T, C), T <= C)``.  The oracle risk is
``beta * K``: its C-index on the test bags is the ceiling of any model (up to the noise of a finite test set).

``fmnist_regression``: the target is ``K / bag_size + noise * N(0, 1)``.  The oracle prediction is
``K / bag_size``: its RMSE (about ``noise``) and R² on the test bags are the noise-limited ceiling.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from milzoo.components import ComponentConfig, DatasetSource
from milzoo.datasets import MILDataset
from milzoo.datasets.images import IndexedImageBags
from milzoo.datasets.resident import Moved
from milzoo.errors import DataError

__all__ = ["FMNISTRegressionBags", "FMNISTSurvivalBags", "TargetImageBags", "censoring_rate"]


class TargetImageBags(IndexedImageBags):
    """Bags of equal length (index rows into a shared uint8 image tensor) with float labels: ``(time, event)``
    pairs ``[B, 2]`` (survival) or one target ``[B]`` (regression).  ``key_counts`` and ``oracle`` keep the
    generative model's truth for the benchmark's ceiling."""

    def __init__(self, images: torch.Tensor, index: np.ndarray, labels: np.ndarray, key_counts: np.ndarray,
                 oracle: np.ndarray, class_names: list[str], prefix: str):
        super().__init__(images, index, class_names, prefix)
        self._labels = np.ascontiguousarray(labels, dtype=np.float64)
        self._labels_t = torch.from_numpy(self._labels.astype(np.float32))
        self.key_counts = np.asarray(key_counts, dtype=np.int64)
        self.oracle = np.asarray(oracle, dtype=np.float64)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def strata(self) -> np.ndarray:
        """What k-fold splits stratify by: the event indicator (survival) or the key count (regression)."""
        return self._labels[:, 1].astype(np.int64) if self._labels.ndim == 2 else self.key_counts

    def label_of(self, i: int):
        y = self._labels[i]
        return tuple(float(v) for v in y) if y.ndim else float(y)

    def label_nbytes(self) -> int:
        return self._labels_t.numel() * 4

    def resident_labels(self, moved: Moved) -> torch.Tensor:
        return moved(self._labels_t)


def censoring_rate(hazards: np.ndarray, share: float) -> float:
    """The rate ``mu`` of exponential censoring for which the expected censored share of bags with the given
    (equally likely) exponential event hazards is ``share``: ``mean(mu / (mu + hazards)) = share``."""
    hazards = np.asarray(hazards, dtype=np.float64)
    if share <= 0:
        return 0.0
    lo, hi = 1e-12, 1e12
    for _ in range(200):  # bisection in log space; the share grows with mu
        mid = math.sqrt(lo * hi)
        if float(np.mean(mid / (mid + hazards))) < share:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


class _TargetBagsConfig(ComponentConfig):
    root: str | None = Field(default=None, description="directory with the Fashion-MNIST files (default: "
                             "docs/vision.md's search order, e.g. the Debian package dataset-fashion-mnist)")
    download: bool = Field(default=False, description="download the files with torchvision when missing")
    bag_size: PositiveInt = Field(default=16, le=4096, description="instances per bag")
    key_class: NonNegativeInt = Field(default=1, le=9, description="the key class (1 = Trouser)")
    max_key: NonNegativeInt = Field(default=4, description="key instances per bag: uniform on 0..max_key")
    train_bags: PositiveInt = Field(default=800, description="training bags (from the training images)")
    val_bags: NonNegativeInt = Field(default=200, description="validation bags (other training images); 0: none")
    test_bags: PositiveInt = Field(default=400, description="test bags (from the test images)")
    seed: int = Field(default=0, ge=0, description="seed of the bags and of their targets")

    @model_validator(mode="after")
    def _sizes(self):
        if self.max_key > self.bag_size:
            raise ValueError(f"max_key ({self.max_key}) cannot exceed bag_size ({self.bag_size})")
        return self


class _TargetBagsSource(DatasetSource):
    """Builds the bags (images and key counts); subclasses draw each bag's target from its key count."""

    Config = _TargetBagsConfig
    label_names: list[str] = []

    @classmethod
    def downloads(cls, config) -> tuple[str, ...]:
        return ("fmnist",)  # milzoo-vision's Fashion-MNIST download

    def targets(self, k: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(labels, oracle) of bags with key counts ``k``."""
        raise NotImplementedError  # pragma: no cover - interface

    def _read(self):
        try:
            from milzoo_vision import readers
        except ImportError:
            raise DataError(f"the {self.name!r} dataset reads Fashion-MNIST with milzoo-vision's readers: install it "
                            "(pip install milzoo-vision, or milzoo-survival[fmnist]).") from None
        return readers.load_fmnist(self.config.root, self.config.download)

    def load(self) -> dict[str, MILDataset]:
        cfg = self.config
        data = self._read()
        rng = np.random.default_rng([cfg.seed, 7])

        def pools(labels):
            key = rng.permutation(np.flatnonzero(labels == cfg.key_class))
            other = rng.permutation(np.flatnonzero(labels != cfg.key_class))
            return [key, 0], [other, 0]  # pool, next unused position

        def bags(images, key_pool, other_pool, n_bags, prefix, split):
            k = rng.integers(0, cfg.max_key + 1, size=n_bags)
            index = np.empty((n_bags, cfg.bag_size), dtype=np.int64)
            for b in range(n_bags):
                taken = []
                for pool, count in ((key_pool, int(k[b])), (other_pool, cfg.bag_size - int(k[b]))):
                    start = pool[1]
                    if start + count > len(pool[0]):
                        raise DataError(
                            f"{self.name}: the {split} bags need more distinct images than Fashion-MNIST has "
                            f"({len(pool[0])} in the pool); lower {split}_bags, bag_size or max_key."
                        )
                    taken.append(pool[0][start:start + count])
                    pool[1] = start + count
                index[b] = rng.permutation(np.concatenate(taken))
            labels, oracle = self.targets(k, rng)
            return TargetImageBags(images, index, labels, k, oracle, self.label_names, prefix)

        key_tr, other_tr = pools(data.train_y)
        out: dict[str, MILDataset] = {"train": bags(data.train_x, key_tr, other_tr, cfg.train_bags, "train-", "train")}
        if cfg.val_bags:
            out["val"] = bags(data.train_x, key_tr, other_tr, cfg.val_bags, "val-", "val")
        key_te, other_te = pools(data.test_y)
        out["test"] = bags(data.test_x, key_te, other_te, cfg.test_bags, "test-", "test")
        return out


class FMNISTSurvivalBags(_TargetBagsSource):
    """Fashion-MNIST bags with exponential event times whose log-hazard is beta x (key instances); 30% censored."""

    name = "fmnist_survival"
    label_names = ["time", "event"]

    class Config(_TargetBagsConfig):
        beta: float = Field(default=0.8, ge=-10.0, le=10.0, description="log hazard ratio per key instance")
        base_rate: float = Field(default=1.0 / 48.0, gt=0.0, description="event hazard of a bag without key "
                                 "instances (per time unit: a median of 33 for 1/48)")
        censoring: float = Field(default=0.3, ge=0.0, lt=1.0, description="expected share of censored bags "
                                 "(independent exponential censoring)")

    def hazards(self, k: np.ndarray) -> np.ndarray:
        return self.config.base_rate * np.exp(self.config.beta * np.asarray(k, dtype=np.float64))

    def censoring_rate(self) -> float:
        return censoring_rate(self.hazards(np.arange(self.config.max_key + 1)), self.config.censoring)

    def targets(self, k, rng):
        t = rng.exponential(1.0 / self.hazards(k))
        mu = self.censoring_rate()
        c = rng.exponential(1.0 / mu, size=len(k)) if mu > 0 else np.full(len(k), np.inf)
        labels = np.stack([np.minimum(t, c), (t <= c).astype(np.float64)], axis=1)
        return labels, self.config.beta * k.astype(np.float64)


class FMNISTRegressionBags(_TargetBagsSource):
    """Fashion-MNIST bags whose target is the share of key instances plus Gaussian noise."""

    name = "fmnist_regression"
    label_names = ["target"]

    class Config(_TargetBagsConfig):
        noise: float = Field(default=0.03, ge=0.0, le=10.0, description="standard deviation of the target noise")

    def targets(self, k, rng):
        mean = k.astype(np.float64) / self.config.bag_size
        return mean + self.config.noise * rng.standard_normal(len(k)), mean
