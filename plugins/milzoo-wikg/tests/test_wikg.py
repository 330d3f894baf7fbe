"""WiKG: faithfulness to the official forward, padding, small bags, blockwise neighbours, export, tasks, contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from milzoo.testing import (
    assert_learns_toy_problem, assert_memory_linear, assert_trains_regression, parametrize_with_checks,
)
from milzoo_wikg.pooling import WiKGPooling


# --- the reference: the official forward, transcribed in plain torch ---------------------------------------------
#
# WonderLandxD/WiKG @ HEAD, model.py (class ``WiKG``): the code of Li et al., CVPR 2024.  Written out here so that
# the test needs neither the repository nor torch_geometric: the three readouts are torch_geometric's
# ``global_mean_pool``, ``global_max_pool`` (with ``batch=None``: a mean / max over the nodes, keeping a leading
# dimension of 1) and ``GlobalAttention(gate_nn)`` (a softmax of ``gate_nn(x)`` over all nodes, then the weighted
# sum of ``x``), transcribed below.  The only addition is that the attention readout keeps its weights for the
# export test.  It works on one bag at a time, as the official code does (``h.squeeze(0)`` before the readout).


class RefGlobalAttention(nn.Module):
    def __init__(self, gate_nn):
        super().__init__()
        self.gate_nn = gate_nn

    def forward(self, x, batch=None):
        gate = self.gate_nn(x).view(-1, 1)
        gate = torch.softmax(gate, dim=0)
        self.weights = gate[:, 0]
        return (gate * x).sum(dim=0, keepdim=True)


def ref_mean_pool(x, batch=None):
    return x.mean(dim=-2, keepdim=True)


def ref_max_pool(x, batch=None):
    return x.max(dim=-2, keepdim=True)[0]


class RefWiKG(nn.Module):
    def __init__(self, dim_in=384, dim_hidden=512, topk=6, n_classes=2, agg_type="bi-interaction", dropout=0.3,
                 pool="attn"):
        super().__init__()
        self._fc1 = nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.LeakyReLU())
        self.W_head = nn.Linear(dim_hidden, dim_hidden)
        self.W_tail = nn.Linear(dim_hidden, dim_hidden)
        self.scale = dim_hidden**-0.5
        self.topk = topk
        self.agg_type = agg_type
        self.gate_U = nn.Linear(dim_hidden, dim_hidden // 2)  # created, never used by the forward
        self.gate_V = nn.Linear(dim_hidden, dim_hidden // 2)
        self.gate_W = nn.Linear(dim_hidden // 2, dim_hidden)
        if agg_type == "gcn":
            self.linear = nn.Linear(dim_hidden, dim_hidden)
        elif agg_type == "sage":
            self.linear = nn.Linear(dim_hidden * 2, dim_hidden)
        elif agg_type == "bi-interaction":
            self.linear1 = nn.Linear(dim_hidden, dim_hidden)
            self.linear2 = nn.Linear(dim_hidden, dim_hidden)
        self.activation = nn.LeakyReLU()
        self.message_dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim_hidden)
        self.fc = nn.Linear(dim_hidden, n_classes)
        if pool == "mean":
            self.readout = ref_mean_pool
        elif pool == "max":
            self.readout = ref_max_pool
        elif pool == "attn":
            att_net = nn.Sequential(nn.Linear(dim_hidden, dim_hidden // 2), nn.LeakyReLU(), nn.Linear(dim_hidden // 2, 1))
            self.readout = RefGlobalAttention(att_net)

    def forward(self, x):
        x = self._fc1(x)
        x = (x + x.mean(dim=1, keepdim=True)) * 0.5
        e_h = self.W_head(x)
        e_t = self.W_tail(x)
        attn_logit = (e_h * self.scale) @ e_t.transpose(-2, -1)
        topk_weight, topk_index = torch.topk(attn_logit, k=self.topk, dim=-1)
        self.topk_index = topk_index
        topk_index = topk_index.to(torch.long)
        topk_index_expanded = topk_index.expand(e_t.size(0), -1, -1)
        batch_indices = torch.arange(e_t.size(0)).view(-1, 1, 1).to(topk_index.device)
        Nb_h = e_t[batch_indices, topk_index_expanded, :]
        topk_prob = F.softmax(topk_weight, dim=2)
        eh_r = torch.mul(topk_prob.unsqueeze(-1), Nb_h) + torch.matmul((1 - topk_prob).unsqueeze(-1), e_h.unsqueeze(2))
        e_h_expand = e_h.unsqueeze(2).expand(-1, -1, self.topk, -1)
        gate = torch.tanh(e_h_expand + eh_r)
        ka_weight = torch.einsum("ijkl,ijkm->ijk", Nb_h, gate)
        ka_prob = F.softmax(ka_weight, dim=2).unsqueeze(dim=2)
        self.ka_prob = ka_prob[:, :, 0]
        e_Nh = torch.matmul(ka_prob, Nb_h).squeeze(dim=2)
        if self.agg_type == "gcn":
            embedding = self.activation(self.linear(e_h + e_Nh))
        elif self.agg_type == "sage":
            embedding = self.activation(self.linear(torch.cat([e_h, e_Nh], dim=2)))
        elif self.agg_type == "bi-interaction":
            sum_embedding = self.activation(self.linear1(e_h + e_Nh))
            bi_embedding = self.activation(self.linear2(e_h * e_Nh))
            embedding = sum_embedding + bi_embedding
        h = self.message_dropout(embedding)
        h = self.readout(h.squeeze(0), batch=None)
        h = self.norm(h)
        return self.fc(h)


UNUSED = ("gate_U.", "gate_V.", "gate_W.")


def ref_name(ours: str) -> str:
    """Our parameter name -> the official one."""
    if ours.startswith("fc1."):
        return "_fc1." + ours[len("fc1.") :]
    if ours.startswith("att_net."):
        return "readout.gate_nn." + ours[len("att_net.") :]
    return ours


def pair(in_dim=6, k=2, seed=0, ref_topk=None, **options):
    """Our pooling with random weights everywhere (biases, LayerNorm too) and the reference with the same, float64."""
    torch.manual_seed(seed)
    ours = WiKGPooling(WiKGPooling.Config(**options), in_dim, k).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    o = ours.config
    ref = RefWiKG(dim_in=in_dim, dim_hidden=o.dim_hidden, topk=ref_topk or o.topk, n_classes=k,
                  agg_type=o.agg_type, dropout=o.dropout, pool=o.pool).double()
    mapped = {ref_name(n): t for n, t in ours.state_dict().items()}
    theirs = {n: t for n, t in ref.state_dict().items() if not n.startswith(UNUSED)}
    assert set(mapped) == set(theirs), set(mapped) ^ set(theirs)
    assert all(mapped[n].shape == theirs[n].shape for n in theirs)
    ref.load_state_dict(mapped, strict=False)
    return ours, ref


SETTINGS = [
    dict(dim_hidden=16),  # the official defaults (topk 6, bi-interaction, attention readout) at a small width
    dict(dim_hidden=16, pool="mean"),  # the official train.py's readout
    dict(dim_hidden=12, topk=3, agg_type="gcn", pool="max"),
    dict(dim_hidden=8, topk=1, agg_type="sage"),
    dict(dim_hidden=10, topk=4, agg_type="sage", pool="attn", dropout=0.0),
]
#: measured: <= 2e-15 absolute on logits of order 1-10 (see docs/models/wikg.md)
TOL = dict(rtol=1e-10, atol=1e-10)


def _ids(o):
    return ",".join(f"{k}={v}" for k, v in o.items())


@pytest.mark.parametrize("options", SETTINGS, ids=_ids)
@pytest.mark.parametrize("k", [1, 3])
def test_matches_official_forward_unpadded(options, k):
    ours, ref = pair(k=k, **options)
    ours.eval(), ref.eval()
    t = ours.config.topk
    for n in (t, t + 3, 20):
        x = torch.randn(1, n, 6, dtype=torch.float64)
        out = ours(x, torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(out.bag_logits, ref(x), **TOL)
        if ours.config.pool == "attn":
            torch.testing.assert_close(out.attention[0], ref.readout.weights, **TOL)
        else:
            assert out.attention is None
        # the exported graph: the same neighbours (as sets per instance) and their knowledge-aware attention
        got, want = out.extras["neighbours"][0].sort(-1), ref.topk_index[0].sort(-1)
        assert torch.equal(got.values, want.values)
        torch.testing.assert_close(out.extras["neighbour_attention"][0].gather(1, got.indices),
                                   ref.ka_prob[0].gather(1, want.indices), **TOL)


@pytest.mark.parametrize("options", SETTINGS[:3], ids=_ids)
def test_bag_smaller_than_topk_is_the_official_model_with_topk_n(options):
    """The official code raises in torch.topk when a bag has fewer instances than topk; milzoo takes all n."""
    for n in range(1, WiKGPooling.Config(**options).topk):
        ours, ref = pair(k=2, seed=n, ref_topk=n, **options)
        ours.eval(), ref.eval()
        x = torch.randn(1, n, 6, dtype=torch.float64)
        out = ours(x, torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(out.bag_logits, ref(x), **TOL)
        assert out.extras["neighbours"].shape == (1, n, ours.config.topk)
        assert torch.all(out.extras["neighbours"][0, :, n:] == -1)
        assert torch.all(out.extras["neighbour_attention"][0, :, n:] == 0)


def _garbage(x, mask):
    x[~mask] = torch.tensor([float("nan"), float("inf"), -1e6, 1e6, 0.0, 3.0], dtype=x.dtype)


@pytest.mark.parametrize("options", SETTINGS, ids=_ids)
def test_padded_batch_matches_official_on_each_bag_alone(options):
    lengths = [7, 1, 12, 4, 6]  # below, at and above topk 6
    x = torch.randn(len(lengths), 12, 6, dtype=torch.float64)
    mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    _garbage(x, mask)
    ours, _ = pair(k=3, seed=1, **options)
    ours.eval()
    out = ours(x, mask)
    t = ours.config.topk
    if out.attention is not None:
        assert torch.all(out.attention[~mask] == 0)
        torch.testing.assert_close(out.attention.sum(1), torch.ones(len(lengths), dtype=torch.float64), **TOL)
    assert torch.all(out.extras["neighbours"][~mask] == -1)
    assert torch.all(out.extras["neighbour_attention"][~mask] == 0)
    assert torch.all(out.extras["neighbours"] < torch.tensor(lengths)[:, None, None])  # real neighbours only
    for b, n in enumerate(lengths):
        _, ref = pair(k=3, seed=1, ref_topk=min(t, n), **options)
        ref.eval()
        torch.testing.assert_close(out.bag_logits[b : b + 1], ref(x[b : b + 1, :n]), **TOL)
        if out.attention is not None:
            torch.testing.assert_close(out.attention[b, :n], ref.readout.weights, **TOL)


@pytest.mark.parametrize("options", [SETTINGS[0], SETTINGS[2]], ids=_ids)
def test_gradients_match_official(options):
    ours, ref = pair(k=2, seed=2, **options)
    ours.eval(), ref.eval()  # no dropout: the same function
    x = torch.randn(1, 10, 6, dtype=torch.float64)
    w = torch.randn(1, 2, dtype=torch.float64)
    (ours(x, torch.ones(1, 10, dtype=torch.bool)).bag_logits * w).sum().backward()
    (ref(x) * w).sum().backward()
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[ref_name(name)].grad, rtol=1e-9, atol=1e-9)


def test_padded_gradients_are_the_sum_of_each_bag_alone():
    """The masks hold in the backward too: padding adds nothing to any parameter's or real feature's gradient."""
    ours, _ = pair(k=2, seed=3, **SETTINGS[0])
    ours.eval()
    lengths = [7, 2, 9]
    x = torch.randn(3, 9, 6, dtype=torch.float64)
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    x[~mask] = 0.0
    x.requires_grad_(True)
    w = torch.randn(3, 2, dtype=torch.float64)
    (ours(x, mask).bag_logits * w).sum().backward()
    batched = {n: p.grad.clone() for n, p in ours.named_parameters()}
    gx = x.grad.clone()
    ours.zero_grad()
    alone_gx = torch.zeros_like(gx)
    for b, n in enumerate(lengths):
        xb = x.detach()[b : b + 1, :n].clone().requires_grad_(True)
        (ours(xb, torch.ones(1, n, dtype=torch.bool)).bag_logits * w[b]).sum().backward()
        alone_gx[b, :n] = xb.grad[0]
    for name, p in ours.named_parameters():
        torch.testing.assert_close(batched[name], p.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx, alone_gx, rtol=1e-9, atol=1e-9)


def test_float32_close_to_official():
    ours, ref = pair(k=2, seed=4, **SETTINGS[0])
    ours, ref = ours.float().eval(), ref.float().eval()
    with torch.no_grad():  # moderate weights, so that float32 rounding does not flip a near tie in the top-k
        for p in ours.parameters():
            p.mul_(0.5)
        ref.load_state_dict({ref_name(n): t for n, t in ours.state_dict().items()}, strict=False)
    x = torch.randn(1, 300, 6)
    torch.testing.assert_close(ours(x, torch.ones(1, 300, dtype=torch.bool)).bag_logits, ref(x), rtol=1e-4, atol=1e-4)


def test_blockwise_selection_equals_one_block(monkeypatch):
    ours, _ = pair(k=2, seed=5, **SETTINGS[0])
    ours.eval()
    lengths = [40, 3, 25]
    x = torch.randn(3, 40, 6, dtype=torch.float64)
    mask = torch.arange(40)[None] < torch.tensor(lengths)[:, None]
    whole = ours(x, mask)
    monkeypatch.setattr(WiKGPooling, "similarity_block", 7)  # blocks of one row
    parts = ours(x, mask)
    torch.testing.assert_close(parts.bag_logits, whole.bag_logits, rtol=0, atol=0)
    assert torch.equal(parts.extras["neighbours"], whole.extras["neighbours"])


@pytest.mark.parametrize("padded", [False, True])
def test_no_n_by_n_tensor_in_a_training_step(padded, monkeypatch):
    """The n x n scores exist only block by block (here [2, 50, 2000]) and never in the backward."""
    monkeypatch.setattr(WiKGPooling, "similarity_block", 200_000)
    torch.manual_seed(0)
    pool = WiKGPooling(WiKGPooling.Config(dim_hidden=16), 4, 2).train()
    _, shapes = assert_memory_linear(pool, in_dim=4, padded=padded)
    assert (2, 50, 2000) in shapes  # the blocks of scores


# --- milzoo's own behaviour -----------------------------------------------------------------------------------


def small(in_dim=6, k=2, **kw):
    return WiKGPooling(WiKGPooling.Config(**{"dim_hidden": 16, **kw}), in_dim, k)


def test_official_defaults():
    c = WiKGPooling.Config()
    assert (c.dim_hidden, c.topk, c.agg_type, c.pool, c.dropout) == (512, 6, "bi-interaction", "attn", 0.3)


def test_invalid_options():
    with pytest.raises(ValidationError):
        WiKGPooling.Config(agg_type="gin")
    with pytest.raises(ValidationError):
        WiKGPooling.Config(pool="sum")
    with pytest.raises(ValidationError):
        WiKGPooling.Config(dropout=1.0)


def test_parameters_are_the_officials_less_the_unused_gates():
    torch.manual_seed(0)
    pool = WiKGPooling(WiKGPooling.Config(), 384, 2)
    ref = RefWiKG()
    used = {n: p for n, p in ref.named_parameters() if not n.startswith(UNUSED)}
    assert {ref_name(n) for n, _ in pool.named_parameters()} == set(used)
    assert sum(p.numel() for p in pool.parameters()) == sum(p.numel() for p in used.values())


def test_permutation_invariant_and_order_free():
    torch.manual_seed(0)
    pool = small().eval()
    h = torch.randn(1, 9, 6)
    m = torch.ones(1, 9, dtype=torch.bool)
    perm = torch.randperm(9)
    a, b = pool(h, m), pool(h[:, perm], m)
    torch.testing.assert_close(a.bag_logits, b.bag_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.attention[:, perm], b.attention, rtol=1e-5, atol=1e-6)


def test_registered():
    from milzoo.registry import get_component

    assert get_component("pooling", "wikg") is WiKGPooling


def test_training_sanity_toy_problem():
    torch.manual_seed(0)
    assert_learns_toy_problem(lambda in_dim, k: small(in_dim, k, dropout=0.0))


def test_regression_task_trains_two_epochs(tmp_path):
    """Every task: the head has num_classes outputs (one per target here); a 2-epoch regression run works."""
    assert WiKGPooling.tasks is None
    assert_trains_regression({"name": "wikg", "dim_hidden": 16}, tmp_path, head=lambda pooling: pooling.fc)


# --- the contract suite ----------------------------------------------------------------------------------------


@parametrize_with_checks(
    [
        WiKGPooling,
        (WiKGPooling, {"dim_hidden": 16, "pool": "mean"}),
        (WiKGPooling, {"dim_hidden": 12, "topk": 3, "agg_type": "gcn", "pool": "max"}),
        (WiKGPooling, {"dim_hidden": 8, "topk": 1, "agg_type": "sage", "dropout": 0.0}),
        (WiKGPooling, {"dim_hidden": 10, "topk": 9, "agg_type": "sage"}),  # more neighbours than any bag's instances
        "pooling:wikg",
    ]
)
def test_contract(component, check):
    check(component)
