"""ABMIL pooling (docs/methods.md section 1).

``e_i = w^T tanh(V h_i + b_V) + b_w`` (attention) or
``e_i = w^T (tanh(V h_i + b_V) * sigm(U h_i + b_U)) + b_w`` (gated);
``a = softmax_n(e)``; ``z = sum_i a_i h_i``; bag logits ``C z + b``.
Multi-class uses a k-way softmax classifier with one attention branch (1.4);
for k = 2 the two-logit softmax is the default binary head, and ``head =
"sigmoid"`` is the official one: one logit ``t = c^T z + b``, ``P(Y=1) =
sigm(t)``, exported as the logits ``[0, t]`` so that ``bag_ce`` is its Bernoulli
NLL.  Instance logits ``C h_i + b`` (``[0, c^T h_i + b]``) are exported for
localisation and for PSAli ("ABMIL++").

The PSMIL paper's ABMIL baseline (the official ``fsa`` pooling of
``LMBDA-design/PSAMIL``) is ``attention = "linear"``: ``e_i = w^T h_i + b_w``
(one ``Linear(d -> 1)``, no tanh, no ``V``), with ``classifier =
"kaiming_nobias"``: the bias-free ``d x k`` matrix ``W`` of that code, logits
``z W`` (``milzoo.heads``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.errors import ComponentError
from milzoo.layers.heads import bag_classifier
from milzoo.layers.masking import attention_pool, masked_softmax
from milzoo.components.output import MILOutput


class ABMILPooling(Pooling):
    """Attention-based MIL pooling (Ilse et al. 2018), plain or gated."""

    name = "abmil"

    class Config(ComponentConfig):
        attn_hidden: int = Field(default=128, gt=0, description="L, the attention hidden size")
        gated: bool = Field(default=False, description="gated attention (tanh * sigmoid)")
        attention: Literal["tanh", "linear"] = Field(
            default="tanh",
            description="attention scores: 'tanh' = w^T tanh(V h) (+ the gate when gated), the ABMIL paper's; "
            "'linear' = w^T h + b, one Linear(d -> 1) with no tanh or V (the PSMIL paper's ABMIL baseline, "
            "the official 'fsa' pooling; attn_hidden unused, gated refused)",
        )
        classifier: Literal["linear", "kaiming_nobias"] = Field(
            default="linear",
            description="bag classifier: 'linear' = nn.Linear with bias; 'kaiming_nobias' = the PSMIL code's "
            "bias-free d x k matrix, kaiming_uniform_ (bound sqrt(6/k)); softmax head only",
        )
        dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the pooled feature")
        attn_dropout: float = Field(
            default=0.0, ge=0.0, lt=1.0,
            description="dropout inside the attention network, after tanh(V h) and after sigm(U h) (before their "
            "product), as MIL-Lab's and CLAM's attention networks (0 = none, the ABMIL paper's)",
        )
        head: Literal["softmax", "sigmoid"] = Field(
            default="softmax",
            description="bag classifier: k logits and a softmax, or (binary only) the official single logit "
            "with a sigmoid, exported as logits [0, t]",
        )

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        if config.attention == "linear" and config.gated:
            raise ComponentError(
                "pooling 'abmil' with attention = \"linear\" scores instances with one Linear(d -> 1) (the "
                "PSMIL paper's ABMIL baseline), which has no tanh branch to gate; set gated = false, or "
                "attention = \"tanh\" for gated attention."
            )
        if config.attention == "linear" and config.attn_dropout > 0:
            raise ComponentError(
                "pooling 'abmil' with attention = \"linear\" has no hidden attention layer to apply attn_dropout to; "
                "set attn_dropout = 0, or attention = \"tanh\"."
            )
        if config.head == "sigmoid" and num_classes != 2:
            raise ComponentError(
                f"pooling 'abmil' with head = \"sigmoid\" is the official binary head (one logit), but the data "
                f"has {num_classes} classes; use head = \"softmax\" (the default) for k > 2."
            )
        if config.head == "sigmoid" and config.classifier != "linear":
            raise ComponentError(
                "pooling 'abmil': classifier = \"kaiming_nobias\" is the PSMIL code's k-class matrix and "
                "head = \"sigmoid\" the ABMIL code's single logit; they do not combine. Use head = "
                "\"softmax\" with it, or classifier = \"linear\" with the sigmoid head."
            )
        L = config.attn_hidden
        linear_attention = config.attention == "linear"
        self.attn_V = None if linear_attention else nn.Linear(in_dim, L)
        self.attn_U = nn.Linear(in_dim, L) if config.gated else None
        self.attn_w = nn.Linear(in_dim if linear_attention else L, 1)
        self.attn_dropout = nn.Dropout(config.attn_dropout) if config.attn_dropout > 0 else nn.Identity()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if config.head == "sigmoid":
            self.classifier = nn.Linear(in_dim, 1)
        else:
            self.classifier = bag_classifier(in_dim, num_classes, config.classifier)

    def attention_scores(self, h: Tensor) -> Tensor:
        """Unnormalised scores ``e``: ``[B, N, d] -> [B, N]``."""
        if self.attn_V is None:  # attention = "linear": w^T h + b
            return self.attn_w(h).squeeze(-1)
        a = self.attn_dropout(torch.tanh(self.attn_V(h)))
        if self.attn_U is not None:
            a = a * self.attn_dropout(torch.sigmoid(self.attn_U(h)))
        return self.attn_w(a).squeeze(-1)

    def classify(self, z: Tensor) -> Tensor:
        """Class logits ``[..., k]``; the sigmoid head's single logit ``t`` becomes ``[0, t]``
        (``softmax([0, t])[1] = sigm(t)``, and the cross-entropy is the Bernoulli NLL)."""
        t = self.classifier(z)
        if self.config.head == "sigmoid":
            return torch.cat([torch.zeros_like(t), t], dim=-1)
        return t

    def instance_logits(self, h: Tensor) -> Tensor:
        return self.classify(h)

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        scores = self.attention_scores(h)
        attention = masked_softmax(scores, mask)
        z = attention_pool(attention, h)
        bag_logits = self.classify(self.dropout(z))
        inst_logits = self.classify(h) * mask.unsqueeze(-1)
        return MILOutput(
            bag_logits=bag_logits,
            mask=mask,
            inst_logits=inst_logits,
            attention=attention,
            extras={"attention_scores": scores.masked_fill(~mask, 0.0), "bag_feature": z},
        )
