"""Image bags stored as index rows into one shared uint8 image tensor, and their device-resident form.

Many image benchmarks build every bag from a few shared image tensors (MNIST-, CIFAR- and Fashion-MNIST-bags):
storing a bag as a row of indices keeps one copy of each image, and on the training device a step's batch is
one gather of uint8 images and one conversion to float.  milzoo-vision's ``ImageBagDataset`` (a class per bag
and per instance) and milzoo-survival's ``TargetImageBags`` (a time and an event, or a number) build on it.
"""

from __future__ import annotations

import numpy as np
import torch

from milzoo.datasets.base import MILDataset
from milzoo.datasets.batch import Bag, MILBatch
from milzoo.datasets.resident import Moved, ResidentSplit, tensor_nbytes

__all__ = ["IndexedImageBags", "ResidentImageBags"]


class IndexedImageBags(MILDataset):
    """Bags of equal length given as index rows into a shared uint8 image tensor ``[N, C, H, W]``; images come
    out as float32 in ``[0, 1]``.  A subclass says what a bag's label is through ``labels``, ``label_of`` and
    ``resident_labels``; one with instance labels sets ``inst_labels`` (``[B, n]``)."""

    inst_labels: np.ndarray | None = None

    def __init__(self, images: torch.Tensor, index: np.ndarray, class_names: list[str], prefix: str):
        if len(index) == 0:
            raise ValueError("an image bag dataset needs at least one bag")
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor [N, C, H, W]")
        self.images = images
        self.index = np.ascontiguousarray(index, dtype=np.int64)  # [B, n]
        self.class_names = list(class_names)
        self.instance_shape = tuple(images.shape[1:])
        self.prefix = prefix

    def __len__(self) -> int:
        return len(self.index)

    @property
    def bag_ids(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(len(self))]

    @property
    def has_instance_labels(self) -> bool:
        return self.inst_labels is not None

    def label_of(self, i: int):
        raise NotImplementedError

    def resident_labels(self, moved: Moved) -> torch.Tensor:
        """The bag labels as one tensor on the training device (what ``MILBatch.y`` holds)."""
        raise NotImplementedError

    def label_nbytes(self) -> int:
        return self.labels.nbytes * 2

    def get_bag(self, i: int) -> Bag:
        x = self.images[torch.from_numpy(self.index[i])].to(torch.float32).div_(255.0)
        inst = None if self.inst_labels is None else torch.from_numpy(self.inst_labels[i].copy())
        return Bag(x=x, y=self.label_of(i), bag_id=f"{self.prefix}{i}", inst_y=inst)

    def instance_matrix(self) -> torch.Tensor:
        uniq = torch.from_numpy(np.unique(self.index))
        return self.images[uniq].to(torch.float32).div_(255.0)

    # device-resident batches (milzoo.resident): the uint8 images move once, shared by the splits using them
    def resident_nbytes(self, seen: set[int]) -> int:
        inst = 0 if self.inst_labels is None else self.inst_labels.nbytes
        return tensor_nbytes(self.images, seen) + self.index.nbytes * 2 + inst + self.label_nbytes()

    def to_resident(self, device, moved: Moved) -> ResidentSplit:
        return ResidentImageBags(self, moved)


class ResidentImageBags(ResidentSplit):
    """An :class:`IndexedImageBags` on the device: a step's batch is one gather of uint8 images and one
    conversion to float there, the same values as ``get_bag`` + ``collate_bags``."""

    def __init__(self, ds: IndexedImageBags, moved: Moved):
        self.images = moved(ds.images)
        self.index = moved.index(ds.index)
        self.inst_labels = None if ds.inst_labels is None else moved.index(ds.inst_labels)
        self.labels = ds.resident_labels(moved)
        self.bag_ids = ds.bag_ids
        self.device = moved.device

    def batch(self, rows: list[int], rows_dev: torch.Tensor) -> MILBatch:
        ix = self.index[rows_dev]  # [B, n]
        x = self.images[ix].to(torch.float32).div_(255.0)  # [B, n, C, H, W]
        return MILBatch(
            x=x,
            mask=torch.ones(ix.shape, dtype=torch.bool, device=self.device),
            y=self.labels[rows_dev],
            index=rows_dev,
            bag_ids=[self.bag_ids[r] for r in rows],
            inst_y=None if self.inst_labels is None else self.inst_labels[rows_dev],
            meta=[{} for _ in rows],
            unpadded=True,
            known_lengths=(ix.shape[1],) * ix.shape[0],
        )
