"""Weight averaging (SWA or EMA) of the model being trained, evaluated in its place.

Small MIL benchmarks (MUSK1 has 92 bags) make the weights after the last
epoch a noisy draw: one fold's validation accuracy still changes by a bag in
one of five consecutive epoch pairs late in training (docs/recipes.md).
Averaging the weights over the end of training (stochastic weight averaging,
Izmailov et al. 2018) or along it (an exponential moving average) depends less
on where the last step happened to land, with no selection on any split.  The averaging itself is torch's
:class:`torch.optim.swa_utils.AveragedModel`; this module decides when to
update it and keeps its buffers in step with the live model.

``train.average`` in a recipe::

    average = { kind = "swa", start = 0.75 }   # equal average of the weights after each epoch from 75% of the epochs
    average = { kind = "ema", decay = 0.99 }   # exponential moving average after every optimiser step

Buffers (batch-norm statistics, a standardiser's mean and std, prototypes a
pooling updates itself) are not averaged: the averaged model takes the live
model's buffers at every update, as they were computed for the live weights'
recent history.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverager:
    """Keeps an averaged copy of ``model``; ``cfg`` is the recipe's ``train.average`` section."""

    def __init__(self, cfg, model: nn.Module, epochs: int):
        self.kind = cfg.kind
        self.start_epoch = min(epochs - 1, int(math.floor(cfg.start * epochs)))
        fn = get_ema_multi_avg_fn(cfg.decay) if self.kind == "ema" else None
        self.averaged = AveragedModel(model, multi_avg_fn=fn, use_buffers=False)
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    @property
    def active(self) -> bool:
        """Whether the averaged weights exist yet (evaluate the live model until then)."""
        return self.n_averaged > 0

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def _update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)
        for mine, live in zip(self.averaged.module.buffers(), model.buffers()):
            mine.copy_(live)

    def after_step(self, model: nn.Module, epoch: int) -> None:
        if self.kind == "ema" and epoch >= self.start_epoch:
            self._update(model)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        if self.kind == "swa" and epoch >= self.start_epoch:
            self._update(model)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.averaged.load_state_dict(sd)
