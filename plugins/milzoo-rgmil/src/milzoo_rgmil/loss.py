"""RGMIL's branch loss (docs/methods.md section 6.2): ``sum_j NLL(log_softmax(logits_j), [j == Y])``.

With two classes there is one branch and this is the plain bag cross-entropy of
section 6.1.  With ``K > 1`` branches every branch is trained one-vs-rest
(branch ``j`` positive iff the bag label is ``j``; class 0 = all negative),
summed over branches and averaged over the bags of a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from milzoo.components.base import ComponentConfig, Loss
from milzoo.errors import ComponentError
from milzoo.components.output import LossResult
from milzoo.layers.precision import at_least_float32


class RGMILBranchLoss(Loss):
    """Sum over RGMIL's binary branches of their cross-entropy (branch j positive iff label == j)."""

    name = "rgmil_branch_ce"

    class Config(ComponentConfig):
        weight: float = Field(default=1.0, ge=0.0, description="multiplier of the loss")

    def bind(self, model, dataset) -> None:
        if getattr(model.pooling, "name", "") != "rgmil":
            raise ComponentError(
                f"loss 'rgmil_branch_ce' trains the binary branches of the 'rgmil' pooling, but the model's "
                f"pooling is {model.pooling.name!r}, which has none. Use pooling 'rgmil' with this loss, or "
                f"use 'bag_ce' with this pooling."
            )

    def forward(self, out, batch, state):
        branch_logits = out.extras.get("branch_logits")
        if branch_logits is None:
            raise ComponentError(
                "loss 'rgmil_branch_ce' needs out.extras['branch_logits'] from the 'rgmil' pooling; "
                "pair it with pooling 'rgmil' or use 'bag_ce'."
            )
        b, k = branch_logits.shape[:2]
        ranks = torch.arange(1, k + 1, device=batch.y.device)
        targets = (batch.y.view(-1, 1) == ranks).long()  # [B, K]
        per_branch = F.cross_entropy(
            at_least_float32(branch_logits).reshape(b * k, 2), targets.reshape(-1), reduction="none"
        ).view(b, k)
        total = self.config.weight * per_branch.sum(dim=1).mean()
        return LossResult(total=total, parts={"rgmil_branch_ce": total.detach()})
