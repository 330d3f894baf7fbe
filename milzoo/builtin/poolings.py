"""Baseline poolings: mean and max over instances, then a linear classifier."""

from __future__ import annotations

from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.layers.masking import masked_max, masked_mean
from milzoo.components.output import MILOutput


class _LinearHeadPooling(Pooling):
    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.classifier = nn.Linear(in_dim, num_classes)

    def instance_logits(self, h: Tensor) -> Tensor:
        return self.classifier(h)


class MeanPooling(_LinearHeadPooling):
    """Mean of the instance features, then a linear classifier."""

    name = "mean"

    class Config(ComponentConfig):
        pass

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        z = masked_mean(h, mask)
        inst = self.classifier(h) * mask.unsqueeze(-1)
        attention = mask.to(h.dtype) / mask.sum(1, keepdim=True).clamp_min(1)
        return MILOutput(bag_logits=self.classifier(z), mask=mask, inst_logits=inst, attention=attention)


class MaxPooling(_LinearHeadPooling):
    """Feature-wise max over instances, then a linear classifier."""

    name = "max"

    class Config(ComponentConfig):
        pass

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        z = masked_max(h, mask)
        inst = self.classifier(h) * mask.unsqueeze(-1)
        return MILOutput(bag_logits=self.classifier(z), mask=mask, inst_logits=inst)
