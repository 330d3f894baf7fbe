"""Log-sum-exp (LSE) pooling of instance scores.

Each instance gets class scores from a linear classifier, ``s_i = W h_i + b``
(``[n, k]``).  The bag's logit for class ``c`` is a smooth maximum of its
instances' scores with temperature ``r > 0``::

    normalize = "mean":  z_c = (1/r) log( (1/n) sum_i exp(r s_ic) )
    normalize = "sum":   z_c = (1/r) log(       sum_i exp(r s_ic) )

With ``"mean"``, ``z_c`` lies between the mean (``r -> 0``) and the maximum
(``r -> inf``) of the scores, whatever the bag size; ``"sum"`` adds
``log(n) / r``, so larger bags score higher.  The derivative of ``z_c`` with
respect to ``s_ic`` is ``softmax_i(r s_ic)``: how much each instance counts for
class ``c``.  It is exported as the per-class attention ``[B, N, k]``.

Scaling ``W`` scales the scores, so ``r`` and the classifier's weights trade
off: ``r`` mostly sets how max-like the pooling is at the start.  A very
max-like start (large ``r``) can lock onto the wrong instances, as max pooling
does; the default ``r = 1`` starts near the mean and sharpens as it learns.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from milzoo.components import ComponentConfig, MILOutput, Pooling
from milzoo.layers import masked_softmax


class LSEPooling(Pooling):
    """Log-sum-exp pooling of linear instance scores: a smooth max between mean (small r) and max (large r)."""

    name = "lse"
    # default_loss = "bag_ce"        (inherited: used when a recipe names no loss)
    # permutation_invariant = True   (inherited: the contract suite checks it)

    class Config(ComponentConfig):
        r: float = Field(
            default=1.0, gt=0.0, le=1e4,
            description="temperature r: small -> mean, large -> max (r and the classifier's weight scale "
            "trade off, so r mostly sets how max-like the pooling starts)",
        )
        learn_r: bool = Field(default=False, description="learn r (as log r, starting from `r`)")
        normalize: Literal["mean", "sum"] = Field(
            default="mean",
            description="'mean' divides the sum of exponentials by the bag size (bounded by mean and max); "
            "'sum' does not (larger bags score higher)",
        )

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.classifier = nn.Linear(in_dim, num_classes)
        # A learnable r is a parameter (saved with the weights); a fixed one lives in the config only.
        self.log_r = nn.Parameter(torch.tensor(math.log(config.r))) if config.learn_r else None

    @property
    def r(self) -> Tensor | float:
        return self.log_r.exp() if self.log_r is not None else self.config.r

    def instance_logits(self, h: Tensor) -> Tensor:
        """The instance scores ``s = W h + b``: ``[..., d] -> [..., k]`` (lets losses such as PSAli score instances)."""
        return self.classifier(h)

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        s = self.classifier(h)  # [B, N, k]
        r = self.r
        rs = r * s
        m = mask.unsqueeze(-1)
        # padding gets -inf, i.e. exp(.) = 0: it never contributes to the sum
        lse = torch.logsumexp(rs.masked_fill(~m, float("-inf")), dim=1)  # [B, k]
        if self.config.normalize == "mean":
            n = mask.sum(dim=1, keepdim=True).clamp_min(1).to(lse.dtype)
            lse = lse - torch.log(n)
        bag_logits = lse / r
        attention = masked_softmax(rs, mask)  # [B, N, k], zero at padding, sums to 1 per class
        return MILOutput(
            bag_logits=bag_logits,
            mask=mask,
            inst_logits=s * m,
            attention=attention,
        )
