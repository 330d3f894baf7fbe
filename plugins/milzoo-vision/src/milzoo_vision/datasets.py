"""The PSMIL synthetic image-bag benchmarks (docs/methods.md section 7.6, paper App. A.3).

A bag of class ``c`` holds ``num_key`` (5) key images of class ``c`` and
``bag_size - num_key`` (59) background images of ``background_class`` (0).  Key
images are never reused across bags; background images are drawn at random for
every bag (distinct within a bag), so they are reused across bags.  Class-0 bags
follow the [choice] of docs/methods.md 7.6: 5 non-reused class-0 "key" images plus 59
other class-0 images, so there are floor(#class-0 / 5) of them like every class.
Instance order inside a bag is shuffled.

Splits returned by ``load()``:

- ``train``: bags from the training images (or, with ``instance_bags``, every
  training image as a bag of one: the supervised ceiling),
- ``test``: bags built the same way from the test images,
- ``test_instances``: every test image as a bag of one labelled with its class,
  the paper's metric (single-instance accuracy),
- with ``val_fraction > 0``: ``val`` and ``val_instances`` likewise from a
  stratified share of the *training* images held out before any bag is built.

Bags store indices into one shared uint8 image tensor per original split and
return float32 images in ``[0, 1]`` (``[n, C, H, W]``) with ``inst_y`` set for
every instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from milzoo.components.base import ComponentConfig, DatasetSource
from milzoo.datasets.base import MILDataset
from milzoo.datasets.images import IndexedImageBags
from milzoo.datasets.resident import Moved
from milzoo.errors import DataError
from milzoo_vision import readers


class ImageBagDataset(IndexedImageBags):
    """Bags of equal length given as index rows into a shared uint8 image tensor, with a class per bag and
    per instance."""

    def __init__(
        self,
        images: torch.Tensor,
        index: np.ndarray,
        inst_labels: np.ndarray,
        labels: np.ndarray,
        class_names: list[str],
        prefix: str,
    ):
        super().__init__(images, index, class_names, prefix)
        self.inst_labels = np.ascontiguousarray(inst_labels, dtype=np.int64)  # [B, n]
        self._labels = np.ascontiguousarray(labels, dtype=np.int64)  # [B]

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def label_of(self, i: int) -> int:
        return int(self._labels[i])

    def resident_labels(self, moved: Moved) -> torch.Tensor:
        return moved.index(self._labels)


# --------------------------------------------------------------------------- bag construction
def stratified_holdout(labels: np.ndarray, pool: np.ndarray, fraction: float, rng: np.random.Generator):
    """Split ``pool`` (indices into ``labels``) into (keep, held out), ``fraction`` of each class held out."""
    keep, held = [], []
    for c in np.unique(labels[pool]):
        members = rng.permutation(pool[labels[pool] == c])
        n_held = int(round(fraction * len(members)))
        held.append(members[:n_held])
        keep.append(members[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def build_bags(
    labels: np.ndarray,
    pool: np.ndarray,
    num_classes: int,
    bag_size: int,
    num_key: int,
    background_class: int,
    rng: np.random.Generator,
    max_bags_per_class: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthesize key/background bags from the images ``pool`` (indices into ``labels``).

    Returns ``(index [B, bag_size], inst_y [B, bag_size], y [B])``, bags in class order.
    """
    n_bg = bag_size - num_key
    pool = np.asarray(pool, dtype=np.int64)
    pool_labels = labels[pool]
    background = pool[pool_labels == background_class]
    all_idx, all_inst, all_y = [], [], []
    for c in range(num_classes):
        members = rng.permutation(pool[pool_labels == c])
        n_bags = len(members) // num_key
        if max_bags_per_class is not None:
            n_bags = min(n_bags, max_bags_per_class)
        if n_bags == 0:
            continue
        keys = members[: n_bags * num_key].reshape(n_bags, num_key)
        bgs = np.empty((n_bags, n_bg), dtype=np.int64)
        if n_bg > 0:
            if len(background) == 0:
                raise DataError(
                    f"no images of the background class {background_class} are available to fill the bags; "
                    "check `background_class` (and `val_fraction`, which shrinks the pools)."
                )
            for b in range(n_bags):
                src = background
                if c == background_class:  # a class-0 bag must not repeat its own key images
                    src = np.setdiff1d(background, keys[b], assume_unique=True)
                    if len(src) == 0:
                        src = background
                bgs[b] = rng.choice(src, size=n_bg, replace=len(src) < n_bg)
        idx = np.concatenate([keys, bgs], axis=1)
        inst = np.concatenate(
            [np.full((n_bags, num_key), c, dtype=np.int64), np.full((n_bags, n_bg), background_class, dtype=np.int64)],
            axis=1,
        )
        order = rng.permuted(np.tile(np.arange(bag_size), (n_bags, 1)), axis=1)
        all_idx.append(np.take_along_axis(idx, order, axis=1))
        all_inst.append(np.take_along_axis(inst, order, axis=1))
        all_y.append(np.full(n_bags, c, dtype=np.int64))
    if not all_idx:
        return (np.zeros((0, bag_size), np.int64), np.zeros((0, bag_size), np.int64), np.zeros(0, np.int64))
    return np.concatenate(all_idx), np.concatenate(all_inst), np.concatenate(all_y)


def singleton_bags(labels: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pool = np.asarray(pool, dtype=np.int64)
    y = labels[pool].astype(np.int64)
    return pool[:, None], y[:, None], y


# --------------------------------------------------------------------------- sources
class ImageBagsConfig(ComponentConfig):
    root: str | None = Field(
        default=None,
        description="directory with the dataset files (default: see docs/vision.md for the search order)",
    )
    download: bool = Field(default=False, description="download the files with torchvision when missing")
    bag_size: PositiveInt = Field(default=64, description="instances per bag")
    num_key: PositiveInt = Field(default=5, description="key instances (of the bag's class) per bag")
    background_class: NonNegativeInt = Field(default=0, description="class whose images fill the rest of a bag")
    max_bags_per_class: PositiveInt | None = Field(
        default=None, description="cap on bags per class in every bag split (small runs)"
    )
    seed: int = Field(default=0, description="seed of the bag construction and the validation split")
    instance_bags: bool = Field(
        default=False,
        description="train on every image of the training bags as a bag of one with its own label (the "
        "supervised ceiling; with max_bags_per_class, only the images of the capped bags)",
    )
    val_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="share of the training images (stratified) held out as 'val' / 'val_instances' before bagging",
    )

    @model_validator(mode="after")
    def _check_sizes(self):
        if self.num_key > self.bag_size:
            raise ValueError(f"num_key ({self.num_key}) cannot exceed bag_size ({self.bag_size})")
        return self


class _ImageBagsSource(DatasetSource):
    Config = ImageBagsConfig
    #: (root, download) -> ImageSplits
    reader: Callable[[str | None, bool], readers.ImageSplits]
    #: the download (``milzoo data list``) that holds the images
    download_name: ClassVar[str]

    @classmethod
    def downloads(cls, config) -> tuple[str, ...]:
        return (cls.download_name,)

    def __init__(self, config):
        super().__init__(config)
        self.class_names: list[str] = []

    def read(self) -> readers.ImageSplits:
        return type(self).reader(self.config.root, self.config.download)

    def load(self) -> dict[str, MILDataset]:
        cfg = self.config
        data = self.read()
        k = len(data.class_names)
        self.class_names = list(data.class_names)
        for split, y in (("train", data.train_y), ("test", data.test_y)):
            if len(y) and (y.min() < 0 or y.max() >= k):
                raise DataError(f"{self.name}: {split} labels outside 0..{k - 1} in {data.location}.")
        if cfg.background_class >= k:
            raise DataError(
                f"background_class = {cfg.background_class} but {self.name} has {k} classes (0..{k - 1})."
            )

        def rng(stream: int) -> np.random.Generator:
            return np.random.default_rng([cfg.seed, stream])

        def bags(images, labels, pool, stream, prefix):
            idx, inst, y = build_bags(
                labels, pool, k, cfg.bag_size, cfg.num_key, cfg.background_class, rng(stream),
                cfg.max_bags_per_class,
            )
            if len(idx) == 0:
                raise DataError(
                    f"{self.name}: the {prefix.rstrip('-')} split has no class with {cfg.num_key} images, so no "
                    "bag can be built; lower `num_key` or raise `val_fraction`."
                )
            return ImageBagDataset(images, idx, inst, y, data.class_names, prefix)

        def singles(images, labels, pool, prefix):
            idx, inst, y = singleton_bags(labels, pool)
            return ImageBagDataset(images, idx, inst, y, data.class_names, prefix)

        train_pool = np.arange(len(data.train_y))
        out: dict[str, MILDataset] = {}
        if cfg.val_fraction > 0:
            train_pool, val_pool = stratified_holdout(data.train_y, train_pool, cfg.val_fraction, rng(0))
            if len(val_pool) == 0 or len(train_pool) == 0:
                raise DataError(f"val_fraction = {cfg.val_fraction} leaves an empty split; choose another value.")
        if cfg.instance_bags:
            # the images of the training bags the MIL recipes would build (same seed, caps and validation
            # split), each as a bag of one: the supervised ceiling sees exactly the MIL models' images
            bag_images = np.unique(bags(data.train_x, data.train_y, train_pool, 1, "train-").index)
            out["train"] = singles(data.train_x, data.train_y, bag_images, "train-img")
        else:
            out["train"] = bags(data.train_x, data.train_y, train_pool, 1, "train-")
        if cfg.val_fraction > 0:
            out["val"] = bags(data.train_x, data.train_y, val_pool, 2, "val-")
            out["val_instances"] = singles(data.train_x, data.train_y, val_pool, "val-img")
        test_pool = np.arange(len(data.test_y))
        out["test"] = bags(data.test_x, data.test_y, test_pool, 3, "test-")
        out["test_instances"] = singles(data.test_x, data.test_y, test_pool, "test-img")
        return out


class FashionMNISTBags(_ImageBagsSource):
    """Fashion-MNIST image bags (1x28x28, 10 classes, background 'T-shirt/top'), PSMIL App. A.3."""

    name = "fmnist_bags"
    download_name = "fmnist"
    reader = staticmethod(readers.load_fmnist)


class SVHNBags(_ImageBagsSource):
    """SVHN image bags (3x32x32, 10 digits, background digit 0), PSMIL App. A.3."""

    name = "svhn_bags"
    download_name = "svhn"
    reader = staticmethod(readers.load_svhn)


class CIFAR10Bags(_ImageBagsSource):
    """CIFAR-10 image bags (3x32x32, 10 classes, background 'airplane'), PSMIL App. A.3."""

    name = "cifar10_bags"
    download_name = "cifar10"
    reader = staticmethod(lambda root, download: readers.load_cifar(root, download, 10))


class CIFAR100Bags(_ImageBagsSource):
    """CIFAR-100 image bags (3x32x32, 100 fine classes, background 'apple'), PSMIL App. A.3."""

    name = "cifar100_bags"
    download_name = "cifar100"
    reader = staticmethod(lambda root, download: readers.load_cifar(root, download, 100))
