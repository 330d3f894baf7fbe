"""TransMIL: squaring, PPEG, Nystrom attention, memory, padding, attention export, training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from milzoo.testing import assert_learns_toy_problem, assert_memory_linear
from milzoo_transmil.nystrom import NystromAttention, iterative_pinv
from milzoo_transmil.pooling import PPEG, TransMILPooling, square_index


SMALL = dict(hidden_dim=16, heads=2, dim_head=8, num_landmarks=4, residual_kernel=5, attn_dropout=0.0)


def small(in_dim=6, k=2, **kw):
    return TransMILPooling(TransMILPooling.Config(**{**SMALL, **kw}), in_dim, k)


# --- squaring -------------------------------------------------------------------


def test_square_index_known_values():
    assert square_index(5).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert square_index(1).tolist() == [0]
    assert square_index(16).tolist() == list(range(16))
    assert square_index(2).tolist() == [0, 1, 0, 1]
    assert square_index(10).tolist() == list(range(10)) + [0, 1, 2, 3, 4, 5]
    assert len(square_index(1_000_001)) == 1001**2  # integer sqrt, no float rounding


def test_squared_sequence_fed_to_layer1():
    torch.manual_seed(0)
    pool = small().eval()
    x = torch.randn(1, 5, 6)
    seen = {}
    pool.layer1.register_forward_hook(lambda m, inp, out: seen.update(t=inp[0]))
    pool.forward_bags(x)
    t = seen["t"]
    assert t.shape == (1, 10, 16)  # class token + 9
    assert torch.equal(t[0, 0], pool.cls_token[0, 0])
    fc = pool.fc(x)[0]
    assert torch.equal(t[0, 1:], fc[[0, 1, 2, 3, 4, 0, 1, 2, 3]])


# --- PPEG -----------------------------------------------------------------------


def test_ppeg_known_values_row_major():
    ppeg = PPEG(2, [7, 5, 3])
    with torch.no_grad():
        for conv in ppeg.convs:
            conv.weight.zero_()
            conv.bias.zero_()
        ppeg.convs[2].weight.fill_(1.0)  # 3x3 all-ones depthwise kernel
        ppeg.convs[1].bias[1] = 0.5
    x = torch.zeros(1, 10, 2)
    x[0, 0] = torch.tensor([7.0, -7.0])  # class token
    x[0, 2, 0] = 1.0  # token 1 -> grid (row 0, col 1)
    y = ppeg(x)
    assert y.shape == x.shape
    assert torch.equal(y[0, 0], x[0, 0])  # class token untouched
    # identity at (0,1) plus the 3x3 box sum, which reaches rows 0-1, all columns
    assert y[0, 1:, 0].tolist() == [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert y[0, 1:, 1].tolist() == [0.5] * 9


def test_ppeg_shapes_and_errors():
    ppeg = PPEG(4, [7, 5, 3])
    for s in (1, 2, 5):
        assert ppeg(torch.randn(3, 1 + s * s, 4)).shape == (3, 1 + s * s, 4)
    try:
        ppeg(torch.randn(1, 6, 4))
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("non-square token count accepted")


# --- Nystrom attention ------------------------------------------------------------


def test_iterative_pinv_matches_linalg_pinv():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(1, 2, 6, 6, dtype=torch.float64), dim=-1)
    ref = torch.linalg.pinv(a)
    assert torch.allclose(iterative_pinv(a, 30), ref, atol=1e-8)
    # the scheme converges (fast once close): 6 steps, the paper's setting, is only approximate
    err = [(iterative_pinv(a, it) - ref).abs().max() for it in (6, 10, 20)]
    assert err[0] > err[1] > err[2]


def test_nystrom_equals_full_softmax_when_landmarks_equal_n():
    torch.manual_seed(0)
    n, dim = 6, 8
    att = NystromAttention(dim, heads=2, dim_head=4, num_landmarks=n, pinv_iterations=30, residual_kernel=0, dropout=0)
    att = att.double()
    x = torch.randn(1, n, dim, dtype=torch.float64)
    out, _ = att(x)
    q, k, v = att.to_qkv(x).view(1, n, 3, 2, 4).permute(2, 0, 3, 1, 4)
    full = torch.softmax(q @ k.transpose(-1, -2) * 4**-0.5, dim=-1) @ v
    ref = att.to_out(full.transpose(1, 2).reshape(1, n, 8))
    assert torch.allclose(out, ref, atol=1e-8)


def test_class_token_row_equals_row_of_full_nystrom_matrix():
    torch.manual_seed(1)
    att = NystromAttention(8, heads=2, dim_head=4, num_landmarks=4, residual_kernel=3, dropout=0).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)  # padded at the front to 12
    out, row = att(x, query_index=0)
    f = att.factors(x)
    assert f["pad"] == 1
    full = f["a1"] @ f["a2_inv"] @ f["a3"]  # [B, H, 12, 12]; fine for a tiny test
    assert torch.allclose(row, full[:, :, 1, 1:], atol=1e-12)
    # and the forward output is that matrix times v, plus the conv residual
    o = full @ f["v"] + att.res_conv(f["v"])
    ref = att.to_out(o.transpose(1, 2).reshape(2, 12, 8))[:, 1:]
    assert torch.allclose(out, ref, atol=1e-10)
    # float32 at a realistic size: right-to-left (milzoo) vs the reference's left-to-right order
    att32 = NystromAttention(32, heads=4, dim_head=8, num_landmarks=16, residual_kernel=0, dropout=0)
    x32 = torch.randn(1, 500, 32)
    f32 = att32.factors(x32)
    left_to_right = (f32["a1"] @ f32["a2_inv"]) @ (f32["a3"] @ f32["v"])
    ref32 = att32.to_out(left_to_right.transpose(1, 2).reshape(1, -1, 32))[:, f32["pad"]:]
    torch.testing.assert_close(att32(x32)[0], ref32, rtol=1e-4, atol=1e-5)
    # rows of the approximate attention sum to ~1 (softmax factors, pinv of a stochastic matrix)
    assert torch.allclose(full.sum(-1), torch.ones(2, 2, 12, dtype=torch.float64), atol=1e-2)


def test_project_then_pad_equals_reference_pad_then_project():
    """milzoo skips the projections of the zero tokens; the reference pads ``x`` first.  Same numbers."""
    torch.manual_seed(2)
    att = NystromAttention(8, heads=2, dim_head=4, num_landmarks=4, residual_kernel=3, dropout=0).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)  # 3 zero tokens in front (L = 12)
    out, row = att(x, query_index=0)
    # the reference, written out: pad x, project all 12 tokens, strip after the output projection
    xp = F.pad(x, (0, 0, 3, 0))
    q, k, v = att.to_qkv(xp).view(2, 12, 3, 2, 4).permute(2, 0, 3, 1, 4)
    q = q * 4**-0.5
    q_land, k_land = q.reshape(2, 2, 4, 3, 4).mean(3), k.reshape(2, 2, 4, 3, 4).mean(3)
    a1 = torch.softmax(q @ k_land.transpose(-1, -2), -1)
    a2_inv = iterative_pinv(torch.softmax(q_land @ k_land.transpose(-1, -2), -1), 6)
    a3 = torch.softmax(q_land @ k.transpose(-1, -2), -1)
    o = (a1 @ a2_inv) @ (a3 @ v) + att.res_conv(v)
    ref = att.to_out(o.transpose(1, 2).reshape(2, 12, 8))[:, 3:]
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(row, ((a1 @ a2_inv) @ a3)[:, :, 3, 3:], atol=1e-12)
    # the gradients agree too (the skipped rows carried none)
    w = torch.randn_like(out)
    g_ours = torch.autograd.grad((out * w).sum(), att.to_qkv.weight)[0]
    g_ref = torch.autograd.grad((ref * w).sum(), att.to_qkv.weight)[0]
    assert torch.allclose(g_ours, g_ref, atol=1e-12)


def test_memory_is_linear_no_n_by_n_tensor():
    torch.manual_seed(0)
    n = 2500
    pool = small(in_dim=4, num_landmarks=16).train()
    _, shapes = assert_memory_linear(pool, in_dim=4, n=n, batch=1)
    assert len(shapes) > 50
    biggest = max(torch.Size(s).numel() for s in shapes)
    assert biggest < n * n // 20, biggest


# --- pooling ---------------------------------------------------------------------


def test_padding_never_changes_results():
    torch.manual_seed(0)
    pool = small(k=3).eval()
    lengths = [7, 1, 12, 7]
    h = torch.randn(4, 12, 6)  # padded positions hold garbage on purpose
    mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    out = pool(h, mask)
    assert out.bag_logits.shape == (4, 3) and out.attention.shape == (4, 12)
    assert torch.all(out.attention[~mask] == 0)
    assert torch.allclose(out.attention.sum(1), torch.ones(4))
    for b, n in enumerate(lengths):
        one = pool(h[b : b + 1, :n], mask[b : b + 1, :n])
        assert torch.allclose(one.bag_logits, out.bag_logits[b : b + 1], atol=1e-5)
        assert torch.allclose(one.attention, out.attention[b : b + 1, :n], atol=1e-5)
        assert torch.allclose(one.extras["attention_layer1"], out.extras["attention_layer1"][b : b + 1, :n], atol=1e-5)


def test_attention_export_drop_add_and_clipping():
    pool = small(duplicates="drop")
    # one bag of n=5 (N=9), two heads; column 0 is the class token
    row = torch.zeros(1, 2, 10)
    row[0, 0] = torch.tensor([0.1, 0.1, 0.2, 0.1, -0.05, 0.1, 0.1, 0.1, 0.05, 0.1])
    row[0, 1] = torch.tensor([0.3, 0.1, 0.0, 0.1, -0.05, 0.1, 0.1, 0.1, 0.05, 0.1])
    mean = row.mean(1)[0, 1:]  # [0.1, 0.1, 0.1, -0.05, 0.1, 0.1, 0.1, 0.05, 0.1]
    got = pool._instance_attention(row, 5)
    keep = torch.tensor([0.1, 0.1, 0.1, 0.0, 0.1])
    assert torch.allclose(got, (keep / keep.sum())[None])
    pool_add = small(duplicates="add")
    got = pool_add._instance_attention(row, 5)
    summed = mean[:5].clone()
    summed[:4] += mean[5:]  # duplicates copy instances 0..3
    summed = summed.clamp_min(0)
    assert torch.allclose(got, (summed / summed.sum())[None])
    # all non-positive -> uniform
    assert torch.allclose(pool._instance_attention(-torch.ones(1, 2, 10), 5), torch.full((1, 5), 0.2))


def test_attention_layer_choice_and_order_dependence():
    torch.manual_seed(0)
    p2 = small().eval()
    p1 = small(attention_layer=1).eval()
    p1.load_state_dict(p2.state_dict())
    h = torch.randn(1, 9, 6)
    mask = torch.ones(1, 9, dtype=torch.bool)
    o1, o2 = p1(h, mask), p2(h, mask)
    assert torch.equal(o2.attention, o2.extras["attention_layer2"])
    assert torch.equal(o1.attention, o2.extras["attention_layer1"])
    assert not TransMILPooling.permutation_invariant
    perm = torch.tensor([8, 3, 1, 0, 5, 7, 2, 6, 4])
    assert not torch.allclose(p2(h[:, perm], mask).bag_logits, o2.bag_logits, atol=1e-5)


def test_registered_through_entry_point():
    from milzoo.registry import get_component

    assert get_component("pooling", "transmil") is TransMILPooling


def test_training_sanity_toy_problem():
    torch.manual_seed(0)
    assert_learns_toy_problem(lambda in_dim, k: small(in_dim, k))
