"""WiKG pooling (Li, Chen, Chu, Sun, Guan, Han and He, "Dynamic Graph Representation with Knowledge-aware
Attention for Histopathology Whole Slide Image Analysis", CVPR 2024; official code ``WonderLandxD/WiKG``,
``model.py``, class ``WiKG``).

Per bag ``X`` of ``n`` instances (docs/models/wikg.md), ``d = dim_hidden`` (512), ``k = topk`` (6)::

    x    = LeakyReLU(fc1(X))                        # [n, d]
    x    = (x + mean_i x_i) / 2                     # every instance moved halfway to the bag mean
    e_h  = W_head(x),  e_t = W_tail(x)              # head and tail embeddings
    s_ij = e_h_i . e_t_j / sqrt(d)                  # the dynamic graph: i's k neighbours N(i) are the k
    N(i) = top-k_j s_ij,  p_ij = softmax_{N(i)} s_ij  #   largest s_ij (i itself may be one of them)
    r_ij = p_ij e_t_j + (1 - p_ij) e_h_i            # knowledge-aware attention, j in N(i)
    w_ij = (sum_c e_t_jc) (sum_c tanh(e_h_i + r_ij)_c)   # the official einsum "ijkl,ijkm->ijk": two sums,
                                                    #   not the dot product e_t_j . tanh(...)
    a_ij = softmax_{N(i)} w_ij
    e_N_i = sum_{j in N(i)} a_ij e_t_j              # the message from the neighbours
    emb_i = agg(e_h_i, e_N_i)                       # bi-interaction (default), gcn or sage
    z    = LayerNorm(readout_i(Dropout(emb_i)))      # attention (default), mean or max over the instances
    bag_logits = fc(z)

Padding: padded features are zeroed first; the bag mean is masked; padded instances are never chosen as
neighbours (their scores are ``-inf`` before the top-k); a bag of ``n < topk`` real instances uses all of its
``n`` instances as every instance's neighbours (the official code, one bag at a time, raises in ``torch.topk``
there; milzoo's result is the official model's with ``topk = n``); the readout is masked.

The ``n x n`` score matrix of the official code is never held whole: the top-k neighbours are selected block by
block of rows under ``no_grad`` (at most ``similarity_block`` scores at a time), then the ``n x k`` selected scores
are recomputed with gradients.  The values and the gradients are the official ones (``torch.topk``'s gradient
reaches only the selected scores); only the memory differs, ``O(n k d)`` instead of ``O(n^2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from pydantic import Field, NonNegativeFloat, PositiveInt, field_validator
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.components.output import MILOutput
from milzoo.layers import is_padded, masked_max, masked_mean, masked_softmax


class WiKGPooling(Pooling):
    """WiKG: a dynamic top-k graph from head/tail embeddings, knowledge-aware attention, aggregation and readout (Li et al. 2024)."""

    name = "wikg"
    takes_lengths = True
    #: small sizes for the contract suite (milzoo.testing); the defaults are 512 wide
    contract_options = {"dim_hidden": 16}
    #: the most scores ``[B, rows, N]`` held at once while the neighbours are selected (2^24: 64 MB in float32)
    similarity_block: ClassVar[int] = 2**24

    class Config(ComponentConfig):
        dim_hidden: PositiveInt = Field(default=512, description="width of the instance embeddings (official dim_hidden)")
        topk: PositiveInt = Field(
            default=6, description="neighbours per instance in the dynamic graph (a bag of fewer instances uses all)"
        )
        agg_type: Literal["bi-interaction", "gcn", "sage"] = Field(
            default="bi-interaction", description="how an instance's embedding and its neighbours' message combine"
        )
        pool: Literal["attn", "mean", "max"] = Field(
            default="attn",
            description="readout over the instances: gated-attention pooling, mean or max (official train.py: mean)",
        )
        dropout: NonNegativeFloat = Field(default=0.3, description="dropout on the aggregated instance embeddings")

        @field_validator("dropout")
        @classmethod
        def _below_one(cls, v: float) -> float:
            if v >= 1:
                raise ValueError(f"dropout must be below 1, got {v}")
            return v

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        d = config.dim_hidden
        self.fc1 = nn.Sequential(nn.Linear(in_dim, d), nn.LeakyReLU())
        self.W_head = nn.Linear(d, d)
        self.W_tail = nn.Linear(d, d)
        self.scale = d**-0.5
        # (the official model also creates gate_U, gate_V and gate_W, which its forward never uses: left out)
        if config.agg_type == "gcn":
            self.linear = nn.Linear(d, d)
        elif config.agg_type == "sage":
            self.linear = nn.Linear(2 * d, d)
        else:
            self.linear1 = nn.Linear(d, d)
            self.linear2 = nn.Linear(d, d)
        self.activation = nn.LeakyReLU()
        self.message_dropout = nn.Dropout(config.dropout)
        if config.pool == "attn":  # torch_geometric's GlobalAttention(gate_nn) with this gate network
            self.att_net = nn.Sequential(nn.Linear(d, d // 2), nn.LeakyReLU(), nn.Linear(d // 2, 1))
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, num_classes)

    # -- the dynamic graph --------------------------------------------------------------------------------------

    @torch.no_grad()
    def _neighbours(self, q: Tensor, e_t: Tensor, key_mask: Tensor | None, k: int) -> Tensor:
        """Indices ``[B, N, k]`` of the ``k`` largest scores ``q_i . e_t_j`` per row, padded keys excluded."""
        B, N, _ = q.shape
        rows = max(1, self.similarity_block // max(1, B * N))
        out = []
        for start in range(0, N, rows):
            s = q[:, start : start + rows] @ e_t.transpose(1, 2)  # [B, rows, N]
            if key_mask is not None:
                s = s.masked_fill(~key_mask[:, None, :], float("-inf"))
            out.append(torch.topk(s, k, dim=-1).indices)
        return torch.cat(out, dim=1)

    def forward(self, h: Tensor, mask: Tensor, lengths: Sequence[int] | None = None) -> MILOutput:
        B, N, _ = h.shape
        padded = is_padded(mask, lengths)
        m = mask[..., None]
        x = self.fc1(h.masked_fill(~m, 0.0) if padded else h)  # [B, N, d]
        x = (x + (masked_mean(x, mask)[:, None] if padded else x.mean(dim=1, keepdim=True))) * 0.5

        e_h, e_t = self.W_head(x), self.W_tail(x)
        q = e_h * self.scale
        k = min(self.config.topk, N)
        idx = self._neighbours(q, e_t, mask if padded else None, k)  # [B, N, k]
        batch = torch.arange(B, device=h.device)[:, None, None]
        nb = e_t[batch, idx]  # [B, N, k, d]: the neighbours' tail embeddings
        score = (q[:, :, None, :] * nb).sum(-1)  # [B, N, k]: the selected scores, with gradients
        # a neighbour slot is real when its instance is; only bags of fewer than k real instances have others
        valid = mask[batch, idx] if padded else None
        if valid is not None:
            score = score.masked_fill(~valid, float("-inf"))
            nb = nb.masked_fill(~valid[..., None], 0.0)
        p = torch.softmax(score, dim=-1)[..., None]  # [B, N, k, 1]

        # knowledge-aware attention
        r = p * nb + (1 - p) * e_h[:, :, None, :]
        gate = torch.tanh(e_h[:, :, None, :] + r)
        # the official einsum("ijkl,ijkm->ijk", Nb_h, gate) sums l and m separately: (sum of e_t_j) * (sum of
        # the gate), not a dot product (docs/models/wikg.md); reproduced as written
        w = nb.sum(-1) * gate.sum(-1)  # [B, N, k]
        if valid is not None:
            w = w.masked_fill(~valid, float("-inf"))
        a = torch.softmax(w, dim=-1)
        e_n = (a[..., None] * nb).sum(2)  # [B, N, d]

        if self.config.agg_type == "gcn":
            emb = self.activation(self.linear(e_h + e_n))
        elif self.config.agg_type == "sage":
            emb = self.activation(self.linear(torch.cat([e_h, e_n], dim=-1)))
        else:
            emb = self.activation(self.linear1(e_h + e_n)) + self.activation(self.linear2(e_h * e_n))
        emb = self.message_dropout(emb)

        attention = None
        if self.config.pool == "attn":
            attention = masked_softmax(self.att_net(emb)[..., 0], mask)  # [B, N], zero at padding
            z = (attention[..., None] * emb).sum(1)
        elif self.config.pool == "mean":
            z = masked_mean(emb, mask) if padded else emb.mean(1)
        else:
            z = masked_max(emb, mask) if padded else emb.max(1).values
        z = self.norm(z)

        if padded:  # instance-level extras: zero (index -1) at padded instances and at slots of no neighbour
            keep = mask[..., None] & valid
            idx = idx.masked_fill(~keep, -1)
            a = a.masked_fill(~keep, 0.0)
        if k < self.config.topk:  # always topk slots, so that the extras of every batch have one shape
            fill = self.config.topk - k
            idx = torch.cat([idx, idx.new_full((B, N, fill), -1)], dim=2)
            a = torch.cat([a, a.new_zeros(B, N, fill)], dim=2)
        extras = {"bag_feature": z, "neighbours": idx, "neighbour_attention": a}
        return MILOutput(bag_logits=self.fc(z), mask=mask, attention=attention, extras=extras)
