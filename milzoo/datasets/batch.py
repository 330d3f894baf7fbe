"""Bags and padded batches of bags.

A :class:`Bag` is one example: ``x`` holds its ``n`` instances (feature vectors
``[n, D]`` or images ``[n, C, H, W]``).  :func:`collate_bags` pads a list of bags
to the longest one and returns a :class:`MILBatch` with a boolean mask.  A batch
of one bag is the special case; components must give every bag the same result
whatever it is batched with (the contract suite checks this).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class Bag:
    x: Tensor  # [n, *instance_shape]
    y: Any  # bag label: a class index (int); a float or float vector for regression, (time, event) for survival
    bag_id: str = ""
    index: int = -1  # position in the dataset it came from (per-bag state, e.g. DEMIL)
    inst_y: Tensor | None = None  # [n] long, -1 where unknown
    candidates: Tensor | None = None  # [k] float {0,1}: candidate label set (partial-label MIL)
    coords: Tensor | None = None  # [n, 2] patch coordinates (slides)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class MILBatch:
    x: Tensor  # [B, N, *instance_shape], zero padded
    mask: Tensor  # [B, N] bool
    y: Tensor  # [B] long class indices, or float [B] / [B, t] (regression), [B, 2] (survival: time, event)
    index: Tensor  # [B] long
    bag_ids: list[str]
    inst_y: Tensor | None = None  # [B, N] long, -1 for unknown and padding
    candidates: Tensor | None = None  # [B, k]
    coords: Tensor | None = None  # [B, N, 2]
    meta: list[dict[str, Any]] = field(default_factory=list)
    #: True when every bag fills all N rows (no padding), known without reading ``mask``; None: look at it.
    #: Lets the model skip ``mask.all()``, a host sync per step on a GPU.
    unpadded: bool | None = None
    #: each bag's number of real instances, known on the host without reading ``mask``; they are the bag's first
    #: rows, as ``collate_bags`` (which fills it) pads.  None: not known.  A batch whose ``mask`` is changed
    #: must drop it.
    known_lengths: tuple[int, ...] | None = None

    @property
    def size(self) -> int:
        return int(self.x.shape[0])

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(dim=1)

    def host_lengths(self) -> list[int] | None:
        """Each bag's number of real instances as Python integers when the host knows them without reading
        ``mask`` (``known_lengths``, or every bag full when ``unpadded``); None otherwise.  ``MILModel`` hands
        them to poolings that take ``lengths``, so that they neither read ``mask`` back from a GPU (a host
        synchronisation per step) nor break a compiled step."""
        if self.known_lengths is not None:
            return list(self.known_lengths)
        if self.unpadded:
            b, n = self.mask.shape
            return [n] * b
        return None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MILBatch":
        def mv(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            x=mv(self.x),
            mask=mv(self.mask),
            y=mv(self.y),
            index=mv(self.index),
            inst_y=mv(self.inst_y),
            candidates=mv(self.candidates),
            coords=mv(self.coords),
        )

    def select(self, b: int) -> "MILBatch":
        """The single-bag batch of bag ``b``, trimmed to its real length."""
        n = int(self.mask[b].sum())

        def one(t, trim=True):
            if t is None:
                return None
            t = t[b : b + 1]
            return t[:, :n] if trim else t

        return MILBatch(
            x=one(self.x),
            mask=one(self.mask),
            y=one(self.y, trim=False),
            index=one(self.index, trim=False),
            bag_ids=[self.bag_ids[b]],
            inst_y=one(self.inst_y),
            candidates=one(self.candidates, trim=False),
            coords=one(self.coords),
            meta=[self.meta[b]] if self.meta else [],
            unpadded=True,
            known_lengths=(n,),
        )


def _labels(bags: list[Bag], dev: torch.device) -> Tensor:
    """The bags' labels as one tensor: ``[B]`` long for class indices, else float32 ``[B, ...]``."""
    if all(isinstance(b.y, (int, np.integer)) and not isinstance(b.y, bool) for b in bags):
        return torch.tensor([int(b.y) for b in bags], dtype=torch.long, device=dev)
    return torch.as_tensor(np.stack([np.asarray(b.y.cpu() if isinstance(b.y, Tensor) else b.y, dtype=np.float32)
                                     for b in bags]), device=dev)


def collate_bags(bags: list[Bag]) -> MILBatch:
    """Pad bags to the longest one and stack them into a :class:`MILBatch` (on the bags' device)."""
    if not bags:
        raise ValueError("collate_bags needs at least one bag")
    lengths = [len(b) for b in bags]
    n_max = max(lengths)
    first = bags[0].x
    dev = first.device
    if len(bags) == 1:
        # A single bag needs no padding: a view, not a copy (a whole-slide bag is
        # hundreds of MB, and copying it was a third of an ABMIL step).
        x = first.unsqueeze(0)
        mask = torch.ones(1, n_max, dtype=torch.bool, device=dev)
    elif all(n == n_max for n in lengths):
        x = torch.stack([b.x for b in bags])
        mask = torch.ones(len(bags), n_max, dtype=torch.bool, device=dev)
    else:
        x = first.new_zeros((len(bags), n_max, *first.shape[1:]))
        mask = torch.zeros(len(bags), n_max, dtype=torch.bool, device=dev)
        for i, bag in enumerate(bags):
            x[i, : lengths[i]] = bag.x
            mask[i, : lengths[i]] = True

    inst_y = None
    if any(b.inst_y is not None for b in bags):
        inst_y = torch.full((len(bags), n_max), -1, dtype=torch.long, device=dev)
        for i, bag in enumerate(bags):
            if bag.inst_y is not None:
                inst_y[i, : lengths[i]] = bag.inst_y.long()

    candidates = None
    if all(b.candidates is not None for b in bags):
        candidates = torch.stack([b.candidates.float() for b in bags])

    coords = None
    if all(b.coords is not None for b in bags):
        coords = torch.zeros(len(bags), n_max, 2, dtype=bags[0].coords.dtype, device=dev)
        for i, bag in enumerate(bags):
            coords[i, : lengths[i]] = bag.coords

    return MILBatch(
        x=x,
        mask=mask,
        y=_labels(bags, dev),
        index=torch.tensor([int(b.index) for b in bags], dtype=torch.long, device=dev),
        bag_ids=[b.bag_id for b in bags],
        inst_y=inst_y,
        candidates=candidates,
        coords=coords,
        meta=[b.meta for b in bags],
        unpadded=all(n == n_max for n in lengths),
        known_lengths=tuple(int(n) for n in lengths),
    )
