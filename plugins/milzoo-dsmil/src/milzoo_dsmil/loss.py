"""DSMIL loss (docs/methods.md 2.2): ``0.5 * l(y_bag, y) + 0.5 * l(y_max, y)``.

Multi-label mode: ``l`` is BCE-with-logits against the one-hot target of the
positive classes (class 0, the negative class, is the all-zero target), as in
every version of the official code.  Multi-class mode: ``l`` is softmax CE (2.5).
The mode is read from the width of the stream logits (k-1 or k columns).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from milzoo.components.base import ComponentConfig, Loss
from milzoo.errors import ComponentError
from milzoo.components.output import LossResult
from milzoo.layers.precision import at_least_float32


class DSMILLoss(Loss):
    """Weighted sum of the bag-stream and max-stream losses of DSMIL (0.5 / 0.5)."""

    name = "dsmil"

    class Config(ComponentConfig):
        bag_weight: float = Field(default=0.5, ge=0.0, description="weight of the bag-stream loss")
        max_weight: float = Field(default=0.5, ge=0.0, description="weight of the max-stream loss")
        pos_weight: float | Literal["auto"] | None = Field(
            default=None,
            description="multi-label only: BCE pos_weight for every positive class; 'auto' = "
            "#negative/#positive bags per class from the training set (train_mil.py)",
        )

        @field_validator("pos_weight")
        @classmethod
        def _positive(cls, v):
            if isinstance(v, float) and not v > 0:
                raise ValueError("pos_weight must be > 0, 'auto' or left out")
            return v

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        pw = config.pos_weight
        init = float(pw) if isinstance(pw, float) else 1.0
        self.register_buffer("pos_weight", torch.full((max(num_classes - 1, 1),), init))

    def bind(self, model, dataset):
        from milzoo_dsmil.pooling import DSMILPooling

        pooling = getattr(model, "pooling", None)
        if not isinstance(pooling, DSMILPooling):
            raise ComponentError(
                f"loss 'dsmil' needs the 'dsmil' pooling (it reads both DSMIL streams), but the model "
                f"uses {getattr(pooling, 'name', type(pooling).__name__)!r}; set [pooling] name = "
                f"\"dsmil\" or use another loss such as 'bag_ce'."
            )
        if pooling.num_classes != self.num_classes:
            raise ComponentError(
                f"loss 'dsmil' was built for {self.num_classes} classes but the pooling has "
                f"{pooling.num_classes}; build both from the same dataset."
            )
        if self.config.pos_weight is not None and not pooling.multilabel:
            raise ComponentError(
                "loss 'dsmil' option pos_weight weights the sigmoid outputs of mode = \"multilabel\", but the "
                "pooling uses mode = \"multiclass\" (a softmax), where it would do nothing; remove pos_weight "
                "from the [[loss]] table, or set [pooling] mode = \"multilabel\"."
            )
        if self.config.pos_weight == "auto":  # multilabel here: any pos_weight with multiclass was refused above
            y = torch.as_tensor(dataset.labels, dtype=torch.long)
            pos = torch.stack([(y == j).sum() for j in range(1, self.num_classes)]).float()
            neg = float(len(y)) - pos
            self.pos_weight.copy_(torch.where(pos > 0, neg / pos.clamp_min(1.0), torch.ones_like(pos)))

    def forward(self, out, batch, state):
        try:
            z_bag = at_least_float32(out.extras["bag_stream_logits"])
            z_max = at_least_float32(out.extras["max_stream_logits"])
        except KeyError:
            raise ComponentError(
                "loss 'dsmil' needs the outputs of the 'dsmil' pooling (extras 'bag_stream_logits' "
                "and 'max_stream_logits'); use [pooling] name = \"dsmil\"."
            ) from None
        k = self.num_classes
        y = batch.y
        if z_bag.shape[-1] == k - 1:  # multi-label: implicit negative class 0
            target = F.one_hot(y, k)[:, 1:].to(z_bag.dtype)
            pw = self.pos_weight.to(z_bag.dtype)
            l_bag = F.binary_cross_entropy_with_logits(z_bag, target, pos_weight=pw)
            l_max = F.binary_cross_entropy_with_logits(z_max, target, pos_weight=pw)
        elif z_bag.shape[-1] == k:
            l_bag = F.cross_entropy(z_bag, y)
            l_max = F.cross_entropy(z_max, y)
        else:
            raise ComponentError(
                f"loss 'dsmil' got {z_bag.shape[-1]} stream outputs for {k} classes; build the loss "
                "and the pooling for the same number of classes."
            )
        bag = self.config.bag_weight * l_bag
        mx = self.config.max_weight * l_max
        total = bag + mx
        return LossResult(total=total, parts={"dsmil_bag": bag.detach(), "dsmil_max": mx.detach()})
