"""Mask-aware tensor operations shared by poolings.

Padding must never change a bag's result, so every reduction over instances
goes through one of these helpers.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
