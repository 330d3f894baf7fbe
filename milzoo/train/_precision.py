"""Mixed precision of the training steps, as ``train.precision`` asks: the autocast of each forward and, for
fp16 on a GPU, the gradient scaler of each backward and optimiser step.

Three modules carry the word "precision"; this one decides how the trainer *computes* (autocast, loss
scaling).  :mod:`milzoo.layers.precision` decides the float type of a model's *outputs* (losses and
probabilities in at least float32), and :mod:`milzoo.testing.precision` *checks* that components run in float64
(``train.precision = "fp64"``, which needs no autocast: the trainer doubles the weights instead).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from milzoo.train.settings import resolve_precision

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """``train.precision`` resolved on a device: ``precision`` (``auto`` made concrete), ``amp_dtype`` (the
    autocast type, None for fp32/fp64) and ``scaler`` (a GradScaler for fp16 on CUDA, else None)."""

    def __init__(self, setting: str, device: torch.device):
        self.device = device
        self.precision = resolve_precision(setting, device)
        if setting == "auto":
            log.info("train.precision = auto: %s on %s", self.precision, device)
        self.amp_dtype = _AUTOCAST_DTYPES.get(self.precision)
        self.scaler = torch.amp.GradScaler("cuda") if (self.precision == "fp16" and device.type == "cuda") else None

    def autocast(self):
        """The context of a forward pass: autocast to ``amp_dtype``, or nothing."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Gradients of ``loss``; with a scaler they are unscaled again at once, so clipping sees true norms."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step (a scaler skips it on inf/NaN gradients and adapts its scale)."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
