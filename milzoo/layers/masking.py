"""Mask-aware tensor operations shared by poolings.

Padding must never change a bag's result, so every reduction over instances
goes through one of these helpers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def bag_lengths(mask: Tensor, lengths: Sequence[int] | None = None) -> list[int]:
    """Each bag's number of real instances, as Python integers.

    ``lengths`` when the caller knows them (``MILModel`` passes a batch's to poolings with
    ``takes_lengths``); else they are read from ``mask``, which on a GPU waits for the device (a host
    synchronisation) and in a compiled step breaks the graph.
    """
    if lengths is not None:
        return [int(n) for n in lengths]
    return [int(n) for n in mask.sum(1).tolist()]


def is_padded(mask: Tensor, lengths: Sequence[int] | None = None) -> bool:
    """Whether some bag of ``mask [B, N]`` has padding (fewer than ``N`` real instances); from ``lengths``
    when given, without reading ``mask`` (see :func:`bag_lengths`)."""
    if lengths is not None:
        n = mask.shape[1]
        return any(int(k) < n for k in lengths)
    return not bool(mask.all())


def real_rows(mask: Tensor, count: int) -> Tensor:
    """The flat positions ``[count]`` (long, ascending: the order of ``x[mask]``) of the ``True`` entries of
    ``mask``, given how many there are.

    ``x.flatten(0, 1).index_select(0, real_rows(mask, m))`` is ``x[mask]``, and ``index_copy`` with the same
    positions undoes it; neither reads anything back, where boolean indexing makes a GPU count the rows first
    (a host synchronisation).  A stable sort puts the real entries first, in their order.
    """
    return torch.argsort((~mask).flatten().to(torch.uint8), stable=True)[:count]


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax over instances, giving exactly zero weight to padding.

    ``scores`` is ``[B, N]`` or ``[B, N, K]``; ``mask`` is ``[B, N]``.
    """
    m = mask if scores.dim() == mask.dim() else mask.unsqueeze(-1)
    # padding gets the lowest finite score: exp(lowest - max) is exactly 0 next to any real instance, as
    # exp(-inf) is, and a bag with no real instance gets zeros from the last product instead of NaN; three
    # operators, none of them a read back to the host
    filled = torch.where(m, scores, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * m


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real instances: ``[B, N, d] -> [B, d]``."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def masked_max(h: Tensor, mask: Tensor) -> Tensor:
    """Max over the real instances: ``[B, N, d] -> [B, d]``."""
    filled = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return filled.max(dim=1).values


def attention_pool(attention: Tensor, h: Tensor) -> Tensor:
    """``sum_i a_i h_i``: ``[B, N] x [B, N, d] -> [B, d]``."""
    return torch.bmm(attention.unsqueeze(1).to(h.dtype), h).squeeze(1)
