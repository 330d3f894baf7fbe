"""Dataset interface: an indexable collection of :class:`~milzoo.datasets.batch.Bag`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from milzoo.datasets.batch import Bag


class MILDataset(Dataset):
    """Base class.  Subclasses implement ``__len__``, ``get_bag`` and the properties.

    ``labels`` (bag labels, one per bag) and ``groups`` (e.g. patient ids, or
    None) are used by the protocols to build stratified, grouped splits without
    loading any bag.
    """

    class_names: list[str]
    instance_shape: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def groups(self) -> np.ndarray | None:
        return None

    @property
    def strata(self) -> np.ndarray:
        """What k-fold splits stratify by: the class labels; for other labels a task-specific summary (the
        event indicator of survival labels, quantile bins of a regression target: docs/tasks.md)."""
        return label_strata(self.labels)

    @property
    def bag_ids(self) -> list[str]:
        return [str(i) for i in range(len(self))]

    @property
    def has_instance_labels(self) -> bool:
        return False

    def get_bag(self, i: int) -> Bag:  # pragma: no cover - interface
        raise NotImplementedError

    def __getitem__(self, i: int) -> Bag:
        bag = self.get_bag(int(i))
        bag.index = int(i)
        return bag

    def subset(self, indices: Sequence[int]) -> "MILSubset":
        return MILSubset(self, indices)

    def instance_matrix(self) -> torch.Tensor:
        """All instances of all bags stacked (small datasets only: this holds them all in memory)."""
        return torch.cat([self.get_bag(i).x for i in range(len(self))], dim=0)


def label_strata(labels: np.ndarray, bins: int = 4) -> np.ndarray:
    """Integer strata of labels: class indices as they are; ``(time, event)`` pairs by their event indicator;
    a continuous target by its quartile (of its first column)."""
    y = np.asarray(labels)
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        return y
    if y.ndim == 2 and y.shape[1] == 2 and np.isin(y[:, 1], (0, 1)).all() and (y[:, 0] >= 0).all():
        return y[:, 1].astype(np.int64)  # survival: stratify by event
    first = y.reshape(len(y), -1)[:, 0].astype(np.float64)
    if len(first) < bins:
        return np.zeros(len(first), dtype=np.int64)
    edges = np.quantile(first, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, first, side="right").astype(np.int64)


class BagListDataset(MILDataset):
    """Bags held in memory as a list."""

    def __init__(self, bags: list[Bag], class_names: list[str], groups: Sequence | None = None):
        if not bags:
            raise ValueError("a dataset needs at least one bag")
        self.bags = bags
        self.class_names = list(class_names)
        self.instance_shape = tuple(bags[0].x.shape[1:])
        classes = all(isinstance(b.y, (int, np.integer)) for b in bags)
        self._labels = np.array([b.y for b in bags], dtype=np.int64 if classes else np.float64)
        self._groups = None if groups is None else np.asarray(groups)

    def __len__(self) -> int:
        return len(self.bags)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def groups(self) -> np.ndarray | None:
        return self._groups

    @property
    def bag_ids(self) -> list[str]:
        return [b.bag_id for b in self.bags]

    @property
    def has_instance_labels(self) -> bool:
        return any(b.inst_y is not None for b in self.bags)

    def get_bag(self, i: int) -> Bag:
        b = self.bags[i]
        return Bag(
            x=b.x, y=b.y, bag_id=b.bag_id, inst_y=b.inst_y, candidates=b.candidates,
            coords=b.coords, meta=b.meta,
        )

    def instance_matrix(self) -> torch.Tensor:
        return torch.cat([b.x for b in self.bags], dim=0)


class MILSubset(MILDataset):
    """A view of some bags of another dataset (a fold).  ``Bag.index`` stays the
    index in the *parent*, so per-bag state (DEMIL soft labels) is stable across folds."""

    def __init__(self, parent: MILDataset, indices: Sequence[int]):
        self.parent = parent
        self.indices = np.asarray(indices, dtype=np.int64)
        self.class_names = parent.class_names
        self.instance_shape = parent.instance_shape

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.parent.labels[self.indices]

    @property
    def groups(self) -> np.ndarray | None:
        g = self.parent.groups
        return None if g is None else g[self.indices]

    @property
    def bag_ids(self) -> list[str]:
        ids = self.parent.bag_ids
        return [ids[i] for i in self.indices]

    @property
    def has_instance_labels(self) -> bool:
        return self.parent.has_instance_labels

    @property
    def parent_size(self) -> int:
        p = self.parent
        return p.parent_size if isinstance(p, MILSubset) else len(p)

    def get_bag(self, i: int) -> Bag:
        return self.parent[int(self.indices[i])]

    def __getitem__(self, i: int) -> Bag:
        # keep the parent's index (set by the parent's __getitem__)
        return self.get_bag(int(i))

    def instance_matrix(self) -> torch.Tensor:
        return torch.cat([self.get_bag(i).x for i in range(len(self))], dim=0)


def dataset_size_for_state(ds: MILDataset) -> int:
    """Number of slots per-bag state needs so that every ``Bag.index`` fits."""
    return ds.parent_size if isinstance(ds, MILSubset) else len(ds)
