"""CLAM-SB and CLAM-MB poolings (Lu et al. 2021; docs/models/clam.md).

``h'_i = dropout(relu(W_1 h_i + b_1))`` (``d -> 512``);
gated attention ``e_i = W_c (dropout(tanh(W_a h'_i)) * dropout(sigm(W_b h'_i))) + b_c`` (or
``W_c dropout(tanh(W_a h'_i)) + b_c`` without the gate), one branch (SB) or one per class (MB);
``a = softmax_n(e)`` over the real instances of a bag; ``z = sum_i a_i h'_i`` (per branch for MB);
bag logits ``W z + b`` (SB) or ``w_c^T z_c + b_c`` (MB, one ``Linear(512, 1)`` per class).

The instance-level clustering (top-``k_sample`` most and least attended instances as pseudo-labels for
per-class binary instance classifiers) needs the bag's label, so it is computed by the ``clam`` loss
(:mod:`milzoo_clam.loss`) from what the pooling exports in ``extras``:

* ``attention_scores``: the raw attention ``e`` (CLAM's ``A_raw``, what its heatmaps draw), ``[B, N]`` or
  ``[B, N, k]``, zero at padding;
* ``cluster_logits``: every instance classifier on every instance, ``[B, N, k, 2]``, zero at padding
  (selecting rows of it equals applying the classifier to the selected instances);
* ``bag_feature``: ``z`` (``[B, 512]`` or ``[B, k, 512]``).

The network itself serves every task: with ``regression`` or ``survival`` the bag logits are the task's outputs
(targets, hazard logits of the time bins, a Cox risk) and the task's loss trains them, without the instance
clustering, as the survival benchmark of RRT-MIL (``DearCaat/RRT-MIL``, ``Survival/models/CLAM``) trains CLAM.
The ``clam`` loss needs class labels, and the model builder refuses it for those tasks.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.components.output import MILOutput
from milzoo.layers.masking import attention_pool, masked_softmax

#: the official size presets: (hidden, attention hidden) after the embedding dimension
SIZES = {"small": (512, 256), "big": (512, 384)}
#: the official attention networks use a fixed p = 0.25 whenever dropout is on (``if dropout:``)
ATTENTION_DROPOUT = 0.25


class _CLAMPooling(Pooling):
    """Shared body of CLAM-SB and CLAM-MB."""

    default_loss = "clam"
    #: every task: the instance clustering (the ``clam`` loss) needs the bag's class, but the network does not; for
    #: regression and survival the task's own loss trains it without clustering (the module docstring)
    tasks = None
    multi_branch: ClassVar[bool] = False

    class Config(ComponentConfig):
        size: Literal["small", "big"] = Field(
            default="small", description="the official size preset: 'small' = [d, 512, 256], 'big' = [d, 512, 384]"
        )
        gated: bool = Field(default=True, description="gated attention (tanh * sigmoid), the official default")
        dropout: float = Field(
            default=0.25, ge=0.0, lt=1.0,
            description="dropout after the first layer; when > 0 the attention branches also drop with p = 0.25, "
            "as the official code (its main.py default --drop_out 0.25)",
        )
        k_sample: int = Field(
            default=8, gt=0, description="B: the number of most (and least) attended instances per bag that get "
            "pseudo-labels for the instance clustering (read by the 'clam' loss)"
        )
        subtyping: bool = Field(
            default=False, description="also train the out-of-class instance classifiers (their top-k instances "
            "as negatives) and average the instance loss over classes, as the official --subtyping"
        )

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        hidden, attn_hidden = SIZES[config.size]
        branches = num_classes if self.multi_branch else 1
        self.fc = nn.Linear(in_dim, hidden)
        self.fc_dropout = nn.Dropout(config.dropout)
        self.attn_a = nn.Linear(hidden, attn_hidden)
        self.attn_b = nn.Linear(hidden, attn_hidden) if config.gated else None
        self.attn_dropout = nn.Dropout(ATTENTION_DROPOUT) if config.dropout > 0 else nn.Identity()
        self.attn_c = nn.Linear(attn_hidden, branches)
        if self.multi_branch:
            self.classifiers = nn.ModuleList([nn.Linear(hidden, 1) for _ in range(num_classes)])
        else:
            self.classifiers = nn.Linear(hidden, num_classes)
        self.instance_classifiers = nn.ModuleList([nn.Linear(hidden, 2) for _ in range(num_classes)])

    # ------------------------------------------------------------------ pieces
    def embed(self, h: Tensor) -> Tensor:
        """``h' = dropout(relu(W_1 h + b_1))``: ``[..., d] -> [..., 512]``."""
        return self.fc_dropout(F.relu(self.fc(h)))

    def attention_scores(self, hf: Tensor) -> Tensor:
        """Raw attention ``e``: ``[..., 512] -> [..., branches]``."""
        a = self.attn_dropout(torch.tanh(self.attn_a(hf)))
        if self.attn_b is not None:
            a = a * self.attn_dropout(torch.sigmoid(self.attn_b(hf)))
        return self.attn_c(a)

    def _class_weights(self) -> tuple[Tensor, Tensor]:
        """MB: the per-class ``Linear(512, 1)`` classifiers as one ``[k, 512]`` matrix and ``[k]`` bias."""
        w = torch.cat([c.weight for c in self.classifiers], dim=0)
        b = torch.cat([c.bias for c in self.classifiers], dim=0)
        return w, b

    def classify(self, z: Tensor) -> Tensor:
        """Bag logits from pooled features: SB ``[..., 512] -> [..., k]``; MB ``[..., k, 512] -> [..., k]``."""
        if self.multi_branch:
            w, b = self._class_weights()
            return (z * w).sum(-1) + b
        return self.classifiers(z)

    def instance_logits(self, h: Tensor) -> Tensor:
        """The bag classifier on single instances (a one-instance bag's logits): ``[..., d] -> [..., k]``."""
        hf = self.embed(h)
        if self.multi_branch:
            w, b = self._class_weights()
            return hf @ w.t() + b
        return self.classifiers(hf)

    # ------------------------------------------------------------------ forward
    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        hf = self.embed(h)  # [B, N, 512]
        scores = self.attention_scores(hf)  # [B, N, branches]
        m = mask.unsqueeze(-1)
        if self.multi_branch:
            scores_out = scores  # [B, N, k]
            attention = masked_softmax(scores, mask)  # over N, per class
            z = torch.einsum("bnk,bnh->bkh", attention.to(hf.dtype), hf)  # [B, k, 512]
        else:
            scores_out = scores.squeeze(-1)  # [B, N]
            attention = masked_softmax(scores_out, mask)
            z = attention_pool(attention, hf)  # [B, 512]
        bag_logits = self.classify(z)
        cluster = torch.stack([c(hf) for c in self.instance_classifiers], dim=2)  # [B, N, k, 2]
        return MILOutput(
            bag_logits=bag_logits,
            mask=mask,
            attention=attention,
            extras={
                "attention_scores": scores_out.masked_fill(~(m if self.multi_branch else mask), 0.0),
                "cluster_logits": cluster * m.unsqueeze(-1),
                "bag_feature": z,
            },
        )


class CLAMSBPooling(_CLAMPooling):
    """CLAM-SB: gated attention with one branch, instance clustering per class (Lu et al. 2021)."""

    name = "clam_sb"
    multi_branch = False

    class Config(_CLAMPooling.Config):
        pass


class CLAMMBPooling(_CLAMPooling):
    """CLAM-MB: one gated attention branch and one bag classifier per class, instance clustering (Lu et al. 2021)."""

    name = "clam_mb"
    multi_branch = True

    class Config(_CLAMPooling.Config):
        pass
