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
    """The common output of every pooling (docs/methods.md section 0.3, batched).

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


@dataclass
class RunInfo:
    """What an experiment logger (:class:`milzoo.components.Logger`) is told when a start of a run begins.

    ``hyperparameters`` is the resolved recipe (every default filled in, as ``recipe.toml`` holds it);
    ``folds`` the folds this start trains (a ``--fold`` job: one; a ``--resume``: those not yet complete);
    epochs and folds are numbered from 0, as in ``metrics.jsonl``.
    """

    name: str
    run_dir: Any  # pathlib.Path
    hyperparameters: dict[str, Any]
    num_folds: int
    epochs: int
    folds: list[int] = field(default_factory=list)
    resume: bool = False
    fold: int | None = None

    def flat_hyperparameters(self, sep: str = ".") -> dict[str, Any]:
        """The recipe as one level of ``section.key`` names (``train.epochs``, ``loss.0.name``) to numbers,
        strings and booleans; a list of plain values becomes its JSON text (``encoder.dims = "[256, 128]"``)."""
        import json

        flat: dict[str, Any] = {}

        def walk(value: Any, prefix: str) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, f"{prefix}{sep}{k}" if prefix else str(k))
            elif isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
                for i, v in enumerate(value):
                    walk(v, f"{prefix}{sep}{i}" if prefix else str(i))
            elif isinstance(value, (list, tuple)):
                flat[prefix] = json.dumps(list(value))
            elif value is None or isinstance(value, (bool, int, float, str)):
                flat[prefix] = "" if value is None else value
            else:
                flat[prefix] = str(value)

        walk(self.hyperparameters, "")
        return flat
