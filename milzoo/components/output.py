"""What models and losses return.

All tensors are batched: ``B`` bags padded to ``N`` instances; ``mask[b, i]`` is
True for real instances.  Padded positions of instance-level tensors hold zeros
and must be ignored by consumers (use ``mask``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from milzoo.layers.precision import at_least_float32


def _softmax(logits: Tensor) -> Tensor:
    """Softmax in at least float32 (bf16/fp16 logits under autocast are upcast; float64 stays float64)."""
    return torch.softmax(at_least_float32(logits), dim=-1)


@dataclass
class MILOutput:
    """The common output of every pooling (methods.md section 0.3, batched).

    bag_logits:  ``[B, k]`` (DSMIL's multi-label mode anchors the negative class at logit 0).
    inst_logits: ``[B, N, k]`` instance class scores where the method defines them.
    attention:   ``[B, N]`` or ``[B, N, k]``, normalised over the real instances of a bag.
    mask:        ``[B, N]`` bool, True for real instances.
    features:    ``[B, N, d]`` the encoded instances the pooling saw (filled in by ``MILModel``).
    probs:       optional ``[B, k]`` class probabilities when softmax(bag_logits) is not right.
    inst_probs_override: optional ``[B, N, k]`` likewise for instances.
    extras:      method-specific tensors (DSMIL ``B``, PSAtt ``P_tilde``, DTFD tier-1 logits...).
    """

    bag_logits: Tensor
    mask: Tensor
    inst_logits: Tensor | None = None
    attention: Tensor | None = None
    features: Tensor | None = None
    probs: Tensor | None = None
    inst_probs_override: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def bag_probs(self) -> Tensor:
        """``[B, k]`` class probabilities of each bag."""
        if self.probs is not None:
            return self.probs
        return _softmax(self.bag_logits)

    @property
    def inst_probs(self) -> Tensor | None:
        """``[B, N, k]`` instance class probabilities, or None when the method has none."""
        if self.inst_probs_override is not None:
            return self.inst_probs_override
        if self.inst_logits is None:
            return None
        return _softmax(self.inst_logits)


@dataclass
class LossResult:
    """A scalar to minimise plus named parts for logging (already weighted)."""

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class TrainState:
    """What a loss may need to know about training progress."""

    epoch: int = 0  # 0-based
    num_epochs: int = 1
    step: int = 0
    fold: int = 0
    training: bool = True
