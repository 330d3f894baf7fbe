"""ABMIL pooling (methods.md section 1).

``e_i = w^T tanh(V h_i + b_V) + b_w`` (attention) or
``e_i = w^T (tanh(V h_i + b_V) * sigm(U h_i + b_U)) + b_w`` (gated);
``a = softmax_n(e)``; ``z = sum_i a_i h_i``; bag logits ``C z + b``.
Multi-class uses a k-way softmax classifier with one attention branch (1.4);
for k = 2 the two-logit softmax is the binary head.  Instance logits
``C h_i + b`` are exported for localisation and for PSAli ("ABMIL++").
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from milzoo.components import ComponentConfig, Pooling
from milzoo.masking import attention_pool, masked_softmax
from milzoo.output import MILOutput


class ABMILPooling(Pooling):
    """Attention-based MIL pooling (Ilse et al. 2018), plain or gated."""

    name = "abmil"

    class Config(ComponentConfig):
        attn_hidden: int = Field(default=128, gt=0, description="L, the attention hidden size")
        gated: bool = Field(default=False, description="gated attention (tanh * sigmoid)")
        dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the pooled feature")

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        L = config.attn_hidden
        self.attn_V = nn.Linear(in_dim, L)
        self.attn_U = nn.Linear(in_dim, L) if config.gated else None
        self.attn_w = nn.Linear(L, 1)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(in_dim, num_classes)

    def attention_scores(self, h: Tensor) -> Tensor:
        """Unnormalised scores ``e``: ``[B, N, d] -> [B, N]``."""
        a = torch.tanh(self.attn_V(h))
        if self.attn_U is not None:
            a = a * torch.sigmoid(self.attn_U(h))
        return self.attn_w(a).squeeze(-1)

    def instance_logits(self, h: Tensor) -> Tensor:
        return self.classifier(h)

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        scores = self.attention_scores(h)
        attention = masked_softmax(scores, mask)
        z = attention_pool(attention, h)
        bag_logits = self.classifier(self.dropout(z))
        inst_logits = self.classifier(h) * mask.unsqueeze(-1)
        return MILOutput(
            bag_logits=bag_logits,
            mask=mask,
            inst_logits=inst_logits,
            attention=attention,
            extras={"attention_scores": scores.masked_fill(~mask, 0.0), "bag_feature": z},
        )
