"""Device-resident splits: whole datasets kept on the training device, batches built by indexing there.

A dataset that can hand its tensors to the training device once implements two
methods (duck-typed, like the rest of :class:`~milzoo.datasets.base.MILDataset`)::

    def resident_nbytes(self, seen: set[int]) -> int | None   # bytes still to move (``seen``: shared tensors
                                                              # counted already); None: not possible now
    def to_resident(self, device, moved: Moved) -> ResidentSplit

and the trainer then builds every step's :class:`~milzoo.datasets.batch.MILBatch` with a
few indexing kernels on the device instead of a DataLoader that makes one
:class:`~milzoo.datasets.batch.Bag` per bag on the host and copies the collated batch.
The batches are the same, element for element, as those of the DataLoader path
(``tests/test_resident.py``): the DataLoader path stays for data that does not
fit and for datasets without these methods.

Folds (:class:`~milzoo.datasets.base.MILSubset`, nested or not) are resolved to
their root dataset here, so ``Bag.index`` keeps the root's numbering, as there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from milzoo.datasets.batch import MILBatch


class Moved:
    """Host tensor -> its copy on the device, so a tensor shared by several splits moves once."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._copies: dict[int, tuple[Tensor, Tensor]] = {}  # id(host) -> (host kept alive, device copy)

    def __call__(self, t: Tensor) -> Tensor:
        key = id(t)
        if key not in self._copies:
            self._copies[key] = (t, t.to(self.device))
        return self._copies[key][1]

    def host_ids(self) -> set[int]:
        """Ids of the host tensors moved so far (for :func:`nbytes`)."""
        return set(self._copies)

    def index(self, a: np.ndarray) -> Tensor:
        """An int64 index array (not shared) on the device."""
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)


def tensor_nbytes(t: Tensor, seen: set[int]) -> int:
    """Bytes of ``t`` unless already counted (``seen`` collects the ids of counted tensors)."""
    if id(t) in seen:
        return 0
    seen.add(id(t))
    return t.numel() * t.element_size()


class ResidentSplit(ABC):
    """A split on the device.  ``rows`` are positions in the split (host ints), ``rows_dev`` the same on
    the device (an int64 tensor): implementations index with whichever they need, without a host sync."""

    bag_ids: list[str]

    @abstractmethod
    def batch(self, rows: list[int], rows_dev: Tensor) -> MILBatch: ...


def _root(ds) -> tuple[object, np.ndarray | None]:
    """The dataset under any chain of subsets, and the split's positions in it (None: the dataset itself)."""
    from milzoo.datasets.base import MILSubset

    positions = None
    while isinstance(ds, MILSubset):
        idx = np.asarray(ds.indices, dtype=np.int64)
        positions = idx if positions is None else idx[positions]
        ds = ds.parent
    return ds, positions


def supports(ds) -> bool:
    root, _ = _root(ds)
    return callable(getattr(root, "to_resident", None)) and callable(getattr(root, "resident_nbytes", None))


def nbytes(ds, seen: set[int]) -> int | None:
    """Bytes ``ds`` would add on the device, or None when it cannot be resident (e.g. slides without a cache)."""
    root, positions = _root(ds)
    need = root.resident_nbytes(seen)
    if need is None:
        return None
    return int(need) + (0 if positions is None else positions.nbytes)


def pin_host_memory(ds) -> None:
    """Pin the host memory of ``ds`` (or of the dataset under its subsets) when it offers ``pin_memory()``."""
    root, _ = _root(ds)
    pin = getattr(root, "pin_memory", None)
    if callable(pin):
        pin()


class _SubsetSplit(ResidentSplit):
    def __init__(self, inner: ResidentSplit, positions: np.ndarray, moved: Moved):
        self.inner = inner
        self.positions = positions
        self.positions_dev = moved.index(positions)
        ids = inner.bag_ids
        self.bag_ids = [ids[i] for i in positions]

    def batch(self, rows: list[int], rows_dev: Tensor) -> MILBatch:
        return self.inner.batch([int(self.positions[r]) for r in rows], self.positions_dev[rows_dev])


def make_resident(ds, moved: Moved) -> ResidentSplit:
    root, positions = _root(ds)
    split = root.to_resident(moved.device, moved)
    return split if positions is None else _SubsetSplit(split, positions, moved)


def iterate(split: ResidentSplit, batches: Sequence[Sequence[int]], device: torch.device) -> Iterator[MILBatch]:
    """The batches of ``split`` in the given order (lists of positions).

    The whole order goes to the device in one copy; each step then slices it.
    """
    flat = [int(i) for b in batches for i in b]
    order = torch.tensor(flat, dtype=torch.long)
    if device.type == "cuda":
        order = order.pin_memory().to(device, non_blocking=True)
    else:
        order = order.to(device)
    start = 0
    for b in batches:
        rows = flat[start : start + len(b)]
        yield split.batch(rows, order[start : start + len(b)])
        start += len(b)
