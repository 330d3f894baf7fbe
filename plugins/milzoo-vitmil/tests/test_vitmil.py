"""Transformer-MIL: faithfulness to the official forward, padding, attention export, tasks, contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from milzoo.testing import (
    assert_learns_toy_problem, assert_memory_linear, assert_trains_regression, parametrize_with_checks,
)
from milzoo_vitmil.pooling import ViTMILPooling


# --- the reference: the official forward, transcribed in plain torch ---------------------------------------------
#
# peng-lab/HistoBistro @ 52313bb, models/aggregators/transformer.py (``Transformer``, ``TransformerBlocks``) and
# models/aggregators/model_utils.py (``PreNorm``, ``FeedForward``, ``Attention``): the code of Wagner et al.,
# Cancer Cell 2023.  Written out here (einops rearranges as view/transpose; no positional encoding, no
# attention-gradient hooks) so that the test needs neither repository.  It works on one bag at a time, as the
# official code does (``bs: 1`` in its configs, no mask argument).


class RefPreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class RefFeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x):
        return self.net(x)


class RefAttention(nn.Module):
    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        inner_dim = dim_head * heads
        project_out = not (heads == 1 and dim_head == dim)
        self.heads = heads
        self.scale = dim_head**-0.5
        self.attend = nn.Softmax(dim=-1)
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout)) if project_out else nn.Identity()

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        attn = self.attend(dots)
        self.attention_map = attn  # save_attention_map
        out = torch.matmul(attn, v)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class RefTransformerBlocks(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    RefPreNorm(dim, RefAttention(dim, heads=heads, dim_head=dim_head, dropout=dropout)),
                    RefPreNorm(dim, RefFeedForward(dim, mlp_dim, dropout=dropout)),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class RefTransformer(nn.Module):
    def __init__(self, *, num_classes, input_dim, dim=512, depth=2, heads=8, mlp_dim=512, pool="cls", dim_head=64,
                 dropout=0.0, emb_dropout=0.0):
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(input_dim, heads * dim_head, bias=True), nn.ReLU())
        self.mlp_head = nn.Sequential(nn.LayerNorm(mlp_dim), nn.Linear(mlp_dim, num_classes))
        self.transformer = RefTransformerBlocks(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.pool = pool
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(emb_dropout)

    def forward(self, x):
        b, _, _ = x.shape
        x = self.projection(x)
        if self.pool == "cls":
            x = torch.cat((self.cls_token.expand(b, 1, -1), x), dim=1)
        x = self.dropout(x)
        x = self.transformer(x)
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(self.norm(x))


def ref_name(ours: str) -> str:
    """Our parameter name -> the official one."""
    parts = ours.split(".")
    if parts[0] == "head":
        return ".".join(["mlp_head", *parts[1:]])
    if parts[0] != "layers":
        return ours
    i, sub, rest = parts[1], parts[2], parts[3:]
    where = {
        "attn_norm": ["0", "norm"],
        "attn": ["0", "fn"],
        "ff_norm": ["1", "norm"],
        "ff": ["1", "fn", "net"],
    }[sub]
    return ".".join(["transformer", "layers", i, *where, *rest])


def pair(in_dim=6, k=2, seed=0, **options):
    """Our pooling with random weights everywhere (LayerNorms too) and the reference holding the same ones, float64."""
    torch.manual_seed(seed)
    ours = ViTMILPooling(ViTMILPooling.Config(**options), in_dim, k).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    o = ours.config
    ref = RefTransformer(num_classes=k, input_dim=in_dim, dim=o.dim, depth=o.depth, heads=o.heads, mlp_dim=o.mlp_dim,
                         pool=o.pool, dim_head=o.dim_head, dropout=o.dropout, emb_dropout=o.emb_dropout).double()
    theirs = ref.state_dict()
    mapped = {ref_name(n): t for n, t in ours.state_dict().items()}
    if o.pool == "mean":  # the official model keeps an unused class token in mean mode; milzoo has none
        mapped["cls_token"] = theirs["cls_token"]
    assert set(mapped) == set(theirs), set(mapped) ^ set(theirs)
    ref.load_state_dict(mapped)
    return ours, ref


def ref_attention(ref: RefTransformer, n: int) -> torch.Tensor:
    """The documented export computed from the reference's saved last-layer map ``[1, H, L, L]``."""
    amap = ref.transformer.layers[-1][0].fn.attention_map.mean(dim=1)[0]  # heads averaged
    if ref.pool == "cls":
        row = amap[0, 1:]
        return row / row.sum()
    return amap.mean(dim=0)  # attention received, averaged over the queries


SETTINGS = [
    dict(dim=16, heads=2, dim_head=8, mlp_dim=16),  # the official shape: heads * dim_head == dim == mlp_dim
    dict(dim=12, depth=3, heads=3, dim_head=4, mlp_dim=12),
    dict(dim=8, depth=1, heads=1, dim_head=8, mlp_dim=8),  # one head of full width: no output projection
    dict(dim=16, heads=4, dim_head=4, mlp_dim=16, pool="mean"),
]
TOL = dict(rtol=0.0, atol=1e-10)


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("k", [1, 3])
def test_matches_official_forward_unpadded(options, k):
    ours, ref = pair(k=k, **options)
    ours.eval(), ref.eval()
    for n in (1, 2, 9):
        x = torch.randn(1, n, 6, dtype=torch.float64)
        out = ours(x, torch.ones(1, n, dtype=torch.bool))
        expected = ref(x)
        torch.testing.assert_close(out.bag_logits, expected, **TOL)
        torch.testing.assert_close(out.attention[0], ref_attention(ref, n), **TOL)


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_padded_batch_matches_official_on_each_bag_alone(options):
    ours, ref = pair(k=3, seed=1, **options)
    ours.eval(), ref.eval()
    lengths = [7, 1, 12, 4]
    x = torch.randn(4, 12, 6, dtype=torch.float64)
    mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    x[~mask] = torch.tensor([float("nan"), float("inf"), -1e6, 1e6, 0.0, 3.0], dtype=torch.float64)  # garbage
    out = ours(x, mask)
    assert torch.all(out.attention[~mask] == 0)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(4, dtype=torch.float64), **TOL)
    for b, n in enumerate(lengths):
        expected = ref(x[b : b + 1, :n])
        torch.testing.assert_close(out.bag_logits[b : b + 1], expected, **TOL)
        torch.testing.assert_close(out.attention[b, :n], ref_attention(ref, n), **TOL)


def test_gradients_match_official():
    ours, ref = pair(k=2, seed=2, **SETTINGS[0])
    x = torch.randn(1, 10, 6, dtype=torch.float64)
    w = torch.randn(1, 2, dtype=torch.float64)
    (ours(x, torch.ones(1, 10, dtype=torch.bool)).bag_logits * w).sum().backward()
    (ref(x) * w).sum().backward()
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[ref_name(name)].grad, rtol=0.0, atol=1e-9)


def test_dropout_placement_matches_official_in_training():
    """Same seed, same dropout masks: emb_dropout, the attention output and both feed-forward dropouts."""
    ours, ref = pair(k=2, seed=3, dim=16, heads=2, dim_head=8, mlp_dim=16, dropout=0.3, emb_dropout=0.2)
    ours.train(), ref.train()
    x = torch.randn(1, 8, 6, dtype=torch.float64)
    torch.manual_seed(7)
    a = ours(x, torch.ones(1, 8, dtype=torch.bool)).bag_logits
    torch.manual_seed(7)
    b = ref(x)
    torch.testing.assert_close(a, b, **TOL)
    torch.manual_seed(8)
    assert not torch.allclose(ours(x, torch.ones(1, 8, dtype=torch.bool)).bag_logits, a)  # dropout is on


def test_float32_close_to_official():
    ours, ref = pair(k=2, seed=4, **SETTINGS[0])
    ours, ref = ours.float().eval(), ref.float().eval()
    x = torch.randn(1, 300, 6)
    torch.testing.assert_close(ours(x, torch.ones(1, 300, dtype=torch.bool)).bag_logits, ref(x), rtol=1e-5, atol=1e-5)


# --- milzoo's own behaviour -----------------------------------------------------------------------------------


def small(in_dim=6, k=2, **kw):
    return ViTMILPooling(ViTMILPooling.Config(**{"dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16, **kw}), in_dim, k)


def test_official_defaults():
    c = ViTMILPooling.Config()
    assert (c.dim, c.depth, c.heads, c.dim_head, c.mlp_dim) == (512, 2, 8, 64, 512)
    assert (c.dropout, c.emb_dropout, c.pool) == (0.0, 0.0, "cls")


def test_widths_the_official_code_cannot_build():
    """heads * dim_head != dim and mlp_dim != dim crash the official code; milzoo projects to dim (docs)."""
    pool = small(dim=10, heads=3, dim_head=5, mlp_dim=7, k=4).eval()
    out = pool(torch.randn(2, 5, 6), torch.ones(2, 5, dtype=torch.bool))
    assert out.bag_logits.shape == (2, 4) and out.extras["bag_feature"].shape == (2, 10)


def test_attention_export_is_last_layer_cls_row_without_the_class_token():
    torch.manual_seed(0)
    pool = small(depth=2).eval()
    h = torch.randn(1, 5, 6)
    out = pool(h, torch.ones(1, 5, dtype=torch.bool))
    # recompute the row by hand from the last layer's input
    seen = {}
    pool.layers[1].register_forward_hook(lambda m, inp, o: seen.update(x=inp[0]))
    pool(h, torch.ones(1, 5, dtype=torch.bool))
    att = pool.layers[1].attn
    xn = pool.layers[1].attn_norm(seen["x"])
    q, k, _ = att.to_qkv(xn).view(1, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
    full = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1).mean(1)[0]  # [6, 6]
    torch.testing.assert_close(out.extras["cls_self_attention"][0], full[0, 0])
    torch.testing.assert_close(out.attention[0], full[0, 1:] / full[0, 1:].sum())


def test_permutation_invariant_and_order_free():
    torch.manual_seed(0)
    pool = small().eval()
    h = torch.randn(1, 9, 6)
    m = torch.ones(1, 9, dtype=torch.bool)
    perm = torch.randperm(9)
    a, b = pool(h, m), pool(h[:, perm], m)
    torch.testing.assert_close(a.bag_logits, b.bag_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.attention[:, perm], b.attention, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padded", [False, True])
def test_no_n_by_n_tensor_in_a_training_step(padded):
    """Fused attention (scaled_dot_product_attention) and a one-row export: memory linear in the bag size."""
    torch.manual_seed(0)
    assert_memory_linear(small(in_dim=4).train(), in_dim=4, padded=padded)


def test_registered_with_alias():
    from milzoo.registry import get_component

    assert get_component("pooling", "vit_mil") is ViTMILPooling
    assert get_component("pooling", "transformer_mil") is ViTMILPooling


def test_training_sanity_toy_problem():
    torch.manual_seed(0)
    assert_learns_toy_problem(small)


def test_regression_task_trains_two_epochs(tmp_path):
    """Every task: the head has num_classes outputs (one per target here); a 2-epoch regression run works."""
    assert ViTMILPooling.tasks is None
    assert_trains_regression({"name": "vit_mil", "dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16}, tmp_path,
                             head=lambda pooling: pooling.head[-1])


# --- the contract suite ----------------------------------------------------------------------------------------


@parametrize_with_checks(
    [
        ViTMILPooling,
        (ViTMILPooling, {"dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16, "pool": "mean"}),
        (ViTMILPooling, {"dim": 8, "depth": 1, "heads": 1, "dim_head": 8, "mlp_dim": 24, "dropout": 0.2,
                         "emb_dropout": 0.1}),
        (ViTMILPooling, {"dim": 12, "depth": 3, "heads": 3, "dim_head": 6, "mlp_dim": 12}),
        "pooling:transformer_mil",
    ]
)
def test_contract(component, check):
    check(component)
