"""RGMIL: regressor-guided pooling (docs/methods.md section 6).

For ``k`` classes there are ``K = k - 1`` binary branches (``K = 1`` is the
binary model of section 6.1; ``K > 1`` the ordinal multi-class model of 6.2).
Branch ``j`` has a regressor ``C_j in R^{d x 2}`` without bias:

- instance scores ``z_ij = C_j^T h_i``, difference ``delta_ij = z_ij1 - z_ij0``;
- ``alpha_j = softmax_n(standardise_n(delta_j))``: zero mean, unit variance over
  the bag's *real* instances (biased variance, ``eps`` inside the square root,
  no affine parameters: the official code builds a fresh ``LayerNorm(n)``);
- bag feature ``F_j = alpha_j^T H`` and branch logits ``C_j^T F_j``.

Branch ``j`` says "the bag's label is ``j``"; class 0 is every branch negative.
The class distribution is the cascade ``P(c) = p_c prod_{j>c} (1 - p_j)``
(``p_0 = 1``, ``p_j`` = branch ``j``'s positive probability): the probability
that ``c`` is the highest positive branch, which is exactly the event the
official accuracy rule checks (branch ``Y`` positive, every higher branch
negative, lower branches ignored).  ``bag_logits`` holds ``log P`` (for
``k = 2`` the branch's own two logits, which give the same softmax).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.layers.masking import masked_softmax
from milzoo.components.output import MILOutput


def masked_standardize(x: Tensor, mask: Tensor, eps: float) -> Tensor:
    """Standardise ``x [..., N]`` over the real positions of ``mask [..., N]``; zeros at padding.

    Matches ``layer_norm(x, (n,), eps=eps)`` without affine on each bag's real
    instances (biased variance); a bag of one instance gives 0.
    """
    m = mask.to(x.dtype)
    count = m.sum(dim=-1, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim=-1, keepdim=True) / count
    centred = (x - mean) * m
    var = (centred * centred).sum(dim=-1, keepdim=True) / count
    return centred / torch.sqrt(var + eps)


def cascade_log_probs(branch_logits: Tensor) -> Tensor:
    """``[..., K, 2]`` branch logits -> ``[..., K+1]`` ``log P(c)``, ``P(c) = p_c prod_{j>c} (1 - p_j)``."""
    logp = torch.log_softmax(branch_logits, dim=-1)
    log_neg, log_pos = logp[..., 0], logp[..., 1]  # [..., K]
    # sum_{j > c} log(1 - p_j) for c = 0..K: reversed cumulative sum, shifted by one
    above = torch.flip(torch.cumsum(torch.flip(log_neg, [-1]), dim=-1), [-1])  # sum_{j >= c}, c = 1..K
    zero = torch.zeros_like(above[..., :1])
    above_c = torch.cat([above, zero], dim=-1)  # c = 0..K: sum_{j > c}
    log_pc = torch.cat([zero, log_pos], dim=-1)  # log p_0 = 0
    return log_pc + above_c


def ordinal_rule(branch_logits: Tensor) -> Tensor:
    """The official decision: the highest positive branch (argmax of its two logits), else 0."""
    positive = branch_logits.argmax(dim=-1) == 1  # [..., K]; ties -> negative, like torch.argmax
    k = positive.shape[-1]
    ranks = torch.arange(1, k + 1, device=positive.device)
    return (positive * ranks).amax(dim=-1)


class RGMILPooling(Pooling):
    """Regressor-guided pooling: the bag classifier's instance scores, standardised, are the attention (Du et al. 2023)."""

    name = "rgmil"
    #: classification only: it has one binary branch per class (docs/tasks.md)
    tasks = ("classification",)
    default_loss = "rgmil_branch_ce"

    class Config(ComponentConfig):
        train_regressor: bool = Field(
            default=False,
            description="train the regressors C_j; the official scripts never update them (docs/methods.md 6.3)",
        )
        init: Literal["kaiming_uniform", "kaiming_normal"] = Field(
            default="kaiming_uniform",
            description="regressor init on the [d, 2] layout (fan_in = 2): benchmarks use uniform, MMNIST normal",
        )
        eps: float = Field(default=1e-5, gt=0.0, description="epsilon of the instance standardisation")

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        branches = num_classes - 1
        weight = torch.empty(branches, in_dim, 2)
        init = nn.init.kaiming_uniform_ if config.init == "kaiming_uniform" else nn.init.kaiming_normal_
        for j in range(branches):
            init(weight[j])  # a [d, 2] matrix: torch takes fan_in = 2, as the official code does
        self.regressor = nn.Parameter(weight, requires_grad=config.train_regressor)

    @property
    def num_branches(self) -> int:
        return self.num_classes - 1

    def _class_logits(self, branch_logits: Tensor) -> Tensor:
        if self.num_branches == 1:
            return branch_logits[..., 0, :]
        return cascade_log_probs(branch_logits)

    def instance_logits(self, h: Tensor) -> Tensor:
        """``softmax(C_j^T h_i)`` per branch, combined like the bag: ``[..., d] -> [..., k]``."""
        z = torch.einsum("...d,jdc->...jc", h, self.regressor.to(h.dtype))
        return self._class_logits(z)

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        c = self.regressor.to(h.dtype)
        z = torch.einsum("bnd,jdc->bjnc", h, c)  # [B, K, N, 2]
        delta = z[..., 1] - z[..., 0]  # [B, K, N]
        mk = mask.unsqueeze(1).expand_as(delta)
        std = masked_standardize(delta, mk, self.config.eps)
        alpha = masked_softmax(std, mk, dim=-1)  # [B, K, N]
        feats = alpha @ h  # [B, K, d]
        branch_logits = torch.einsum("bjd,jdc->bjc", feats, c)  # [B, K, 2]
        bag_logits = self._class_logits(branch_logits)
        pred = ordinal_rule(branch_logits)  # [B]

        # attention: the branch of the predicted label; for a predicted 0 (no branch),
        # the branch most likely to be positive
        p_pos = torch.softmax(branch_logits.detach(), dim=-1)[..., 1]
        branch = torch.where(pred > 0, pred - 1, p_pos.argmax(dim=-1))
        attention = alpha.gather(1, branch.view(-1, 1, 1).expand(-1, 1, alpha.shape[-1])).squeeze(1)

        m = mask.unsqueeze(-1).to(h.dtype)
        inst_logits = self._class_logits(z.transpose(1, 2)) * m  # [B, N, k]
        return MILOutput(
            bag_logits=bag_logits,
            mask=mask,
            inst_logits=inst_logits,
            attention=attention,
            extras={
                "branch_logits": branch_logits,
                "branch_attention": alpha.transpose(1, 2),  # [B, N, K]
                "branch_scores": std.transpose(1, 2),  # standardised delta, [B, N, K]
                "ordinal_pred": pred,
                "bag_feature": feats,  # [B, K, d]
            },
        )
