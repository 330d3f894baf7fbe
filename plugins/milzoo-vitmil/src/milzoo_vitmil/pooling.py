"""Transformer-MIL pooling (Wagner et al., Cancer Cell 2023; HistoBistro's ``Transformer``, STAMP's ``vit``).

Per bag of ``n`` instances (docs/models/vitmil.md):

1. ``X = ReLU(h W + b)`` to ``dim`` (512);
2. a learnable class token is prepended (``pool = "cls"``, the default);
   ``Dropout(emb_dropout)``;
3. ``depth`` (2) pre-norm layers:
   ``X <- X + MHSA(LayerNorm(X))``, ``X <- X + FF(LayerNorm(X))`` with
   ``FF = Linear(dim, mlp_dim) -> GELU -> Dropout -> Linear(mlp_dim, dim) -> Dropout``;
   multi-head self-attention with ``heads`` (8) heads of ``dim_head`` (64), a
   bias-free qkv projection and ``Linear(heads*dim_head, dim) -> Dropout``;
4. the class token (or the mean of the instance tokens, ``pool = "mean"``)
   -> ``LayerNorm`` -> ``LayerNorm`` -> ``Linear(dim, k)``.

Padding: every attention gets a key-padding mask, so a real token never
attends to a padded one; padded tokens are computed but never read, and the
mean pooling is mask-aware.  Padded features are zeroed first so that no
value at padding (even ``inf``/``NaN``) can reach a real token.  A batch
without padding runs without a mask (fused attention kernels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.components.output import MILOutput
from milzoo.layers.masking import is_padded, masked_mean

#: queries per step when the mean-pool attention export averages the attention matrix (bounds its memory)
_QUERY_CHUNK = 1024


class SelfAttention(nn.Module):
    """Multi-head softmax self-attention with a key-padding mask (the official ``Attention``, masked)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        # the official code skips the output projection when one head already has the model's width
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project_out else nn.Identity()

    def forward(
        self, x: Tensor, key_mask: Tensor | None, export: Literal["none", "cls", "mean"] = "none"
    ) -> tuple[Tensor, Tensor | None]:
        """``x [B, L, dim]``, ``key_mask [B, L]`` (True = real) or None -> output and the exported row ``[B, L]``.

        ``export = "cls"``: token 0's attention over all tokens, averaged over heads (a distribution over
        the real tokens). ``"mean"``: the attention each token receives, averaged over the real queries and
        the heads (without gradient; computed in query chunks so that no ``L x L`` matrix is kept).
        """
        b, length, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, length, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        bias_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias_mask, scale=self.scale)
        out = self.to_out(out.transpose(1, 2).reshape(b, length, self.heads * self.dim_head))
        row = None
        if export == "cls":
            row = self._rows(q[:, :, :1], k, key_mask).mean(dim=1)[:, 0]  # [B, L]
        elif export == "mean":
            row = self._received(q.detach(), k.detach(), key_mask)
        return out, row

    def _rows(self, q: Tensor, k: Tensor, key_mask: Tensor | None) -> Tensor:
        """Softmax attention rows ``[B, H, Q, L]`` of the queries ``q [B, H, Q, dh]``, padded keys at zero."""
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1)

    @torch.no_grad()
    def _received(self, q: Tensor, k: Tensor, key_mask: Tensor | None) -> Tensor:
        b, _, length, _ = q.shape
        real = torch.ones(b, length, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
        acc = q.new_zeros(b, length)
        for s in range(0, length, _QUERY_CHUNK):
            rows = self._rows(q[:, :, s : s + _QUERY_CHUNK], k, key_mask).mean(dim=1)  # [B, Q, L]
            acc += (rows * real[:, s : s + _QUERY_CHUNK, None].to(rows.dtype)).sum(dim=1)
        return acc / real.sum(dim=1, keepdim=True).to(acc.dtype)


class Block(nn.Module):
    """One pre-norm transformer layer: residual attention, then residual feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dim_head, dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, key_mask: Tensor | None, export: str = "none") -> tuple[Tensor, Tensor | None]:
        a, row = self.attn(self.attn_norm(x), key_mask, export)
        x = x + a
        return x + self.ff(self.ff_norm(x)), row


class ViTMILPooling(Pooling):
    """Transformer-MIL: class token + pre-norm transformer over the instances (Wagner et al. 2023, HistoBistro/STAMP)."""

    name = "vit_mil"
    takes_lengths = True
    #: small sizes for the contract suite (milzoo.testing); the defaults are a 512-wide transformer
    contract_options = {"dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16}

    class Config(ComponentConfig):
        dim: PositiveInt = Field(default=512, description="token width: the Linear+ReLU projection's output")
        depth: PositiveInt = Field(default=2, description="transformer layers")
        heads: PositiveInt = Field(default=8, description="attention heads")
        dim_head: PositiveInt = Field(default=64, description="width of each attention head")
        mlp_dim: PositiveInt = Field(default=512, description="hidden width of each layer's feed-forward block")
        dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout in the feed-forward blocks and after the attention output projection")
        emb_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the tokens before the first layer")
        pool: Literal["cls", "mean"] = Field(
            default="cls", description="bag representation: the class token (cls) or the mean of the instance tokens"
        )

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        d = config.dim
        self.projection = nn.Sequential(nn.Linear(in_dim, d), nn.ReLU())
        if config.pool == "cls":
            self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.dropout = nn.Dropout(config.emb_dropout)
        self.layers = nn.ModuleList(
            Block(d, config.heads, config.dim_head, config.mlp_dim, config.dropout) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, num_classes))

    def forward(self, h: Tensor, mask: Tensor, lengths: Sequence[int] | None = None) -> MILOutput:
        b = h.shape[0]
        cls_mode = self.config.pool == "cls"
        padded = is_padded(mask, lengths)
        x = self.projection(h.masked_fill(~mask[..., None], 0.0) if padded else h)
        key_mask = mask
        if cls_mode:
            x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
            key_mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        x = self.dropout(x)
        row = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            export = ("cls" if cls_mode else "mean") if i == last else "none"
            x, r = layer(x, key_mask if padded else None, export)
            row = r if r is not None else row
        if cls_mode:
            z = x[:, 0]
            cls_self = row[:, 0]
            inst = row[:, 1:]
        else:
            z = masked_mean(x, mask)
            cls_self = None
            inst = row
        z = self.norm(z)
        inst = inst * mask.to(inst.dtype)
        total = inst.sum(dim=1, keepdim=True)
        uniform = mask.to(inst.dtype) / mask.sum(dim=1, keepdim=True).to(inst.dtype)
        attention = torch.where(total > 0, inst / total.clamp_min(torch.finfo(inst.dtype).tiny), uniform)
        extras = {"bag_feature": z}
        if cls_self is not None:
            extras["cls_self_attention"] = cls_self  # the class token's weight on itself, dropped from `attention`
        return MILOutput(bag_logits=self.head(z), mask=mask, attention=attention, extras=extras)
