"""ILRA-MIL pooling (Xiang & Zhang et al., "Exploring Low-Rank Property in Multiple Instance Learning for Whole
Slide Image Classification", ICLR 2023; official code ``jinxixiang/low_rank_wsi``, ``models/ilra.py``).

Per bag ``X`` of ``n`` instances (docs/models/ilra.md):

1. ``num_layers`` (2) gated attention blocks (GAB).  Each holds a learnable low-rank matrix ``L`` of ``topk``
   (2) latent vectors of width ``hidden_feat`` (256) and two gated multi-head attention blocks (MAB):
   ``H = MAB_fwd(L, X)`` (the latent vectors attend to the instances: ``topk x n``) and
   ``X <- MAB_bwd(X, H)`` (every instance attends to the ``topk`` latent vectors: ``n x topk``);
2. non-local pooling: one learnable query ``S`` attends to the instances, ``z = MAB(S, X)`` (not gated);
3. ``bag_logits = Linear(z)``.

A MAB with inputs ``Q`` (queries) and ``K`` (keys and values) is::

    Q' = fc_q(Q),  K' = fc_k(K),  V' = fc_v(K)
    O  = Q' + MHA(Q', K', V')                  # torch's MultiheadAttention: its own in/out projections
    O  = LN0(O);  O = O + ReLU(fc_o(O));  O = LN1(O)        # LayerNorms only with ``ln = true``
    O  = O * SiLU(gate(Q))                      # gated blocks only (both MABs of a GAB)

Padding: the only attentions whose keys are instances (``MAB_fwd`` of every block and the pooling) get a
key-padding mask; in ``MAB_bwd`` the instances are queries, so each padded row is computed independently and
read by nothing.  Padded features are zeroed first so that no value at padding (even ``inf``/``NaN``) can reach
a real one through a zero attention weight.  Every attention is linear in ``n`` (``topk`` or one query over
``n`` keys, or ``n`` queries over ``topk`` keys), so the weights are computed explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.components.output import MILOutput
from milzoo.layers.masking import is_padded


class MultiHeadAttention(nn.Module):
    """The math of ``torch.nn.MultiheadAttention`` (no dropout, no bias_k/v), with a key-padding mask and weights.

    Parameters are laid out as torch's (``in_proj_weight [3d, d]``, ``in_proj_bias``, ``out_proj``) and
    initialised as torch does (Xavier-uniform packed input projection, zero biases).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        bsz, length, _ = x.shape
        return F.linear(x, w, b).view(bsz, length, self.heads, self.dim_head).transpose(1, 2)  # [B, H, L, dh]

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """``q [B, Lq, d]``, ``k, v [B, Lk, d]``, ``key_mask [B, Lk]`` (True = real) or None.

        Returns the output ``[B, Lq, d]`` and the attention weights ``[B, H, Lq, Lk]`` (zero at padded keys).
        """
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        qh, kh, vh = self._split(q, wq, bq), self._split(k, wk, bk), self._split(v, wv, bv)
        scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(self.dim_head)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        out = (weights.to(vh.dtype) @ vh).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
        return self.out_proj(out), weights


class MAB(nn.Module):
    """The official ``MultiHeadAttention`` block: projections, residual attention, residual ReLU, optional gate."""

    def __init__(self, dim_q: int, dim_k: int, dim: int, heads: int, ln: bool, gated: bool):
        super().__init__()
        self.fc_q = nn.Linear(dim_q, dim)
        self.fc_k = nn.Linear(dim_k, dim)
        self.fc_v = nn.Linear(dim_k, dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.fc_o = nn.Linear(dim, dim)
        self.ln0 = nn.LayerNorm(dim) if ln else nn.Identity()
        self.ln1 = nn.LayerNorm(dim) if ln else nn.Identity()
        self.gate = nn.Sequential(nn.Linear(dim_q, dim), nn.SiLU()) if gated else None

    def forward(self, q_in: Tensor, k_in: Tensor, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        q = self.fc_q(q_in)
        a, weights = self.attn(q, self.fc_k(k_in), self.fc_v(k_in), key_mask)
        o = self.ln0(q + a)
        o = self.ln1(o + F.relu(self.fc_o(o)))
        if self.gate is not None:
            o = o * self.gate(q_in)
        return o, weights


class GAB(nn.Module):
    """Gated attention block (the paper's eq. 16): instances -> ``topk`` latent vectors -> instances."""

    def __init__(self, dim_in: int, dim: int, heads: int, topk: int, ln: bool):
        super().__init__()
        self.latent = nn.Parameter(torch.empty(1, topk, dim))  # the low-rank matrix L
        nn.init.xavier_uniform_(self.latent)
        self.project_forward = MAB(dim, dim_in, dim, heads, ln, gated=True)
        self.project_backward = MAB(dim_in, dim, dim, heads, ln, gated=True)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        latent = self.latent.expand(x.shape[0], -1, -1)
        h, weights = self.project_forward(latent, x, key_mask)  # [B, topk, dim]: the latents read the instances
        x_hat, _ = self.project_backward(x, h, None)  # [B, n, dim]: the instances read the latents
        return x_hat, weights


class ILRAPooling(Pooling):
    """ILRA-MIL: gated attention blocks through low-rank latent vectors, then non-local pooling (Xiang et al. 2023)."""

    name = "ilra"
    takes_lengths = True
    #: small sizes for the contract suite (milzoo.testing); the defaults are 256 wide with 8 heads
    contract_options = {"hidden_feat": 16, "num_heads": 2}

    class Config(ComponentConfig):
        num_layers: PositiveInt = Field(default=2, description="gated attention blocks (GAB)")
        hidden_feat: PositiveInt = Field(default=256, description="width of the blocks, the latent vectors and the pooled feature")
        num_heads: PositiveInt = Field(default=8, description="attention heads (must divide hidden_feat)")
        topk: PositiveInt = Field(
            default=2, description="rank of the low-rank latent matrix: latent vectors per block (official CAMELYON16 config: 1)"
        )
        ln: bool = Field(default=False, description="LayerNorms in every attention block (official CAMELYON16 config: true)")

        @model_validator(mode="after")
        def _heads_divide_width(self):
            if self.hidden_feat % self.num_heads:
                raise ValueError(
                    f"hidden_feat ({self.hidden_feat}) must be a multiple of num_heads ({self.num_heads})"
                )
            return self

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        d, heads = config.hidden_feat, config.num_heads
        self.gab_blocks = nn.ModuleList(
            GAB(in_dim if i == 0 else d, d, heads, config.topk, config.ln) for i in range(config.num_layers)
        )
        self.query = nn.Parameter(torch.empty(1, 1, d))  # the non-local pooling's learnable query S
        nn.init.xavier_uniform_(self.query)
        self.nlp = MAB(d, d, d, heads, config.ln, gated=False)
        self.classifier = nn.Linear(d, num_classes)
        # the official ``initialize_weights``: Xavier-normal weights for every Linear (attention output
        # projections included); biases keep their initialisation, LayerNorms theirs
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)

    def forward(self, h: Tensor, mask: Tensor, lengths: Sequence[int] | None = None) -> MILOutput:
        padded = is_padded(mask, lengths)
        x = h.masked_fill(~mask[..., None], 0.0) if padded else h
        key_mask = mask if padded else None
        latent_weights = None
        for block in self.gab_blocks:
            x, latent_weights = block(x, key_mask)
        z, weights = self.nlp(self.query.expand(x.shape[0], -1, -1), x, key_mask)
        z = z[:, 0]
        # the pooling query's weights over the instances, averaged over the heads: a distribution over the
        # real instances (each head's row sums to 1 over them; padded keys get exactly 0)
        attention = weights[:, :, 0].mean(dim=1)
        extras = {
            "bag_feature": z,
            # the last block's latent vectors' weights over the instances, averaged over the heads: [B, topk, N]
            "latent_attention": latent_weights.mean(dim=1),
        }
        return MILOutput(bag_logits=self.classifier(z), mask=mask, attention=attention, extras=extras)
