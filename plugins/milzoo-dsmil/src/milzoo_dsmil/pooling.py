"""DSMIL pooling (docs/methods.md section 2).

Two streams over the instance features ``H [n, d]``:

- instance (max) stream: ``c = H W_c^T + b_c`` (``[n, C]``); ``y_max = max_i c_i``;
- bag stream: the critical instance of class ``c`` is ``m_c = argmax_i c_{i,c}``;
  queries ``Q = q(H)``; ``A[:, c] = softmax_n(Q q(h_{m_c}) / sqrt(D_q))``;
  class embeddings ``B = A^T V`` (``[C, d]``); ``y_bag = Conv1d(C, C, kernel=d)(B)``,
  a dense map from all ``C*d`` numbers of ``B`` to every class logit (pitfall 2.7.1).

``mode`` (2.5): ``multilabel`` (faithful) has ``C = k-1`` sigmoid outputs and class 0
is the implicit negative class; ``multiclass`` has ``C = k`` softmax outputs.

The k-class probabilities (``MILOutput.probs``) in multi-label mode are
``softmax([0, z_1, ..., z_{k-1}])``: independent sigmoids ``sigmoid(z_j)``
conditioned on at most one class being positive.  For k = 2 this is exactly
``[1 - sigmoid(z), sigmoid(z)]``, DSMIL's own score.  ``score_mode`` (2.3) picks
the bag stream alone (``bag``) or the average of the two streams' probabilities
(``mean``; for k = 2 multi-label, ``(sigmoid(y_bag) + sigmoid(y_max)) / 2``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.layers.masking import masked_softmax
from milzoo.components.output import MILOutput
from milzoo.layers.precision import at_least_float32


def _anchor(z: Tensor, multilabel: bool) -> Tensor:
    """Logits ``[..., C]`` -> k-class logits: a zero logit for the implicit negative class."""
    if not multilabel:
        return z
    return torch.cat([z.new_zeros(*z.shape[:-1], 1), z], dim=-1)


class DSMILPooling(Pooling):
    """DSMIL: dual-stream MIL with critical-instance attention (Li et al. 2021)."""

    name = "dsmil"
    #: classification only: its max-instance stream is a per-class instance classifier trained by the class loss, which picks the critical instance (docs/tasks.md)
    tasks = ("classification",)
    default_loss = "dsmil"

    class Config(ComponentConfig):
        mode: Literal["multilabel", "multiclass"] = Field(
            default="multilabel",
            description="multilabel: k-1 sigmoid outputs, class 0 is the implicit negative (faithful); "
            "multiclass: k softmax outputs (for mutually exclusive classes)",
        )
        score_mode: Literal["bag", "mean"] = Field(
            default="bag",
            description="inference score: the bag stream alone (current code) or the mean of both "
            "streams' probabilities",
        )
        query: Literal["nonlinear", "linear"] = Field(
            default="nonlinear",
            description="query network: tanh(W2 relu(W1 h)) (code since 2022) or one Linear (paper-era)",
        )
        query_dim: int = Field(default=128, gt=0, description="query size (attention scaled by its sqrt)")
        value: Literal["identity", "linear_relu", "linear"] = Field(
            default="identity",
            description="value network: V = H (current default), ReLU(Linear(d->d)) or Linear(d->d) (paper-era)",
        )
        value_dropout: float = Field(
            default=0.0, ge=0.0, lt=1.0, description="dropout on H before the value network"
        )
        patch_dropout: float = Field(
            default=0.0, ge=0.0, lt=1.0,
            description="training only: fraction of each bag's instances hidden from the pooling "
            "(at least one is kept)",
        )
        init: Literal["orthogonal", "default"] = Field(
            default="orthogonal",
            description="orthogonal weights and zero biases (current code) or PyTorch's default init",
        )

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.multilabel = config.mode == "multilabel"
        C = num_classes - 1 if self.multilabel else num_classes
        self.num_outputs = C
        d, dq = in_dim, config.query_dim
        self.inst_classifier = nn.Linear(d, C)
        if config.query == "nonlinear":
            self.query = nn.Sequential(nn.Linear(d, dq), nn.ReLU(), nn.Linear(dq, dq), nn.Tanh())
        else:
            self.query = nn.Linear(d, dq)
        layers: list[nn.Module] = []
        if config.value_dropout > 0:
            layers.append(nn.Dropout(config.value_dropout))
        if config.value != "identity":
            layers.append(nn.Linear(d, d))
            if config.value == "linear_relu":
                layers.append(nn.ReLU())
        self.value = nn.Sequential(*layers) if layers else nn.Identity()
        # Conv1d(C, C, kernel=d) over [C, d]: a dense C*d -> C map (not C per-class linears).
        self.bag_classifier = nn.Conv1d(C, C, kernel_size=d)
        if config.init == "orthogonal":
            for mod in self.modules():
                if isinstance(mod, (nn.Linear, nn.Conv1d)):
                    nn.init.orthogonal_(mod.weight)
                    if mod.bias is not None:
                        nn.init.zeros_(mod.bias)

    # ------------------------------------------------------------------ helpers
    def _combine(self, z_bag: Tensor, z_max: Tensor) -> tuple[Tensor, Tensor]:
        """Stream logits ``[..., C]`` -> (k-class logits, k-class probabilities) per ``score_mode``."""
        bag = _anchor(z_bag, self.multilabel)
        if self.config.score_mode == "bag":
            return bag, torch.softmax(at_least_float32(bag), dim=-1)
        mx = _anchor(z_max, self.multilabel)
        probs = 0.5 * (torch.softmax(at_least_float32(bag), dim=-1) + torch.softmax(at_least_float32(mx), dim=-1))
        return torch.log(probs.clamp_min(1e-12)).to(bag.dtype), probs

    def _patch_mask(self, mask: Tensor) -> Tensor:
        """Training-time patch dropout: keep a random ``floor(n (1-p))`` (>= 1) real instances."""
        p = self.config.patch_dropout
        if not (self.training and p > 0):
            return mask
        n = mask.sum(1)
        keep = (n.float() * (1.0 - p)).floor().long().clamp_min(1)
        r = torch.rand(mask.shape).to(mask.device).masked_fill(~mask, 2.0)  # global RNG
        rank = r.argsort(dim=1).argsort(dim=1)
        return mask & (rank < keep.unsqueeze(1))

    def instance_logits(self, h: Tensor) -> Tensor:
        """The bag classifier on one-instance bags (attention 1, critical instance itself)."""
        shape = h.shape[:-1]
        x = h.reshape(-1, h.shape[-1])
        z_max = self.inst_classifier(x)  # [M, C]
        v = self.value(x)
        emb = v.unsqueeze(1).expand(-1, self.num_outputs, -1)  # [M, C, d]
        z_bag = self.bag_classifier(emb).squeeze(-1)
        logits, _ = self._combine(z_bag, z_max)
        return logits.reshape(*shape, -1)

    # ------------------------------------------------------------------ forward
    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        Bn, N, d = h.shape
        c = self.inst_classifier(h)  # [B, N, C]
        used = self._patch_mask(mask)
        # critical instance per class: padding (and dropped patches) can never win
        c_masked = c.detach().masked_fill(~used.unsqueeze(-1), float("-inf"))
        crit = c_masked.argmax(dim=1)  # [B, C]
        z_max = c.gather(1, crit.unsqueeze(1)).squeeze(1)  # [B, C]: max over instances
        Q = self.query(h)  # [B, N, dq]
        q_max = Q.gather(1, crit.unsqueeze(-1).expand(-1, -1, Q.shape[-1]))  # [B, C, dq]
        scores = torch.bmm(Q, q_max.transpose(1, 2)) / math.sqrt(Q.shape[-1])  # [B, N, C]
        A = masked_softmax(scores, used)  # [B, N, C], zero at padding
        V = self.value(h)
        emb = torch.bmm(A.transpose(1, 2).to(V.dtype), V)  # [B, C, d]  (the paper's B)
        z_bag = self.bag_classifier(emb).squeeze(-1)  # [B, C]

        bag_logits, probs = self._combine(z_bag, z_max)
        # attention map shown as `attention`: the most probable positive class (multi-label:
        # classes 1..k-1, all of which have a column) or the predicted class (multi-class)
        col = probs[:, 1:].argmax(-1) if self.multilabel else probs.argmax(-1)
        attention = A.gather(2, col.view(Bn, 1, 1).expand(Bn, N, 1)).squeeze(-1)
        inst_logits = _anchor(c, self.multilabel) * mask.unsqueeze(-1)

        n_used = used.sum(1).to(A.dtype)
        ent = -(A * torch.log(A.clamp_min(1e-12))).sum(1).mean(-1)  # [B]
        ent = torch.where(n_used > 1, ent / torch.log(n_used.clamp_min(2.0)), torch.zeros_like(ent))
        return MILOutput(
            bag_logits=bag_logits,
            mask=mask,
            inst_logits=inst_logits,
            attention=attention,
            probs=probs,
            extras={
                "B": emb,
                "A": A,
                "critical_index": crit,
                "bag_stream_logits": z_bag,
                "max_stream_logits": z_max,
                "attention_scores": scores.masked_fill(~used.unsqueeze(-1), 0.0),
                "attention_entropy": ent.detach(),
            },
        )

