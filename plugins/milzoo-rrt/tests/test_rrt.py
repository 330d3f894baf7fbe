"""RRT-MIL: faithfulness to the official forward (per bag), padding, composition with other poolings, contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from milzoo.errors import ComponentError
from milzoo.testing import (
    assert_learns_toy_problem, assert_trains_regression, parametrize_with_checks,
)
from milzoo_rrt.pooling import RRTPooling, region_grid


# --- the reference: the official forward, transcribed in plain torch ---------------------------------------------
#
# DearCaat/RRT-MIL @ 7ecbdfb, modules/rrt.py (``TransLayer``, ``RRTEncoder``, ``RRTMIL``), modules/rmsa.py
# (``InnerAttention`` with ``epeg_type = 'attn'``, ``RegionAttntion``, ``CrossRegionAttntion``, ``region_partition``,
# ``region_reverse``) and modules/datten.py (``Attention``, ``AttentionGated``, ``DAttention``): the code of Tang
# et al., CVPR 2024, written out so that the test needs no copy of the repository (or timm: ``drop_path = 0``,
# so ``DropPath`` is the identity).  ``RRTMIL`` minus its ``patch_to_emb`` (Linear + ReLU + Dropout: milzoo's
# ``mlp`` encoder) is what the pooling computes.  One bag at a time, as the official code runs (batch size 1).


def ref_region_partition(x, region_size):
    B, H, W, C = x.shape
    x = x.view(B, H // region_size, region_size, W // region_size, region_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, region_size, region_size, C)


def ref_region_reverse(regions, region_size, H, W):
    B = int(regions.shape[0] / (H * W / region_size / region_size))
    x = regions.view(B, H // region_size, W // region_size, region_size, region_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


class RefInnerAttention(nn.Module):
    def __init__(self, dim, head_dim=None, num_heads=8, qkv_bias=True, proj_drop=0.0, epeg=True, epeg_k=15,
                 epeg_2d=False, epeg_bias=True):
        super().__init__()
        self.num_heads = num_heads
        head_dim = head_dim or dim // num_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, head_dim * num_heads * 3, bias=qkv_bias)
        self.proj = nn.Linear(head_dim * num_heads, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if epeg:
            padding = epeg_k // 2
            if epeg_2d:
                self.pe = nn.Conv2d(num_heads, num_heads, epeg_k, padding=padding, groups=num_heads, bias=epeg_bias)
            else:
                self.pe = nn.Conv2d(num_heads, num_heads, (epeg_k, 1), padding=(padding, 0), groups=num_heads,
                                    bias=epeg_bias)
        else:
            self.pe = None

    def forward(self, x):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        if self.pe is not None:
            attn = attn + self.pe(attn)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(x))


def ref_padding(x, region_size, region_num, min_region_num, min_region_ratio):
    B, L, C = x.shape
    if region_size is not None:
        H = W = int(np.ceil(np.sqrt(L)))
        _n = -H % region_size
        H, W = H + _n, W + _n
        rs = region_size
    else:
        H = W = int(np.ceil(np.sqrt(L)))
        _n = -H % region_num
        H, W = H + _n, W + _n
        rs = int(H // region_num)
    add_length = H * W - L
    if add_length > L / (min_region_ratio + 1e-8) or L < min_region_num:
        H = W = int(np.ceil(np.sqrt(L)))
        _n = -H % 2
        H, W = H + _n, W + _n
        add_length = H * W - L
        rs = H
    if add_length > 0:
        x = torch.cat([x, torch.zeros((B, add_length, C), dtype=x.dtype)], dim=1)
    return x, H, W, add_length, rs


class RefRegionAttntion(nn.Module):
    def __init__(self, dim, num_heads, region_size=0, qkv_bias=True, drop=0.0, region_num=8, epeg=False,
                 min_region_num=0, min_region_ratio=0.0, **kw):
        super().__init__()
        self.region_size = region_size if region_size > 0 else None
        self.region_num, self.min_region_num, self.min_region_ratio = region_num, min_region_num, min_region_ratio
        self.attn = RefInnerAttention(dim, head_dim=dim // num_heads, num_heads=num_heads, qkv_bias=qkv_bias,
                                      proj_drop=drop, epeg=epeg, **kw)

    def forward(self, x):
        B, L, C = x.shape
        x, H, W, add_length, rs = ref_padding(x, self.region_size, self.region_num, self.min_region_num,
                                              self.min_region_ratio)
        x = x.view(B, H, W, C)
        x_regions = ref_region_partition(x, rs).view(-1, rs * rs, C)
        attn_regions = self.attn(x_regions).view(-1, rs, rs, C)
        x = ref_region_reverse(attn_regions, rs, H, W).view(B, H * W, C)
        return x[:, :-add_length] if add_length > 0 else x


class RefCrossRegionAttntion(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True, drop=0.0, region_num=8, crmsa_k=3, crmsa_mlp=False):
        super().__init__()
        self.region_num = region_num
        self.attn = RefInnerAttention(dim, head_dim=dim // num_heads, num_heads=num_heads, qkv_bias=qkv_bias,
                                      proj_drop=drop, epeg=False)
        self.crmsa_mlp = crmsa_mlp
        if crmsa_mlp:
            self.phi = nn.Sequential(nn.Linear(dim, dim // 4, bias=False), nn.Tanh(),
                                     nn.Linear(dim // 4, crmsa_k, bias=False))
        else:
            self.phi = nn.Parameter(torch.empty((dim, crmsa_k)))
            nn.init.kaiming_uniform_(self.phi, a=math.sqrt(5))

    def forward(self, x):
        B, L, C = x.shape
        x, H, W, add_length, rs = ref_padding(x, None, self.region_num, 0, 0.0)
        x = x.view(B, H, W, C)
        x_regions = ref_region_partition(x, rs).view(-1, rs * rs, C)
        if self.crmsa_mlp:
            logits = self.phi(x_regions).transpose(1, 2)
        else:
            logits = torch.einsum("w p c, c n -> w p n", x_regions, self.phi).transpose(1, 2)
        combine_weights = logits.softmax(dim=-1)
        dispatch_weights = logits.softmax(dim=1)
        logits_min, _ = logits.min(dim=-1)
        logits_max, _ = logits.max(dim=-1)
        dispatch_weights_mm = (logits - logits_min.unsqueeze(-1)) / (
            logits_max.unsqueeze(-1) - logits_min.unsqueeze(-1) + 1e-8)
        attn_regions = torch.einsum("w p c, w n p -> w n p c", x_regions, combine_weights).sum(dim=-2).transpose(0, 1)
        attn_regions = self.attn(attn_regions).transpose(0, 1)
        attn_regions = torch.einsum("w n c, w n p -> w n p c", attn_regions, dispatch_weights_mm)
        attn_regions = torch.einsum("w n p c, w n p -> w n p c", attn_regions, dispatch_weights).sum(dim=1)
        attn_regions = attn_regions.view(-1, rs, rs, C)
        x = ref_region_reverse(attn_regions, rs, H, W).view(B, H * W, C)
        return x[:, :-add_length] if add_length > 0 else x


class RefMlp(nn.Module):
    def __init__(self, dim, hidden, act, drop):
        super().__init__()
        self.fc1, self.act, self.fc2, self.drop = nn.Linear(dim, hidden), act(), nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class RefTransLayer(nn.Module):
    def __init__(self, dim, attn, ffn=False, ffn_act="gelu", mlp_ratio=4.0, drop_out=0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim) if ffn else nn.Identity()
        self.attn = attn
        self.ffn = ffn
        act = nn.GELU if ffn_act == "gelu" else nn.ReLU
        self.mlp = RefMlp(dim, int(dim * mlp_ratio), act, drop_out) if ffn else nn.Identity()

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        if self.ffn:
            x = x + self.mlp(self.norm2(x))
        return x


class RefRRTEncoder(nn.Module):
    def __init__(self, dim, o):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.all_shortcut = o.all_shortcut
        common = dict(ffn=o.ffn, ffn_act=o.ffn_act, mlp_ratio=o.mlp_ratio, drop_out=o.trans_dropout)
        self.layers = nn.Sequential(*[
            RefTransLayer(dim, RefRegionAttntion(
                dim, o.n_heads, region_size=o.region_size, qkv_bias=o.qkv_bias, drop=o.trans_dropout,
                region_num=o.region_num, epeg=o.epeg, min_region_num=o.min_region_num,
                min_region_ratio=o.min_region_ratio, epeg_k=o.epeg_k, epeg_2d=o.epeg_2d, epeg_bias=o.epeg_bias,
            ), **common)
            for _ in range(o.n_layers - 1)
        ])
        self.cr_msa = RefTransLayer(dim, RefCrossRegionAttntion(
            dim, o.crmsa_heads, qkv_bias=o.qkv_bias, drop=o.trans_dropout, crmsa_k=o.crmsa_k, crmsa_mlp=o.crmsa_mlp,
        ), **common) if o.cr_msa else nn.Identity()

    def forward(self, x):
        x_shortcut = x
        for layer in self.layers.children():
            x = layer(x)
        x = self.cr_msa(x)
        if self.all_shortcut:
            x = x + x_shortcut
        return self.norm(x)


class RefAttention(nn.Module):
    def __init__(self, L, act, bias, dropout, gated):
        super().__init__()
        act_layer = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[act]
        self.gated = gated
        if gated:
            self.attention_a = nn.Sequential(nn.Linear(L, 128, bias=bias), act_layer(),
                                             *([nn.Dropout(0.25)] if dropout else []))
            self.attention_b = nn.Sequential(nn.Linear(L, 128, bias=bias), nn.Sigmoid(),
                                             *([nn.Dropout(0.25)] if dropout else []))
            self.attention_c = nn.Linear(128, 1, bias=bias)
        else:
            self.attention = nn.Sequential(nn.Linear(L, 128, bias=bias), act_layer(),
                                           *([nn.Dropout(0.25)] if dropout else []), nn.Linear(128, 1, bias=bias))

    def forward(self, x):
        A = self.attention_c(self.attention_a(x).mul(self.attention_b(x))) if self.gated else self.attention(x)
        A = F.softmax(torch.transpose(A, -1, -2), dim=-1)
        return torch.matmul(A, x), A


class RefDAttention(nn.Module):
    def __init__(self, L, act="relu", gated=False, bias=False, dropout=False):
        super().__init__()
        self.attention = RefAttention(L, act, bias, dropout, gated)

    def forward(self, x):
        x, attn = self.attention(x)
        return x.squeeze(1), attn.squeeze(1)


class RefRRTMIL(nn.Module):
    """``RRTMIL`` after its ``patch_to_emb`` and dropout, ``pool = 'attn'``."""

    def __init__(self, dim, n_classes, o):
        super().__init__()
        self.online_encoder = RefRRTEncoder(dim, o)
        a = {"act": "relu", "gated": False, "bias": False, "dropout": False, **o.aggregator_options}
        self.pool_fn = RefDAttention(dim, a["act"], a["gated"], a["bias"], a["dropout"])
        self.predictor = nn.Linear(dim, n_classes)

    def forward(self, x):
        x = self.online_encoder(x)
        x, a = self.pool_fn(x)
        return self.predictor(x), a


def ref_name(ours: str, gated: bool, dropout: bool) -> str:
    """Our parameter name -> the official one."""
    name = ours.replace("reembed.", "online_encoder.").replace("cr_msa.attn.phi_weight", "cr_msa.attn.phi")
    if name.startswith("aggregator.predictor."):
        return name[len("aggregator."):]
    if name.startswith("aggregator."):
        rest = name[len("aggregator."):]
        if gated:
            return "pool_fn.attention." + rest
        rest = rest.replace("attention_a.0.", "attention.0.").replace("attention_c.", f"attention.{3 if dropout else 2}.")
        return "pool_fn.attention." + rest
    return name


def pair(dim=16, k=2, seed=0, **options):
    """Our pooling with random weights everywhere and the official model with the same, float64."""
    torch.manual_seed(seed)
    ours = RRTPooling(RRTPooling.Config(**options), dim, k).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    o = ours.config
    ref = RefRRTMIL(dim, k, o).double()
    a = o.aggregator_options
    mapped = {ref_name(n, a.get("gated", False), a.get("dropout", False)): t for n, t in ours.state_dict().items()}
    theirs = ref.state_dict()
    assert set(mapped) == set(theirs), set(mapped) ^ set(theirs)
    assert all(mapped[n].shape == theirs[n].shape for n in theirs)
    ref.load_state_dict(mapped)
    return ours, ref


SETTINGS = [
    {},  # the official defaults (8 regions a side, EPEG 15, CR-MSA k 3, 8 heads) at width 16
    # the official C16-PLIP / TCGA-PLIP kinds of settings: smaller EPEG, 1 head and an MLP phi in the CR-MSA
    dict(epeg_k=9, crmsa_k=1, crmsa_heads=1, all_shortcut=True, crmsa_mlp=True, region_num=4),
    # more layers, an FFN, the 2-D EPEG, fixed region size, no biases; gated, GELU, biased aggregator
    dict(n_layers=3, ffn=True, ffn_act="relu", epeg_2d=True, epeg_k=3, region_size=3, qkv_bias=False,
         epeg_bias=False, n_heads=4, aggregator_options={"gated": True, "bias": True, "act": "gelu", "dropout": True}),
    # the one-region fall-back for short bags, no CR-MSA, no EPEG, tanh attention
    dict(min_region_num=40, cr_msa=False, epeg=False, n_heads=2, aggregator_options={"act": "tanh"}),
    # the fall-back by padding ratio; 5 representatives per region
    dict(min_region_ratio=0.5, crmsa_k=5, crmsa_heads=2, epeg_k=5),
]
#: measured: <= 4e-15 absolute on logits and attention; the tolerance leaves room for BLAS summation orders
TOL = dict(rtol=1e-10, atol=1e-10)
LENGTHS = [1, 7, 65, 150, 23]


def _ids(o):
    return ",".join(f"{k}={v}" for k, v in o.items()) or "defaults"


@pytest.mark.parametrize("options", SETTINGS, ids=_ids)
def test_padded_batch_matches_official_on_each_bag_alone(options):
    ours, ref = pair(k=3, **options)
    ours.eval(), ref.eval()
    N = max(LENGTHS)
    x = torch.randn(len(LENGTHS), N, 16, dtype=torch.float64)
    mask = torch.arange(N)[None] < torch.tensor(LENGTHS)[:, None]
    x[~mask] = float("nan")  # garbage at padding must not reach a real instance
    out = ours(x, mask)
    assert torch.all(out.attention[~mask] == 0) and torch.all(out.extras["reembedded"][~mask] == 0)
    for b, n in enumerate(LENGTHS):
        logits, attention = ref(x[b : b + 1, :n])
        torch.testing.assert_close(out.bag_logits[b : b + 1], logits, **TOL)
        torch.testing.assert_close(out.attention[b, :n], attention[0], **TOL)
        reembedded = ref.online_encoder(x[b : b + 1, :n])
        torch.testing.assert_close(out.extras["reembedded"][b, :n], reembedded[0], **TOL)


def test_any_mask_pattern_is_each_bag_alone():
    """Real instances need not come first: they are taken in their order, wherever the padding is."""
    ours, ref = pair(k=2, seed=1, region_num=4)
    ours.eval(), ref.eval()
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    mask = torch.rand(2, 30) < 0.6
    mask[:, 0] = True
    out = ours(x, mask)
    for b in range(2):
        logits, attention = ref(x[b : b + 1][:, mask[b]])
        torch.testing.assert_close(out.bag_logits[b : b + 1], logits, **TOL)
        torch.testing.assert_close(out.attention[b][mask[b]], attention[0], **TOL)
        assert torch.all(out.attention[b][~mask[b]] == 0)


def test_gradients_match_official():
    ours, ref = pair(k=2, seed=2, **SETTINGS[1])
    ours.eval(), ref.eval()  # dropout off: the same function
    x = torch.randn(1, 50, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, dtype=torch.float64)
    (ours(x, torch.ones(1, 50, dtype=torch.bool)).bag_logits * w).sum().backward()
    gx = x.grad.clone()
    x.grad = None
    (ref(x)[0] * w).sum().backward()
    torch.testing.assert_close(gx, x.grad, rtol=1e-9, atol=1e-9)
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[ref_name(name, False, False)].grad, rtol=1e-9, atol=1e-9)


def test_float32_close_to_official():
    ours, ref = pair(k=2, seed=4)
    ours, ref = ours.float().eval(), ref.float().eval()
    x = torch.randn(1, 700, 16)
    torch.testing.assert_close(ours(x, torch.ones(1, 700, dtype=torch.bool)).bag_logits, ref(x)[0],
                               rtol=1e-4, atol=1e-4)


def test_region_grid_is_official():
    for n in [1, 2, 3, 63, 64, 65, 100, 1000, 50_000]:
        for kw in [dict(region_num=8), dict(region_num=3), dict(region_num=8, region_size=5),
                   dict(region_num=8, min_region_num=70), dict(region_num=8, min_region_ratio=0.3)]:
            _, H, _, _, rs = ref_padding(torch.zeros(1, n, 1), kw.get("region_size") or None, kw["region_num"],
                                         kw.get("min_region_num", 0), kw.get("min_region_ratio", 0.0))
            assert region_grid(n, **kw) == (H, rs), (n, kw)
    assert region_grid(50_000, 8) == (224, 28)  # 64 regions of 784 instances


def test_initialisation_follows_official():
    """``initialize_weights``: Xavier-normal Linear/Conv2d weights with zero biases, LayerNorms 1/0; the CR-MSA's
    phi Kaiming-uniform; the same parameter count as the official model."""
    torch.manual_seed(0)
    pool = RRTPooling(RRTPooling.Config(), 512, 2)
    for name, p in pool.named_parameters():
        if name.endswith("bias") and "norm" not in name:
            assert torch.all(p == 0), name
    w = pool.reembed.layers[0].attn.attn.qkv.weight  # 1536 x 512: std sqrt(2 / 2048)
    assert abs(w.std().item() - (2 / 2048) ** 0.5) < 0.002
    phi = pool.reembed.cr_msa.attn.phi_weight  # [512, 3]: kaiming_uniform(a=sqrt(5)), bound 1 / sqrt(fan_in=3)
    assert phi.abs().max() <= 1 / 3 ** 0.5
    ref = RefRRTMIL(512, 2, pool.config)
    assert sum(p.numel() for p in pool.parameters()) == sum(p.numel() for p in ref.parameters())


# --- milzoo's own behaviour -----------------------------------------------------------------------------------


def test_official_defaults():
    c = RRTPooling.Config()
    assert (c.region_num, c.n_layers, c.n_heads, c.epeg, c.epeg_k, c.crmsa_k, c.crmsa_heads, c.crmsa_mlp,
            c.all_shortcut, c.trans_dropout, c.qkv_bias, c.aggregator) == (
        8, 2, 8, True, 15, 3, 8, False, False, 0.1, True, "dattention")


def test_options_are_checked():
    with pytest.raises(ValidationError, match="odd"):
        RRTPooling.Config(epeg_k=4)
    with pytest.raises(ValidationError, match="cannot be 'rrt'"):
        RRTPooling.Config(aggregator="rrt")
    with pytest.raises(ComponentError, match="dattention"):
        RRTPooling(RRTPooling.Config(aggregator_options={"gatd": True}), 8, 2)
    with pytest.raises(ComponentError, match="abmil"):
        RRTPooling(RRTPooling.Config(aggregator="abmil", aggregator_options={"atn_hidden": 3}), 8, 2)


def test_wraps_a_registered_pooling():
    """``aggregator = "abmil"``: exactly ABMIL applied to the re-embedded instances (its outputs, its head)."""
    torch.manual_seed(0)
    pool = RRTPooling(RRTPooling.Config(aggregator="abmil", aggregator_options={"attn_hidden": 32, "gated": True},
                                        n_heads=2, crmsa_heads=2), 8, 3).eval()
    h = torch.randn(2, 20, 8)
    mask = torch.arange(20)[None] < torch.tensor([20, 9])[:, None]
    out = pool(h, mask)
    want = pool.aggregator(pool.reembed(h, mask), mask)
    torch.testing.assert_close(out.bag_logits, want.bag_logits)
    torch.testing.assert_close(out.inst_logits, want.inst_logits)
    assert type(pool.aggregator).name == "abmil" and pool.aggregator.config.attn_hidden == 32


def test_order_dependent():
    torch.manual_seed(0)
    pool = RRTPooling(RRTPooling.Config(region_num=2, n_heads=2, crmsa_heads=2), 8, 2).eval()
    h = torch.randn(1, 30, 8)
    m = torch.ones(1, 30, dtype=torch.bool)
    assert not torch.allclose(pool(h, m).bag_logits, pool(h[:, torch.randperm(30)], m).bag_logits)
    assert RRTPooling.permutation_invariant is False


def test_registered():
    from milzoo.registry import get_component

    assert get_component("pooling", "rrt") is RRTPooling


def test_training_sanity_toy_problem():
    torch.manual_seed(0)
    config = RRTPooling.Config(n_heads=2, crmsa_heads=2, trans_dropout=0.0)
    assert_learns_toy_problem(lambda in_dim, k: RRTPooling(config, in_dim, k))


def test_regression_task_trains_two_epochs(tmp_path):
    """Every task: the head has num_classes outputs (one per target here); a 2-epoch regression run works."""
    assert RRTPooling.tasks is None
    assert_trains_regression({"name": "rrt", "n_heads": 2, "crmsa_heads": 2}, tmp_path,
                             head=lambda pooling: pooling.aggregator.predictor)


# --- the contract suite ----------------------------------------------------------------------------------------


@parametrize_with_checks(
    [
        RRTPooling,
        (RRTPooling, {}),  # the official defaults: 8 x 8 regions (one instance each in these small bags)
        (RRTPooling, {"region_num": 2, "n_heads": 2, "crmsa_heads": 1, "crmsa_mlp": True, "all_shortcut": True,
                      "epeg_k": 5, "aggregator_options": {"gated": True, "bias": True}}),
        (RRTPooling, {"n_layers": 3, "ffn": True, "region_size": 2, "epeg_2d": True, "epeg_k": 3, "n_heads": 2,
                      "crmsa_heads": 2, "min_region_num": 4}),
        (RRTPooling, {"n_heads": 2, "crmsa_heads": 2, "region_num": 2, "aggregator": "abmil",
                      "aggregator_options": {"attn_hidden": 16, "gated": True}}),
        (RRTPooling, {"n_heads": 2, "crmsa_heads": 2, "aggregator": "mean"}),
        "pooling:rrt",
    ]
)
def test_contract(component, check):
    check(component)
