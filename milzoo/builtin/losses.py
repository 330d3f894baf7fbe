"""The bag-level cross-entropy loss."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from milzoo.components.base import ComponentConfig, Loss
from milzoo.components.output import LossResult
from milzoo.layers.precision import at_least_float32


class BagCrossEntropy(Loss):
    """Cross-entropy of the bag logits against the bag label (softmax over k classes).

    For k = 2 this equals the Bernoulli NLL of ABMIL's sigmoid head with the
    logit difference as its input.
    """

    name = "bag_ce"

    class Config(ComponentConfig):
        weight: float = Field(default=1.0, ge=0.0)
        label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)

    def forward(self, out, batch, state):
        loss = F.cross_entropy(
            at_least_float32(out.bag_logits), batch.y, label_smoothing=self.config.label_smoothing
        )
        total = self.config.weight * loss
        return LossResult(total=total, parts={"bag_ce": total.detach()})
