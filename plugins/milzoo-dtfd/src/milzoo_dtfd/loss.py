"""DTFD-MIL loss (docs/methods.md 3.3): ``L = L1 + L2``.

``L1`` is the cross-entropy of every pseudo-bag's tier-1 logits against the
parent bag label, averaged over the pseudo-bags of a bag (then over bags);
``L2`` is the cross-entropy of the tier-2 (bag) logits.  The pooling detaches
the distilled features, so ``L2`` trains tier 2 only and ``L1`` trains the
reduction and tier 1: the single-optimiser equivalent of the official two
optimisers ([choice] in 3.3).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from milzoo.components.base import ComponentConfig, Loss
from milzoo.errors import ComponentError
from milzoo.components.output import LossResult
from milzoo.layers.precision import at_least_float32


class DTFDLoss(Loss):
    """Tier-1 pseudo-bag cross-entropy plus tier-2 bag cross-entropy of DTFD-MIL."""

    name = "dtfd"

    class Config(ComponentConfig):
        tier1_weight: float = Field(default=1.0, ge=0.0, description="weight of L1 (pseudo-bag CE)")
        tier2_weight: float = Field(default=1.0, ge=0.0, description="weight of L2 (bag CE)")
        tier1_ce_input: Literal["logits", "probabilities"] = Field(
            default="logits",
            description="L1 as cross-entropy of the tier-1 logits (DTFD-MIL), or of their softmax outputs, as "
            "the PSMIL code's 'dta' baseline computes it (CrossEntropyLoss on probabilities: softmax twice)",
        )

    def bind(self, model, dataset):
        from milzoo_dtfd.pooling import DTFDPooling

        pooling = getattr(model, "pooling", None)
        if not isinstance(pooling, DTFDPooling):
            raise ComponentError(
                f"loss 'dtfd' needs the 'dtfd' pooling (it reads the tier-1 pseudo-bag logits), but the "
                f"model uses {getattr(pooling, 'name', type(pooling).__name__)!r}; set [pooling] name = "
                f"\"dtfd\" or use another loss such as 'bag_ce'."
            )

    def forward(self, out, batch, state):
        try:
            t1 = at_least_float32(out.extras["tier1_logits"])
            pmask = out.extras["pseudo_mask"]
        except KeyError:
            raise ComponentError(
                "loss 'dtfd' needs the outputs of the 'dtfd' pooling (extras 'tier1_logits' and "
                "'pseudo_mask'); use [pooling] name = \"dtfd\"."
            ) from None
        Bn, M, k = t1.shape
        y = batch.y
        scores = torch.softmax(t1, dim=-1) if self.config.tier1_ce_input == "probabilities" else t1
        ce1 = F.cross_entropy(scores.reshape(Bn * M, k), y.repeat_interleave(M), reduction="none").view(Bn, M)
        w = pmask.to(ce1.dtype)
        l1 = ((ce1 * w).sum(1) / w.sum(1).clamp_min(1.0)).mean()
        l2 = F.cross_entropy(at_least_float32(out.bag_logits), y)
        p1 = self.config.tier1_weight * l1
        p2 = self.config.tier2_weight * l2
        return LossResult(total=p1 + p2, parts={"dtfd_tier1": p1.detach(), "dtfd_tier2": p2.detach()})
