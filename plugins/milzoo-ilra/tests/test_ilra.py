"""ILRA-MIL: faithfulness to the official forward, padding, attention export, tasks, contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from milzoo.testing import (
    assert_learns_toy_problem, assert_memory_linear, assert_trains_regression, parametrize_with_checks,
)
from milzoo_ilra.pooling import ILRAPooling


# --- the reference: the official forward, transcribed in plain torch ---------------------------------------------
#
# jinxixiang/low_rank_wsi @ bb45b9b, models/ilra.py (``MultiHeadAttention``, ``GAB``, ``NLP``, ``ILRA``): the code
# of Xiang et al., ICLR 2023.  Written out here so that the test needs no copy of the repository; the attention
# is torch's own ``nn.MultiheadAttention`` (sequence-first, as in the official code), so milzoo's explicit
# attention is checked against torch's.  The only addition is that the reference keeps the head-averaged
# attention weights that ``nn.MultiheadAttention`` returns (the official code discards them) for the export test.
# It works on one bag at a time, as the official code does (``batch_size: 1``, no mask).


class RefMultiHeadAttention(nn.Module):
    def __init__(self, dim_Q, dim_K, dim_V, num_heads, ln=False, gated=False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim_V, num_heads)
        self.fc_q = nn.Linear(dim_Q, dim_V)
        self.fc_k = nn.Linear(dim_K, dim_V)
        self.fc_v = nn.Linear(dim_K, dim_V)
        if ln:
            self.ln0 = nn.LayerNorm(dim_V)
            self.ln1 = nn.LayerNorm(dim_V)
        self.fc_o = nn.Linear(dim_V, dim_V)
        self.gate = nn.Sequential(nn.Linear(dim_Q, dim_V), nn.SiLU()) if gated else None

    def forward(self, Q, K):
        Q0 = Q
        Q = self.fc_q(Q).transpose(0, 1)
        K, V = self.fc_k(K).transpose(0, 1), self.fc_v(K).transpose(0, 1)
        A, self.weights = self.multihead_attn(Q, K, V)  # weights: [B, Lq, Lk], averaged over the heads
        O = (Q + A).transpose(0, 1)
        O = O if getattr(self, "ln0", None) is None else self.ln0(O)
        O = O + F.relu(self.fc_o(O))
        O = O if getattr(self, "ln1", None) is None else self.ln1(O)
        if self.gate is not None:
            O = O.mul(self.gate(Q0))
        return O


class RefGAB(nn.Module):
    def __init__(self, dim_in, dim_out, num_heads, num_inds, ln=False):
        super().__init__()
        self.latent = nn.Parameter(torch.empty(1, num_inds, dim_out))
        nn.init.xavier_uniform_(self.latent)
        self.project_forward = RefMultiHeadAttention(dim_out, dim_in, dim_out, num_heads, ln=ln, gated=True)
        self.project_backward = RefMultiHeadAttention(dim_in, dim_out, dim_out, num_heads, ln=ln, gated=True)

    def forward(self, X):
        latent_mat = self.latent.repeat(X.size(0), 1, 1)
        H = self.project_forward(latent_mat, X)
        return self.project_backward(X, H)


class RefNLP(nn.Module):
    def __init__(self, dim, num_heads, ln=False):
        super().__init__()
        self.S = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.S)
        self.mha = RefMultiHeadAttention(dim, dim, dim, num_heads, ln=ln)

    def forward(self, X):
        return self.mha(self.S.repeat(X.size(0), 1, 1), X)


class RefILRA(nn.Module):
    def __init__(self, num_layers=2, feat_dim=768, n_classes=2, hidden_feat=256, num_heads=8, topk=2, ln=False):
        super().__init__()
        self.gab_blocks = nn.ModuleList(
            RefGAB(feat_dim if i == 0 else hidden_feat, hidden_feat, num_heads, topk, ln) for i in range(num_layers)
        )
        self.pooling = RefNLP(dim=hidden_feat, num_heads=num_heads, ln=ln)
        self.classifier = nn.Linear(hidden_feat, n_classes)
        for m in self.modules():  # initialize_weights
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)

    def forward(self, x):
        for block in self.gab_blocks:
            x = block(x)
        feat = self.pooling(x)
        logits = self.classifier(feat).squeeze(1)
        return logits, F.softmax(logits, dim=1), torch.topk(logits, 1, dim=1)[1]


def ref_name(ours: str) -> str:
    """Our parameter name -> the official one."""
    name = ours.replace(".attn.", ".multihead_attn.")
    if name == "query":
        return "pooling.S"
    if name.startswith("nlp."):
        return "pooling.mha." + name[len("nlp.") :]
    return name


def pair(in_dim=6, k=2, seed=0, **options):
    """Our pooling with random weights everywhere (biases, LayerNorms too) and the reference with the same, float64."""
    torch.manual_seed(seed)
    ours = ILRAPooling(ILRAPooling.Config(**options), in_dim, k).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    o = ours.config
    ref = RefILRA(num_layers=o.num_layers, feat_dim=in_dim, n_classes=k, hidden_feat=o.hidden_feat,
                  num_heads=o.num_heads, topk=o.topk, ln=o.ln).double()
    mapped = {ref_name(n): t for n, t in ours.state_dict().items()}
    theirs = ref.state_dict()
    assert set(mapped) == set(theirs), set(mapped) ^ set(theirs)
    assert all(mapped[n].shape == theirs[n].shape for n in theirs)
    ref.load_state_dict(mapped)
    return ours, ref


def ref_logits(ref: RefILRA, x: torch.Tensor) -> torch.Tensor:
    return ref(x)[0]


def ref_attention(ref: RefILRA) -> torch.Tensor:
    """The documented export from the reference's last call: the pooling query's head-averaged weights."""
    return ref.pooling.mha.weights[0, 0]


SETTINGS = [
    dict(hidden_feat=16, num_heads=2),  # the official layout (2 blocks, rank 2, no LayerNorm) at a small width
    dict(hidden_feat=16, num_heads=4, topk=1, ln=True),  # the official CAMELYON16 config (rank 1, LayerNorms)
    dict(num_layers=3, hidden_feat=12, num_heads=3, topk=5, ln=True),  # more latent vectors than some bags' instances
    dict(num_layers=1, hidden_feat=8, num_heads=1, topk=3),  # one head
]
#: the gates multiply the activations block after block, so logits of random weights reach 1e3 and more:
#: the comparison is also relative (measured: <= 1.1e-14 absolute, <= 3.3e-15 relative, attention <= 4.5e-16)
TOL = dict(rtol=1e-12, atol=1e-12)


def _ids(o):
    return ",".join(f"{k}={v}" for k, v in o.items())


@pytest.mark.parametrize("options", SETTINGS, ids=_ids)
@pytest.mark.parametrize("k", [1, 3])
def test_matches_official_forward_unpadded(options, k):
    ours, ref = pair(k=k, **options)
    ours.eval(), ref.eval()
    for n in (1, 2, 9):
        x = torch.randn(1, n, 6, dtype=torch.float64)
        out = ours(x, torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(out.bag_logits, ref_logits(ref, x), **TOL)
        torch.testing.assert_close(out.attention[0], ref_attention(ref), **TOL)
        latent = ref.gab_blocks[-1].project_forward.weights[0]  # [topk, n]
        torch.testing.assert_close(out.extras["latent_attention"][0], latent, **TOL)


@pytest.mark.parametrize("options", SETTINGS, ids=_ids)
def test_padded_batch_matches_official_on_each_bag_alone(options):
    ours, ref = pair(k=3, seed=1, **options)
    ours.eval(), ref.eval()
    lengths = [7, 1, 12, 4]
    x = torch.randn(4, 12, 6, dtype=torch.float64)
    mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    x[~mask] = torch.tensor([float("nan"), float("inf"), -1e6, 1e6, 0.0, 3.0], dtype=torch.float64)  # garbage
    out = ours(x, mask)
    assert torch.all(out.attention[~mask] == 0)
    assert torch.all(out.extras["latent_attention"].transpose(1, 2)[~mask] == 0)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(4, dtype=torch.float64), **TOL)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out.bag_logits[b : b + 1], ref_logits(ref, x[b : b + 1, :n]), **TOL)
        torch.testing.assert_close(out.attention[b, :n], ref_attention(ref), **TOL)


def test_gradients_match_official():
    ours, ref = pair(k=2, seed=2, **SETTINGS[1])
    x = torch.randn(1, 10, 6, dtype=torch.float64)
    w = torch.randn(1, 2, dtype=torch.float64)
    (ours(x, torch.ones(1, 10, dtype=torch.bool)).bag_logits * w).sum().backward()
    (ref_logits(ref, x) * w).sum().backward()
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[ref_name(name)].grad, rtol=1e-9, atol=1e-9)


def test_float32_close_to_official():
    ours, ref = pair(k=2, seed=4, **SETTINGS[0])
    ours, ref = ours.float().eval(), ref.float().eval()
    x = torch.randn(1, 300, 6)
    torch.testing.assert_close(ours(x, torch.ones(1, 300, dtype=torch.bool)).bag_logits, ref_logits(ref, x),
                               rtol=1e-5, atol=1e-5)


def test_initialisation_follows_official():
    """torch's MultiheadAttention init (zero in/out biases, Xavier-uniform packed input projection), then the
    official ``initialize_weights`` (Xavier-normal for every Linear weight); latent matrices Xavier-uniform."""
    torch.manual_seed(0)
    pool = ILRAPooling(ILRAPooling.Config(), 64, 2)
    for m in pool.modules():
        if type(m).__name__ == "MultiHeadAttention":
            assert torch.all(m.in_proj_bias == 0) and torch.all(m.out_proj.bias == 0)
            bound = (6 / (m.in_proj_weight.shape[0] + m.in_proj_weight.shape[1])) ** 0.5
            assert m.in_proj_weight.abs().max() <= bound
    w = pool.gab_blocks[1].project_forward.fc_o.weight  # 256 x 256: Xavier-normal std = sqrt(2 / 512)
    assert abs(w.std().item() - (2 / 512) ** 0.5) < 0.003
    latent = pool.gab_blocks[0].latent  # [1, topk, d]: fan_in = topk * d, fan_out = d
    assert latent.abs().max() <= (6 / (2 * 256 + 256)) ** 0.5
    # the same parameter set and shapes as the official model
    ref = RefILRA(feat_dim=64, n_classes=2)
    assert sum(p.numel() for p in pool.parameters()) == sum(p.numel() for p in ref.parameters())


# --- milzoo's own behaviour -----------------------------------------------------------------------------------


def small(in_dim=6, k=2, **kw):
    return ILRAPooling(ILRAPooling.Config(**{"hidden_feat": 16, "num_heads": 2, **kw}), in_dim, k)


def test_official_defaults():
    c = ILRAPooling.Config()
    assert (c.num_layers, c.hidden_feat, c.num_heads, c.topk, c.ln) == (2, 256, 8, 2, False)


def test_heads_must_divide_width():
    with pytest.raises(ValidationError, match="multiple of num_heads"):
        ILRAPooling.Config(hidden_feat=10, num_heads=4)


def test_permutation_invariant_and_order_free():
    torch.manual_seed(0)
    pool = small(ln=True).eval()
    h = torch.randn(1, 9, 6)
    m = torch.ones(1, 9, dtype=torch.bool)
    perm = torch.randperm(9)
    a, b = pool(h, m), pool(h[:, perm], m)
    torch.testing.assert_close(a.bag_logits, b.bag_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.attention[:, perm], b.attention, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padded", [False, True])
def test_no_n_by_n_tensor_in_a_training_step(padded):
    """Every attention goes through the topk latents or the one pooling query: memory linear in the bag size."""
    torch.manual_seed(0)
    assert_memory_linear(small(in_dim=4).train(), in_dim=4, padded=padded)


def test_registered():
    from milzoo.registry import get_component

    assert get_component("pooling", "ilra") is ILRAPooling


def test_training_sanity_toy_problem():
    torch.manual_seed(0)
    assert_learns_toy_problem(small)


def test_regression_task_trains_two_epochs(tmp_path):
    """Every task: the head has num_classes outputs (one per target here); a 2-epoch regression run works."""
    assert ILRAPooling.tasks is None
    assert_trains_regression({"name": "ilra", "hidden_feat": 16, "num_heads": 2}, tmp_path,
                             head=lambda pooling: pooling.classifier)


# --- the contract suite ----------------------------------------------------------------------------------------


@parametrize_with_checks(
    [
        ILRAPooling,
        (ILRAPooling, {"hidden_feat": 16, "num_heads": 4, "topk": 1, "ln": True}),
        (ILRAPooling, {"num_layers": 3, "hidden_feat": 12, "num_heads": 3, "topk": 5, "ln": True}),
        (ILRAPooling, {"num_layers": 1, "hidden_feat": 8, "num_heads": 1, "topk": 3}),
        "pooling:ilra",
    ]
)
def test_contract(component, check):
    check(component)
