"""RRT-MIL pooling (Tang et al., "Feature Re-Embedding: Towards Foundation Model-Level Performance in
Computational Pathology", CVPR 2024; official code ``DearCaat/RRT-MIL``, ``modules/rrt.py``, ``modules/rmsa.py``,
``modules/datten.py``).

RRT is a *re-embedding* of the instances of a bag, put between the instance features and any aggregator.  In
milzoo an encoder maps instances one by one and never sees the bag, so the re-embedding lives in this pooling,
which then hands the re-embedded instances to an aggregator: the official attention pooling (``aggregator =
"dattention"``, the default, implemented here because no registered pooling computes it) or any registered
pooling (``aggregator = "abmil"``, ``"dsmil"``, ..., built with ``aggregator_options``).  docs/models/rrt.md.

Per bag ``X`` (``n x d``), with ``LN`` LayerNorms (docs/models/rrt.md has the full math)::

    X <- X + R-MSA(LN(X))           n_layers - 1 (1) times: multi-head self-attention inside each region,
                                    EPEG: the attention logits plus a depth-wise (epeg_k x 1) conv of them
    X <- X + CR-MSA(LN(X))          k (crmsa_k) representatives per region, attention across the regions,
                                    dispatched back to the instances
    X <- LN(X (+ X_0 if all_shortcut))
    bag = aggregator(X)

Regions: the official code lays the ``n`` instances out row by row on a square grid of side ``H =
ceil(sqrt(n))`` rounded up to a multiple of ``region_num`` (8), zero-fills the rest of the grid (after the
LayerNorm), and cuts it into ``region_num x region_num`` regions of ``(H / region_num)^2`` cells.  The partition
depends on ``n``, so it is computed **per bag from its real length**; bags of a batch that share a grid are
processed together.  Real instances are first moved to the front of each bag in their order, so any mask works,
and padding never reaches a real instance.  The zero cells of the grid take part in the attentions exactly as in
the official code (they are not masked there either): that is the official model, and a function of ``n`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveInt, ValidationError, field_validator
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling, pool_bags
from milzoo.components.output import MILOutput
from milzoo.errors import ComponentError
from milzoo.layers.masking import attention_pool, bag_lengths, is_padded, masked_softmax

#: largest attention map (elements) computed at once: regions are processed in chunks under it (same result)
_CHUNK_ELEMENTS = 1 << 25


def _ceil_sqrt(n: int) -> int:
    r = math.isqrt(n)
    return r if r * r == n else r + 1


def region_grid(n: int, region_num: int, region_size: int = 0, min_region_num: int = 0,
                min_region_ratio: float = 0.0) -> tuple[int, int]:
    """The official grid of a bag of ``n`` instances: ``(H, region_size)``, an ``H x H`` grid cut into square
    regions of side ``region_size`` (``RegionAttntion.padding``)."""
    side = _ceil_sqrt(n)
    if region_size > 0:
        h, rs = side + (-side % region_size), region_size
    else:
        h = side + (-side % region_num)
        rs = h // region_num
    add = h * h - n
    # the official fall-back to one region (an ablation; never taken with min_region_num = min_region_ratio = 0)
    if add > n / (min_region_ratio + 1e-8) or n < min_region_num:
        h = side + (-side % 2)
        rs = h
    return h, rs


def _partition(g: Tensor, h: int, rs: int) -> Tensor:
    """``[G, h*h, C] -> [G, nW, rs*rs, C]``: regions in row-major order, cells row-major inside each."""
    G, _, C = g.shape
    nr = h // rs
    return g.view(G, nr, rs, nr, rs, C).permute(0, 1, 3, 2, 4, 5).reshape(G, nr * nr, rs * rs, C)


def _reverse(r: Tensor, h: int, rs: int) -> Tensor:
    """The inverse of :func:`_partition`."""
    G, _, _, C = r.shape
    nr = h // rs
    return r.view(G, nr, nr, rs, rs, C).permute(0, 1, 3, 2, 4, 5).reshape(G, h * h, C)


class InnerAttention(nn.Module):
    """Multi-head self-attention over a short sequence (a region, or the regions), with the optional EPEG:
    ``softmax(QK^T / sqrt(dh) + conv(QK^T / sqrt(dh)))`` with a depth-wise ``epeg_k x 1`` (or ``epeg_k x
    epeg_k``) convolution per head over the attention map (the official ``epeg_type = 'attn'``)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, drop: float, epeg: bool, epeg_k: int,
                 epeg_2d: bool, epeg_bias: bool):
        super().__init__()
        self.heads = heads
        self.head_dim = max(1, dim // heads)  # official: dim // heads (0, i.e. broken, for dim < heads)
        self.scale = self.head_dim ** -0.5
        inner = self.head_dim * heads
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        if epeg:
            kernel, pad = ((epeg_k, epeg_k), (epeg_k // 2, epeg_k // 2)) if epeg_2d else ((epeg_k, 1), (epeg_k // 2, 0))
            self.pe = nn.Conv2d(heads, heads, kernel, padding=pad, groups=heads, bias=epeg_bias)
        else:
            self.pe = None

    def _attend(self, x: Tensor) -> Tensor:
        b, p, _ = x.shape
        qkv = self.qkv(x).reshape(b, p, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [b, heads, p, p]
        if self.pe is not None:
            attn = attn + self.pe(attn)
        attn = attn.softmax(dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b, p, self.heads * self.head_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[b, p, C] -> [b, p, C]``, the ``b`` sequences independent (processed in chunks of bounded size)."""
        b, p, _ = x.shape
        step = max(1, _CHUNK_ELEMENTS // max(1, self.heads * p * p))
        out = self._attend(x) if step >= b else torch.cat([self._attend(x[i : i + step]) for i in range(0, b, step)])
        return self.proj_drop(self.proj(out))


class RegionMSA(nn.Module):
    """R-MSA: self-attention inside each region of the bag's grid (``RegionAttntion``)."""

    def __init__(self, dim: int, heads: int, cfg: "RRTPooling.Config"):
        super().__init__()
        self.attn = InnerAttention(dim, heads, cfg.qkv_bias, cfg.trans_dropout, cfg.epeg, cfg.epeg_k,
                                   cfg.epeg_2d, cfg.epeg_bias)
        self.grid = dict(region_num=cfg.region_num, region_size=cfg.region_size,
                         min_region_num=cfg.min_region_num, min_region_ratio=cfg.min_region_ratio)

    def plan(self, n: int) -> tuple[int, int]:
        return region_grid(n, **self.grid)

    def forward(self, g: Tensor, h: int, rs: int) -> Tensor:
        r = _partition(g, h, rs)
        G, nw, p, C = r.shape
        return _reverse(self.attn(r.reshape(G * nw, p, C)).view(G, nw, p, C), h, rs)


class CrossRegionMSA(nn.Module):
    """CR-MSA (``CrossRegionAttntion``): ``crmsa_k`` softmax-weighted representatives per region, self-attention
    of each representative slot across the bag's regions, then each instance receives ``sum_n a_n * mm_n *
    dispatch_n`` (min-max normalised logits times the softmax over the slots)."""

    def __init__(self, dim: int, heads: int, cfg: "RRTPooling.Config"):
        super().__init__()
        # the official CR-MSA layer is built with TransLayer's defaults: 8 regions, no EPEG, no region_size
        self.attn = InnerAttention(dim, heads, cfg.qkv_bias, cfg.trans_dropout, False, 1, False, True)
        self.region_num = cfg.crmsa_region_num
        if cfg.crmsa_mlp:
            hidden = max(1, dim // 4)  # official: dim // 4
            self.phi = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.Tanh(),
                                     nn.Linear(hidden, cfg.crmsa_k, bias=False))
        else:
            self.phi_weight = nn.Parameter(torch.empty(dim, cfg.crmsa_k))
            nn.init.kaiming_uniform_(self.phi_weight, a=math.sqrt(5))
            self.phi = None

    def plan(self, n: int) -> tuple[int, int]:
        return region_grid(n, self.region_num)

    def forward(self, g: Tensor, h: int, rs: int) -> Tensor:
        r = _partition(g, h, rs)  # [G, nW, P, C]
        G, nw, p, C = r.shape
        logits = (self.phi(r) if self.phi is not None else r @ self.phi_weight).transpose(-1, -2)  # [G, nW, k, P]
        k = logits.shape[-2]
        combine = logits.softmax(dim=-1)
        dispatch = logits.softmax(dim=-2)
        lo, hi = logits.min(dim=-1).values, logits.max(dim=-1).values
        minmax = (logits - lo.unsqueeze(-1)) / (hi.unsqueeze(-1) - lo.unsqueeze(-1) + 1e-8)
        reps = combine @ r  # [G, nW, k, C]
        a = self.attn(reps.transpose(1, 2).reshape(G * k, nw, C)).view(G, k, nw, C).transpose(1, 2)
        out = (minmax * dispatch).transpose(-1, -2) @ a  # [G, nW, P, C]
        return _reverse(out, h, rs)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TransLayer(nn.Module):
    """``x + attn(LN(x))`` (``+ Mlp(LN2(x))`` with ``ffn``), the attention applied on each bag's own grid."""

    def __init__(self, dim: int, attn: nn.Module, cfg: "RRTPooling.Config"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = attn
        if cfg.ffn:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.ffn_act, cfg.trans_dropout)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: Tensor, lengths: list[int]) -> Tensor:
        x = x + _on_grids(self.norm(x), lengths, self.attn)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


def _on_grids(x: Tensor, lengths: list[int], attn: nn.Module) -> Tensor:
    """Apply a regional attention to each bag on its own official grid (bags with the same grid together).

    ``x [B, N, C]`` holds each bag's ``n`` real instances first; the cells of the grid past ``n`` are zeros (the
    official zero padding), whatever ``x`` holds there.  Rows past ``n`` of the result are not meaningful.
    """
    B, N, C = x.shape
    groups: dict[tuple[int, int], list[int]] = {}
    for b, n in enumerate(lengths):
        groups.setdefault(attn.plan(n), []).append(b)
    parts: list[Tensor] = [x[:0]] * B
    for (h, rs), bags in groups.items():
        cells = h * h
        whole = len(bags) == B
        # the group's bags by slices and its padding from Python numbers: no index tensor made from host data
        g = x if whole else torch.cat([x[b : b + 1] for b in bags])
        g = g[:, :cells] if N >= cells else F.pad(g, (0, 0, 0, cells - N))
        cell = torch.arange(cells, device=x.device)
        sizes = {lengths[b] for b in bags}
        past = (cell >= sizes.pop())[None] if len(sizes) == 1 else torch.stack([cell >= lengths[b] for b in bags])
        g = g.masked_fill(past[..., None], 0.0)
        y = attn(g, h, rs)
        y = y[:, :N] if cells >= N else F.pad(y, (0, 0, 0, N - cells))
        if whole:
            return y
        for i, b in enumerate(bags):
            parts[b] = y[i : i + 1]
    return torch.cat(parts)


class RRTEncoder(nn.Module):
    """The re-embedding (``RRTEncoder``): ``n_layers - 1`` R-MSA layers, a CR-MSA layer, a final LayerNorm."""

    def __init__(self, dim: int, cfg: "RRTPooling.Config"):
        super().__init__()
        self.layers = nn.ModuleList(
            TransLayer(dim, RegionMSA(dim, cfg.n_heads, cfg), cfg) for _ in range(cfg.n_layers - 1)
        )
        self.cr_msa = TransLayer(dim, CrossRegionMSA(dim, cfg.crmsa_heads, cfg), cfg) if cfg.cr_msa else None
        self.all_shortcut = cfg.all_shortcut
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, mask: Tensor, lengths: Sequence[int] | None = None) -> Tensor:
        """``h [B, N, d]``, ``mask [B, N]`` -> the re-embedded instances ``[B, N, d]`` (zeros at padding);
        ``lengths``: each bag's real instances when the host knows them (``milzoo.layers.bag_lengths``)."""
        B, N, d = h.shape
        lengths = bag_lengths(mask, lengths)
        padded = is_padded(mask, lengths)
        if padded:
            # each bag's real instances first, in their order; the rest zeroed (no value at padding survives)
            order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
            front = torch.arange(N, device=h.device)[None] < mask.sum(1, keepdim=True)
            x = h.gather(1, order[..., None].expand(-1, -1, d)).masked_fill(~front[..., None], 0.0)
        else:
            x = h
        shortcut = x
        for layer in self.layers:
            x = layer(x, lengths)
        if self.cr_msa is not None:
            x = self.cr_msa(x, lengths)
        if self.all_shortcut:
            x = x + shortcut
        x = self.norm(x)
        if not padded:
            return x
        x = x.masked_fill(~front[..., None], 0.0)
        return torch.zeros_like(x).scatter(1, order[..., None].expand(-1, -1, d), x)


class DAttentionConfig(ComponentConfig):
    """Options of the official aggregator (``aggregator = "dattention"``): the ``da_*`` options of the code."""

    act: Literal["relu", "gelu", "tanh"] = Field(default="relu", description="activation of the attention (da_act)")
    gated: bool = Field(default=False, description="gated attention (da_gated)")
    bias: bool = Field(default=False, description="biases in the attention's Linear layers (da_bias)")
    dropout: bool = Field(default=False, description="Dropout(0.25) in the attention branch (da_dropout)")
    attn_hidden: PositiveInt = Field(default=128, description="attention hidden size (official: 128, fixed)")


class DAttention(nn.Module):
    """The official aggregator: ``a = softmax_n(w^T act(V x_i))`` (bias-free, ReLU by default; gated
    ``w^T (act(V x_i) * sigm(U x_i))``), ``z = sum_i a_i x_i``, ``logits = predictor(z)`` (with bias)."""

    name = "dattention"

    def __init__(self, cfg: DAttentionConfig, dim: int, num_classes: int):
        super().__init__()
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[cfg.act]
        drop = [nn.Dropout(0.25)] if cfg.dropout else []
        self.attention_a = nn.Sequential(nn.Linear(dim, cfg.attn_hidden, bias=cfg.bias), act(), *drop)
        self.attention_b = (
            nn.Sequential(nn.Linear(dim, cfg.attn_hidden, bias=cfg.bias), nn.Sigmoid(), *drop) if cfg.gated else None
        )
        self.attention_c = nn.Linear(cfg.attn_hidden, 1, bias=cfg.bias)
        self.predictor = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor, mask: Tensor) -> MILOutput:
        a = self.attention_a(x)
        if self.attention_b is not None:
            a = a * self.attention_b(x)
        scores = self.attention_c(a).squeeze(-1)
        attention = masked_softmax(scores, mask)
        z = attention_pool(attention, x)
        return MILOutput(
            bag_logits=self.predictor(z), mask=mask, attention=attention,
            extras={"attention_scores": scores.masked_fill(~mask, 0.0), "bag_feature": z},
        )


def _initialize(module: nn.Module) -> None:
    """The official ``initialize_weights``: Xavier-normal Linear and Conv2d weights, zero biases, LayerNorms 1/0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class RRTPooling(Pooling):
    """RRT-MIL: regional re-embedding (R-MSA with EPEG, CR-MSA) of the bag, then an aggregator (Tang et al. 2024)."""

    name = "rrt"
    takes_lengths = True
    #: regions follow the order of the instances (a grid filled row by row)
    permutation_invariant = False
    #: small sizes for the contract suite (milzoo.testing): several instances per region, a 3-tap EPEG
    contract_options = {"n_heads": 2, "crmsa_heads": 2, "region_num": 2, "crmsa_region_num": 2, "epeg_k": 3}

    class Config(ComponentConfig):
        region_num: PositiveInt = Field(default=8, description="regions per side of the R-MSA grid (official: 8)")
        region_size: NonNegativeInt = Field(
            default=0, description="side of an R-MSA region in instances; 0: from region_num (official default)"
        )
        min_region_num: NonNegativeInt = Field(
            default=0, description="bags shorter than this use one R-MSA region (an official ablation; 0: never)"
        )
        min_region_ratio: float = Field(
            default=0.0, ge=0.0,
            description="one R-MSA region when the grid padding exceeds n / (ratio + 1e-8) (official ablation; 0: never)",
        )
        n_layers: PositiveInt = Field(default=2, description="n_layers - 1 R-MSA layers precede the CR-MSA (official: 2)")
        n_heads: PositiveInt = Field(default=8, description="heads of the R-MSA")
        epeg: bool = Field(default=True, description="EPEG: a convolution of the R-MSA attention map added to it")
        epeg_k: PositiveInt = Field(default=15, description="EPEG kernel size, odd (official hyper-parameter: 9-21)")
        epeg_2d: bool = Field(default=False, description="EPEG kernel epeg_k x epeg_k instead of epeg_k x 1 (ablation)")
        epeg_bias: bool = Field(default=True, description="bias of the EPEG convolution")
        cr_msa: bool = Field(default=True, description="the CR-MSA layer")
        crmsa_k: PositiveInt = Field(default=3, description="representatives per region in the CR-MSA (official: 1, 3, 5)")
        crmsa_heads: PositiveInt = Field(default=8, description="heads of the CR-MSA")
        crmsa_mlp: bool = Field(default=False, description="CR-MSA representative logits by an MLP (d/4, tanh) instead of a d x k matrix")
        crmsa_region_num: PositiveInt = Field(
            default=8, description="regions per side of the CR-MSA grid (the official code fixes 8, whatever region_num)"
        )
        all_shortcut: bool = Field(default=False, description="add the input to the re-embedding before its final LayerNorm")
        qkv_bias: bool = Field(default=True, description="biases of the query/key/value projections")
        trans_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="dropout after each attention's output projection (and in the FFN)")
        ffn: bool = Field(default=False, description="a feed-forward block after each attention (official ablation)")
        ffn_act: Literal["gelu", "relu"] = Field(default="gelu", description="activation of the FFN")
        mlp_ratio: float = Field(default=4.0, gt=0.0, description="FFN hidden width / d")
        aggregator: str = Field(
            default="dattention",
            description="what pools the re-embedded instances: 'dattention' (the official attention pooling, "
            "ReLU and bias-free) or the name of any registered pooling, e.g. 'abmil', 'dsmil', 'transmil'",
        )
        aggregator_options: dict[str, Any] = Field(
            default_factory=dict, description="options of the aggregator (its own recipe options, without 'name')"
        )

        @field_validator("epeg_k")
        @classmethod
        def _odd(cls, v: int) -> int:
            if v % 2 == 0:
                raise ValueError(f"epeg_k must be odd (a 'same' convolution of the attention map), not {v}")
            return v

        @field_validator("aggregator")
        @classmethod
        def _not_self(cls, v: str) -> str:
            if v.split(":")[-1] == "rrt":
                raise ValueError("the aggregator cannot be 'rrt' itself; name the pooling that follows the re-embedding")
            return v

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.reembed = RRTEncoder(in_dim, config)
        self.aggregator = self._build_aggregator(config, in_dim, num_classes)
        _initialize(self.reembed)  # RRTMIL applies initialize_weights to everything; phi keeps Kaiming-uniform
        if isinstance(self.aggregator, DAttention):
            _initialize(self.aggregator)

    @staticmethod
    def _build_aggregator(config, in_dim: int, num_classes: int) -> nn.Module:
        options = dict(config.aggregator_options)
        if config.aggregator == "dattention":
            try:
                cfg = DAttentionConfig.model_validate(options)
            except ValidationError as exc:
                raise ComponentError(
                    f"pooling 'rrt': aggregator_options do not fit the official aggregator 'dattention' "
                    f"(options: act, gated, bias, dropout, attn_hidden): {exc}"
                ) from None
            return DAttention(cfg, in_dim, num_classes)
        from milzoo.registry import get_component

        cls = get_component("pooling", config.aggregator)
        if cls is RRTPooling:
            raise ComponentError("pooling 'rrt': the aggregator cannot be 'rrt' itself; name another pooling.")
        try:
            cfg = cls.Config.model_validate(options)
        except ValidationError as exc:
            raise ComponentError(
                f"pooling 'rrt': aggregator_options do not fit the aggregator {config.aggregator!r}: {exc}"
            ) from None
        return cls(cfg, in_dim, num_classes)

    def check_task(self, task) -> None:
        if isinstance(self.aggregator, Pooling):
            self.aggregator.check_task(task)

    def after_forward(self, out, batch) -> None:
        if isinstance(self.aggregator, Pooling):
            self.aggregator.after_forward(out, batch)

    def forward(self, h: Tensor, mask: Tensor, lengths: Sequence[int] | None = None) -> MILOutput:
        x = self.reembed(h, mask, lengths)
        out = pool_bags(self.aggregator, x, mask, lengths)
        out.extras = {**out.extras, "reembedded": x}
        return out
