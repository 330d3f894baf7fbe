"""DEMIL pooling: disambiguated (label-space) gated attention (docs/methods.md section 5.1).

``A_V = tanh(H W_V^T + b_V)`` and ``A_U = sigm(H W_U^T + b_U)``, both ``n x L``
where ``L`` defaults to ``k`` (the "value mapping" into the label space);
``s = MLP(A_V * A_U)`` with the MLP Linear(L->128) -> ReLU -> Linear(128->1);
``a = sigm(s)`` (a sigmoid, not a softmax); ``z = sum_i a_i h_i / sum_i a_i``
over the bag's real instances.  Head ``sigmoid_softmax`` (DEMIPL code):
``clamp(sigm(C z + b), eps, 1 - eps)`` is returned as ``bag_logits`` so that
``softmax_k(bag_logits)`` is DEMIPL's ``p``; head ``linear``: ``C z + b``.

The PSMIL paper's DEMIL baseline (the official ``mha`` pooling of
``LMBDA-design/PSAMIL``) is this attention with separate ``U``, ``head =
"linear"``, ``classifier = "kaiming_nobias"`` (bias-free ``d x k`` ``W``,
logits ``z W``), ``detach_normaliser = true`` (its default ``cl`` branch takes
``sum_i a_i`` under ``no_grad``) and no entropy term (loss ``bag_ce``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.errors import ComponentError
from milzoo.layers.heads import bag_classifier
from milzoo.layers.masking import attention_pool
from milzoo.components.output import MILOutput


class DEMILPooling(Pooling):
    """DEMIL / DEMIPL disambiguated attention embedding (Tang et al. 2023)."""

    name = "demil"
    #: classification only: it learns per-bag soft labels over the candidate classes (docs/tasks.md)
    tasks = ("classification",)
    default_loss = "demil"
    #: the ``demil`` loss reads ``extras["sigmoid_attention"]`` for its entropy term
    provides_sigmoid_attention: ClassVar[bool] = True

    class Config(ComponentConfig):
        attn_hidden: int | None = Field(
            default=None,
            gt=0,
            description="hidden size of the gated attention; None = the number of classes k "
            "(DEMIPL's label-space value mapping, docs/methods.md 5.1)",
        )
        score_hidden: int = Field(
            default=128, gt=0, description="hidden size of the score MLP Linear(L->m) -> ReLU -> Linear(m->1)"
        )
        share_uv: bool = Field(
            default=False,
            description="reuse W_V, b_V in the sigmoid (U) branch, as the official code does "
            "(docs/methods.md 5.6.1); False = separate W_U, b_U as in the paper (recommended)",
        )
        head: Literal["sigmoid_softmax", "linear"] = Field(
            default="sigmoid_softmax",
            description="sigmoid_softmax: clamp(sigmoid(Cz+b)) then softmax (DEMIPL-faithful); "
            "linear: Cz+b then softmax (use when DEMIL is a PSMIL baseline, docs/methods.md 5.6.2)",
        )
        clamp_eps: float = Field(
            default=1e-5, ge=0.0, lt=0.5, description="sigmoid_softmax head: clamp to [eps, 1-eps]"
        )
        classifier: Literal["linear", "kaiming_nobias"] = Field(
            default="linear",
            description="C: 'linear' = nn.Linear with bias; 'kaiming_nobias' = the PSMIL code's bias-free d x k "
            "matrix, kaiming_uniform_ (bound sqrt(6/k)); with head = 'linear' (the PSMIL paper's DEMIL)",
        )
        detach_normaliser: bool = Field(
            default=False,
            description="treat sum_i a_i as a constant in backward, as the PSMIL code's default ('cl') branch "
            "does (same forward); False keeps it in the graph as DEMIPL does (docs/methods.md 5.6.3)",
        )

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        hidden = config.attn_hidden or self.num_classes
        self.attn_hidden = int(hidden)
        self.attn_V = nn.Linear(in_dim, hidden)
        self.attn_U = None if config.share_uv else nn.Linear(in_dim, hidden)
        self.attn_score = nn.Sequential(
            nn.Linear(hidden, config.score_hidden), nn.ReLU(), nn.Linear(config.score_hidden, 1)
        )
        if config.classifier != "linear" and config.head != "linear":
            raise ComponentError(
                "pooling 'demil': classifier = \"kaiming_nobias\" is the PSMIL code's classifier, whose logits "
                "go straight into a softmax; it needs head = \"linear\" (the sigmoid_softmax head is DEMIPL's)."
            )
        self.classifier = bag_classifier(in_dim, num_classes, config.classifier)

    def attention_scores(self, h: Tensor) -> Tensor:
        """Pre-sigmoid scores ``s``: ``[B, N, d] -> [B, N]``."""
        v = self.attn_V(h)
        gate = torch.sigmoid(v if self.attn_U is None else self.attn_U(h))
        return self.attn_score(torch.tanh(v) * gate).squeeze(-1)

    def _head(self, logits: Tensor) -> Tensor:
        if self.config.head == "linear":
            return logits
        eps = self.config.clamp_eps
        return torch.sigmoid(logits).clamp(eps, 1.0 - eps)

    def instance_logits(self, h: Tensor) -> Tensor:
        """The bag head applied to single instances (softmax of this is the instance probability)."""
        return self._head(self.classifier(h))

    def _normalise(self, scores: Tensor, raw: Tensor, mask: Tensor) -> Tensor:
        """``a_i / S`` with ``S = sum_i a_i``, in the graph (docs/methods.md 5.6.3) unless ``detach_normaliser``.

        When every score of a bag falls below about -88, every ``a_i`` underflows to 0 in fp32 and the backward's
        ``1 / S`` overflows (inf * 0 = NaN): a collapsed model then stops with a non-finite loss instead of
        showing its (chance-level) curve.  Such bags (``S`` below the square root of the dtype's smallest normal
        number) take the same quotient from log-sigmoids, ``exp(log a_i - logsumexp_j log a_j)``; all other bags
        keep the direct division, bit for bit.  No host sync: both are computed, ``torch.where`` picks."""
        detach = self.config.detach_normaliser
        finfo = torch.finfo(raw.dtype)
        norm = raw.sum(dim=1, keepdim=True)
        small = norm < finfo.tiny ** 0.5
        safe = torch.where(small, torch.ones_like(norm), norm)  # the unpicked branch must stay finite too
        direct = raw / (safe.detach() if detach else safe)
        log_a = nn.functional.logsigmoid(scores).masked_fill(~mask, finfo.min)  # finite: no NaN in backward
        log_norm = torch.logsumexp(log_a, dim=1, keepdim=True)
        stable = torch.exp(log_a - (log_norm.detach() if detach else log_norm)).masked_fill(~mask, 0.0)
        return torch.where(small, stable, direct)

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        scores = self.attention_scores(h)
        raw = torch.sigmoid(scores).masked_fill(~mask, 0.0)  # a_i in (0, 1), zero at padding
        attention = self._normalise(scores, raw, mask)
        z = attention_pool(attention, h)
        bag_logits = self._head(self.classifier(z))
        inst_logits = self.instance_logits(h).masked_fill(~mask.unsqueeze(-1), 0.0)
        return MILOutput(
            bag_logits=bag_logits,
            mask=mask,
            inst_logits=inst_logits,
            attention=attention,
            extras={
                "sigmoid_attention": raw,
                "attention_scores": scores.masked_fill(~mask, 0.0),
                "bag_feature": z,
            },
        )
