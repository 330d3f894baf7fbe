"""TransMIL pooling (docs/methods.md section 4).

Per bag of ``n`` instances:

1. ``H = ReLU(h W + b)`` to ``hidden_dim`` (512);
2. squaring: ``s = ceil(sqrt(n))``, ``N = s^2``; the first ``N - n`` rows of ``H``
   are appended at the end (wrap-around, see :func:`square_index`);
3. a learnable class token is prepended (``N + 1`` tokens);
4. layer 1: ``x <- x + NystromAttention(LayerNorm(x))`` (no FFN);
5. PPEG: the ``N`` tokens, row-major on an ``s x s`` grid, become
   ``grid + DWConv7(grid) + DWConv5(grid) + DWConv3(grid)`` (class token untouched);
6. layer 2 as layer 1;
7. ``LayerNorm``; the class token goes through ``Linear(hidden_dim -> k)``.

Because the squaring and PPEG depend on each bag's own length and order, the
bags of a batch are processed separately (bags of equal length are stacked
into one call), so padding never changes a result.  The model is *not*
permutation invariant: PPEG mixes neighbours on the grid.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, PositiveInt, field_validator
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.components.output import MILOutput
from milzoo.layers.masking import bag_lengths, is_padded, real_rows
from milzoo_transmil.nystrom import NystromAttention


def square_index(n: int, device: torch.device | None = None) -> Tensor:
    """Source instance of each of the ``ceil(sqrt(n))**2`` squared positions.

    Position ``t`` holds instance ``t mod n``: the first ``n`` positions are the
    bag in order, the appended ones repeat instances ``0, 1, ...`` (n=5 ->
    ``[0,1,2,3,4,0,1,2,3]``).  Since ``N - n <= n`` for every ``n >= 1`` this is
    exactly "append the first ``N - n`` rows".
    """
    if n < 1:
        raise ValueError("TransMIL needs at least one instance per bag")
    side = math.isqrt(n - 1) + 1  # ceil(sqrt(n)) without float error
    return torch.arange(side * side, device=device) % n


class PPEG(nn.Module):
    """Pyramid position encoding generator: identity plus depthwise convolutions on the square grid."""

    def __init__(self, dim: int, kernels: list[int]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in kernels)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, 1 + s*s, C]`` (class token first) -> same shape."""
        b, length, c = x.shape
        side = math.isqrt(length - 1)
        if side * side != length - 1:
            raise ValueError(f"PPEG needs 1 + a square number of tokens, got {length}")
        cls, tokens = x[:, :1], x[:, 1:]
        grid = tokens.transpose(1, 2).reshape(b, c, side, side)  # row-major: token r*s + c at (r, c)
        out = grid
        for conv in self.convs:
            out = out + conv(grid)
        return torch.cat([cls, out.flatten(2).transpose(1, 2)], dim=1)


class TransLayer(nn.Module):
    """Pre-norm residual Nystrom attention, without a feed-forward block."""

    def __init__(self, dim: int, **attn_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, **attn_kwargs)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the new sequence and the class token's attention row ``[B, H, L]``."""
        out, row = self.attn(self.norm(x), query_index=0)
        return x + out, row


class TransMILPooling(Pooling):
    """TransMIL: transformer over the instances with Nystrom attention and PPEG (Shao et al. 2021)."""

    name = "transmil"
    takes_lengths = True
    permutation_invariant = False
    #: small sizes for the contract suite (milzoo.testing); the defaults take seconds per check
    contract_options = {"hidden_dim": 32, "heads": 2, "dim_head": 8, "num_landmarks": 8}

    class Config(ComponentConfig):
        hidden_dim: PositiveInt = Field(default=512, description="size of the FC+ReLU projection and of the tokens")
        heads: PositiveInt = Field(default=8, description="attention heads")
        dim_head: PositiveInt = Field(default=64, description="size of each attention head")
        num_landmarks: PositiveInt = Field(default=256, description="Nystrom landmarks (segment means)")
        pinv_iterations: PositiveInt = Field(default=6, description="iterations of the Moore-Penrose pseudo-inverse")
        residual_kernel: int = Field(
            default=33, ge=0, description="kernel of the depthwise value-residual conv along the sequence (odd; 0 = off)"
        )
        attn_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="dropout after the attention output projection")
        ppeg_kernels: list[PositiveInt] = Field(
            default=[7, 5, 3], min_length=1, description="odd kernel sizes of PPEG's depthwise convolutions"
        )
        attention_layer: Literal[1, 2] = Field(
            default=2, description="which layer's class-token attention row is exported as `attention`"
        )
        duplicates: Literal["drop", "add"] = Field(
            default="drop",
            description="attention of wrap-around duplicate tokens: drop it (authors) or add it to the original instance",
        )
        nystrom_padding: Literal["strip", "keep"] = Field(
            default="strip",
            description="which rows of a Nystrom layer's output the tokens get, after the sequence was zero-padded at "
            "the front to a multiple of num_landmarks: 'strip' drops the padding's rows (nystrom-attention >= 0.0.10); "
            "'keep' keeps the first n rows, padding included, and drops the last ones, as nystrom-attention 0.0.9 "
            "(pinned by the official requirements.txt) did: only to reproduce weights trained with it",
        )

        @field_validator("residual_kernel")
        @classmethod
        def _odd_or_zero(cls, v: int) -> int:
            if v and v % 2 == 0:
                raise ValueError("residual_kernel must be odd (or 0 to disable the value residual)")
            return v

        @field_validator("ppeg_kernels")
        @classmethod
        def _odd(cls, v: list[int]) -> list[int]:
            if any(k % 2 == 0 for k in v):
                raise ValueError("ppeg_kernels must all be odd so the grid keeps its size")
            return v

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        d = config.hidden_dim
        attn = dict(
            heads=config.heads,
            dim_head=config.dim_head,
            num_landmarks=config.num_landmarks,
            pinv_iterations=config.pinv_iterations,
            residual_kernel=config.residual_kernel,
            dropout=config.attn_dropout,
            padding_output=config.nystrom_padding,
        )
        self.fc = nn.Sequential(nn.Linear(in_dim, d), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.layer1 = TransLayer(d, **attn)
        self.ppeg = PPEG(d, list(config.ppeg_kernels))
        self.layer2 = TransLayer(d, **attn)
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, num_classes)

    def _instance_attention(self, row: Tensor, n: int) -> Tensor:
        """Class-token row ``[G, H, 1 + N]`` -> attention over the ``n`` real instances ``[G, n]``.

        Heads are averaged and the class token's own column is removed.  The
        wrap-around duplicates (positions ``n..N-1``) are dropped, or with
        ``duplicates = "add"`` added to the instance they copy.  The Nystrom
        row is only approximately non-negative, so negative entries are
        clipped to 0 before normalising (uniform if nothing is left).
        """
        r = row.mean(dim=1)[:, 1:]  # [G, N]
        if self.config.duplicates == "drop" or r.shape[1] == n:
            r = r[:, :n]
        else:
            idx = square_index(n, device=r.device)
            r = r.new_zeros(r.shape[0], n).index_add(1, idx, r)
        r = r.clamp_min(0.0)
        total = r.sum(dim=1, keepdim=True)
        uniform = torch.full_like(r, 1.0 / n)
        return torch.where(total > 0, r / total.clamp_min(torch.finfo(r.dtype).tiny), uniform)

    def forward_bags(self, x: Tensor) -> dict[str, Tensor]:
        """Run bags of one common length: ``x [G, n, in_dim]`` (no padding)."""
        g, n, _ = x.shape
        h = self.fc(x)
        h = h[:, square_index(n, device=h.device)]  # [G, N, D]
        t = torch.cat([self.cls_token.expand(g, -1, -1).to(h.dtype), h], dim=1)
        t, row1 = self.layer1(t)
        t = self.ppeg(t)
        t, row2 = self.layer2(t)
        cls = self.norm(t)[:, 0]
        return {
            "bag_logits": self.classifier(cls),
            "bag_feature": cls,
            "attention_layer1": self._instance_attention(row1, n),
            "attention_layer2": self._instance_attention(row2, n),
        }

    def forward(self, h: Tensor, mask: Tensor, lengths: Sequence[int] | None = None) -> MILOutput:
        lengths = bag_lengths(mask, lengths)
        if not is_padded(mask, lengths):  # no padding: one call for the whole batch, nothing indexed
            res = self.forward_bags(h)
            att = {key: res[key] for key in ("attention_layer1", "attention_layer2")}
            return MILOutput(bag_logits=res["bag_logits"], mask=mask,
                             attention=att[f"attention_layer{self.config.attention_layer}"],
                             extras={**att, "bag_feature": res["bag_feature"]})
        groups: dict[int, list[int]] = defaultdict(list)
        for b, n in enumerate(lengths):
            groups[n].append(b)
        per_bag: list[dict[str, Tensor] | None] = [None] * h.shape[0]
        rows = [real_rows(mask[b], n) for b, n in enumerate(lengths)]  # by index: nothing read back
        for n, bags in groups.items():
            res = self.forward_bags(torch.stack([h[b].index_select(0, rows[b]) for b in bags]))
            for i, b in enumerate(bags):
                per_bag[b] = {key: val[i] for key, val in res.items()}

        def spread(a: Tensor, b: int) -> Tensor:  # [n] -> [N] with zeros at padding
            return a.new_zeros(mask.shape[1]).index_copy(0, rows[b], a)

        att = {
            key: torch.stack([spread(p[key], b) for b, p in enumerate(per_bag)])
            for key in ("attention_layer1", "attention_layer2")
        }
        return MILOutput(
            bag_logits=torch.stack([p["bag_logits"] for p in per_bag]),
            mask=mask,
            attention=att[f"attention_layer{self.config.attention_layer}"],
            extras={**att, "bag_feature": torch.stack([p["bag_feature"] for p in per_bag])},
        )
