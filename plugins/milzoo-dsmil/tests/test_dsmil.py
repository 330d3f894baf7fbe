"""DSMIL: hand-computed critical-instance attention, dense head, modes, loss, masking, training."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from milzoo.datasets.batch import Bag, MILBatch, collate_bags
from milzoo.errors import ComponentError
from milzoo.components.output import MILOutput, TrainState
from milzoo_dsmil.loss import DSMILLoss
from milzoo_dsmil.pooling import DSMILPooling


def make(k=2, d=2, **opts) -> DSMILPooling:
    return DSMILPooling(DSMILPooling.Config(**opts), d, k).eval()


def hand_set(p: DSMILPooling) -> None:
    """c_i = h_i[0]; Q = H (linear query, identity); V = H; head = w . B + b."""
    with torch.no_grad():
        p.inst_classifier.weight.copy_(torch.tensor([[1.0, 0.0]]))
        p.inst_classifier.bias.zero_()
        p.query.weight.copy_(torch.eye(2))
        p.query.bias.zero_()
        p.bag_classifier.weight.copy_(torch.tensor([[[2.0, -1.0]]]))
        p.bag_classifier.bias.fill_(0.25)


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_registered():
    from milzoo.registry import get_entry

    assert get_entry("pooling", "dsmil").obj is DSMILPooling
    assert get_entry("loss", "dsmil").obj is DSMILLoss
    assert DSMILPooling.default_loss == "dsmil"


def test_critical_instance_and_attention_by_hand():
    p = make(query="linear", query_dim=2)
    hand_set(p)
    # Real instance logits c = [-1, -0.5, -3]: instance 1 is critical.  The padded row has
    # c = 0, larger than every real one, so it would win if padding were not masked.
    H = torch.tensor([[[-1.0, 0.0], [-0.5, 1.0], [-3.0, 2.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])
    out = p(H, mask)
    assert out.extras["critical_index"].tolist() == [[1]]
    # scores_i = <h_i, h_crit> / sqrt(2) with h_crit = (-0.5, 1)
    s = [(0.5 + 0.0) / math.sqrt(2), (0.25 + 1.0) / math.sqrt(2), (1.5 + 2.0) / math.sqrt(2)]
    den = sum(math.exp(v) for v in s)
    a = [math.exp(v) / den for v in s]
    torch.testing.assert_close(out.extras["A"][0, :, 0], torch.tensor(a + [0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.attention[0], torch.tensor(a + [0.0]), atol=1e-6, rtol=0)
    # B = sum_i a_i h_i ; bag logit = 2 B0 - B1 + 0.25 ; max stream = -0.5
    b0 = -1.0 * a[0] - 0.5 * a[1] - 3.0 * a[2]
    b1 = 0.0 * a[0] + 1.0 * a[1] + 2.0 * a[2]
    torch.testing.assert_close(out.extras["B"][0, 0], torch.tensor([b0, b1]), atol=1e-6, rtol=0)
    z_bag = 2 * b0 - b1 + 0.25
    assert out.extras["bag_stream_logits"].item() == pytest.approx(z_bag, abs=1e-6)
    assert out.extras["max_stream_logits"].item() == pytest.approx(-0.5, abs=1e-6)
    # multi-label k=2: probabilities are [1 - sigmoid(z), sigmoid(z)], bag logits [0, z]
    torch.testing.assert_close(out.bag_logits[0], torch.tensor([0.0, z_bag]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.bag_probs[0], torch.tensor([1 - sig(z_bag), sig(z_bag)]), atol=1e-6, rtol=0)
    # instance stream exported as k-class logits [0, c_i], zero at padding
    torch.testing.assert_close(
        out.inst_logits[0], torch.tensor([[0, -1.0], [0, -0.5], [0, -3.0], [0, 0]]), atol=1e-6, rtol=0
    )


def test_score_mode_mean_averages_stream_sigmoids():
    p = make(query="linear", query_dim=2, score_mode="mean")
    hand_set(p)
    H = torch.tensor([[[-1.0, 0.0], [-0.5, 1.0], [-3.0, 2.0]]])
    out = p(H, torch.ones(1, 3, dtype=torch.bool))
    zb = out.extras["bag_stream_logits"].item()
    expected = 0.5 * (sig(zb) + sig(-0.5))
    assert out.bag_probs[0, 1].item() == pytest.approx(expected, abs=1e-6)
    assert out.bag_probs[0].sum().item() == pytest.approx(1.0, abs=1e-6)
    # bag_logits agree with the score: softmax(bag_logits) == probs
    torch.testing.assert_close(torch.softmax(out.bag_logits, -1), out.bag_probs, atol=1e-6, rtol=0)


def test_multiclass_mode_shapes_and_probs():
    torch.manual_seed(0)
    for score_mode in ("bag", "mean"):
        p = make(k=3, d=5, mode="multiclass", score_mode=score_mode)
        h = torch.randn(2, 6, 5)
        out = p(h, torch.ones(2, 6, dtype=torch.bool))
        zb, zm = out.extras["bag_stream_logits"], out.extras["max_stream_logits"]
        assert zb.shape == (2, 3) and out.inst_logits.shape == (2, 6, 3)
        assert out.extras["A"].shape == (2, 6, 3) and out.extras["B"].shape == (2, 3, 5)
        if score_mode == "bag":
            want = torch.softmax(zb, -1)
        else:
            want = 0.5 * (torch.softmax(zb, -1) + torch.softmax(zm, -1))
        torch.testing.assert_close(out.bag_probs, want)
        # attention column = predicted class
        col = out.bag_probs.argmax(-1)
        torch.testing.assert_close(out.attention, out.extras["A"][torch.arange(2), :, col])
        # max stream: per-class max of the instance logits
        torch.testing.assert_close(zm, out.inst_logits.max(dim=1).values)


def test_multilabel_k3_probabilities():
    torch.manual_seed(1)
    p = make(k=3, d=4)
    out = p(torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.bool))
    z = out.extras["bag_stream_logits"][0]
    assert z.shape == (2,)  # k-1 sigmoid outputs
    pr = out.bag_probs[0]
    # p_j / p_0 = exp(z_j): independent sigmoids conditioned on at most one positive
    assert (pr[1] / pr[0]).item() == pytest.approx(math.exp(z[0].item()), rel=1e-5)
    assert (pr[2] / pr[0]).item() == pytest.approx(math.exp(z[1].item()), rel=1e-5)
    assert out.extras["A"].shape == (1, 5, 2)
    col = pr[1:].argmax().item()
    torch.testing.assert_close(out.attention[0], out.extras["A"][0, :, col])


def test_dense_head_mixes_classes():
    """Conv1d(C, C, kernel=d): logit 0 can read the embedding of class 1 (not a per-class linear)."""
    p = make(k=3, d=2, query="linear", query_dim=2)
    assert tuple(p.bag_classifier.weight.shape) == (2, 2, 2)
    with torch.no_grad():
        p.bag_classifier.weight.zero_()
        p.bag_classifier.weight[0, 1, 0] = 1.0  # logit 0 <- B[class 1][0]
        p.bag_classifier.bias.zero_()
    out = p(torch.randn(1, 4, 2), torch.ones(1, 4, dtype=torch.bool))
    assert out.extras["bag_stream_logits"][0, 0].item() == pytest.approx(out.extras["B"][0, 1, 0].item(), abs=1e-6)
    assert out.extras["bag_stream_logits"][0, 1].item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("opts", [{}, {"mode": "multiclass", "score_mode": "mean", "value": "linear"}])
def test_padding_and_permutation_invariance(opts):
    torch.manual_seed(2)
    p = make(k=3, d=6, **opts)
    bags = [Bag(x=torch.randn(n, 6), y=0) for n in (7, 2, 1, 5)]
    batch = collate_bags(bags)
    out = p(batch.x, batch.mask)
    for b, bag in enumerate(bags):
        one = p(bag.x.unsqueeze(0), torch.ones(1, len(bag), dtype=torch.bool))
        torch.testing.assert_close(out.bag_logits[b : b + 1], one.bag_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.attention[b, : len(bag)], one.attention[0], atol=1e-6, rtol=1e-5)
        assert (out.attention[b, len(bag) :] == 0).all()
        assert (out.extras["critical_index"][b] < len(bag)).all()
        perm = torch.randperm(len(bag))
        pm = p(bag.x[perm].unsqueeze(0), torch.ones(1, len(bag), dtype=torch.bool))
        torch.testing.assert_close(pm.bag_logits, one.bag_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pm.attention[0], one.attention[0, perm], atol=1e-6, rtol=1e-5)


def test_instance_logits_equal_one_instance_bags():
    torch.manual_seed(3)
    for opts in ({}, {"mode": "multiclass"}, {"score_mode": "mean", "value": "linear_relu"}):
        p = make(k=3, d=4, **opts)
        h = torch.randn(5, 4)
        per_bag = torch.cat([p(h[i].view(1, 1, 4), torch.ones(1, 1, dtype=torch.bool)).bag_logits for i in range(5)])
        torch.testing.assert_close(p.instance_logits(h), per_bag, atol=1e-5, rtol=1e-5)
        assert p.scores_instances


def test_patch_dropout_training_only():
    torch.manual_seed(4)
    p = make(k=2, d=3, patch_dropout=0.5)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    h = torch.randn(2, 6, 3) * mask.unsqueeze(-1)
    assert (p(h, mask).attention > 0).sum().item() == 9  # eval: nothing dropped
    p.train()
    att = p(h, mask).attention
    assert (att > 0).sum(1).tolist() == [3, 1]  # floor(6 * 0.5), floor(3 * 0.5)
    assert (att[1, 3:] == 0).all()


def _out(zb, zm):
    zb, zm = torch.tensor(zb), torch.tensor(zm)
    return MILOutput(
        bag_logits=zb, mask=torch.ones(zb.shape[0], 1, dtype=torch.bool),
        extras={"bag_stream_logits": zb, "max_stream_logits": zm},
    )


def _batch(y):
    y = torch.tensor(y)
    return MILBatch(x=torch.zeros(len(y), 1, 1), mask=torch.ones(len(y), 1, dtype=torch.bool), y=y,
                    index=torch.arange(len(y)), bag_ids=[str(i) for i in range(len(y))])


def test_loss_half_half_multilabel_by_hand():
    loss = DSMILLoss(DSMILLoss.Config(), 2)
    r = loss(_out([[2.0], [0.5]], [[-1.0], [3.0]]), _batch([1, 0]), TrainState())
    # BCE(z, 1) = log(1 + e^-z); BCE(z, 0) = log(1 + e^z); mean over the two bags
    bag = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(0.5))) / 2
    mx = (math.log1p(math.exp(1.0)) + math.log1p(math.exp(3.0))) / 2
    assert r.total.item() == pytest.approx(0.5 * bag + 0.5 * mx, abs=1e-6)
    assert r.parts["dsmil_bag"].item() == pytest.approx(0.5 * bag, abs=1e-6)
    assert r.parts["dsmil_max"].item() == pytest.approx(0.5 * mx, abs=1e-6)
    # k = 3: label 2 -> target [0, 1]; label 0 -> [0, 0]
    loss3 = DSMILLoss(DSMILLoss.Config(), 3)
    r3 = loss3(_out([[1.0, -2.0]], [[0.0, 0.0]]), _batch([2]), TrainState())
    bag3 = (math.log1p(math.exp(1.0)) + math.log1p(math.exp(2.0))) / 2
    mx3 = math.log(2.0)
    assert r3.total.item() == pytest.approx(0.5 * bag3 + 0.5 * mx3, abs=1e-6)


def test_loss_multiclass_and_pos_weight():
    loss = DSMILLoss(DSMILLoss.Config(), 3)
    zb, zm = [[1.0, 2.0, 0.0]], [[0.0, 0.0, 3.0]]
    r = loss(_out(zb, zm), _batch([1]), TrainState())
    ce_b = -math.log(math.exp(2) / (math.exp(1) + math.exp(2) + 1))
    ce_m = -math.log(1 / (2 + math.exp(3)))
    assert r.total.item() == pytest.approx(0.5 * ce_b + 0.5 * ce_m, abs=1e-6)
    lw = DSMILLoss(DSMILLoss.Config(pos_weight=3.0, bag_weight=1.0, max_weight=0.0), 2)
    rw = lw(_out([[2.0]], [[0.0]]), _batch([1]), TrainState())
    assert rw.total.item() == pytest.approx(3.0 * math.log1p(math.exp(-2.0)), abs=1e-6)


def test_bind_checks_and_auto_pos_weight():
    loss = DSMILLoss(DSMILLoss.Config(pos_weight="auto"), 3)
    ds = SimpleNamespace(labels=np.array([0, 0, 0, 1, 2, 2]))
    loss.bind(SimpleNamespace(pooling=make(k=3, d=2)), ds)
    torch.testing.assert_close(loss.pos_weight, torch.tensor([5.0, 2.0]))
    with pytest.raises(ComponentError, match="dsmil"):
        loss.bind(SimpleNamespace(pooling=nn.Identity()), ds)
    # pos_weight has no effect on a softmax: a recipe that sets it with multiclass mode is told so
    mc = DSMILPooling(DSMILPooling.Config(mode="multiclass"), 2, 3)
    with pytest.raises(ComponentError, match="pos_weight.*multiclass"):
        loss.bind(SimpleNamespace(pooling=mc), ds)
    DSMILLoss(DSMILLoss.Config(), 3).bind(SimpleNamespace(pooling=mc), ds)  # without pos_weight: fine
    with pytest.raises(ComponentError):
        loss(MILOutput(bag_logits=torch.zeros(1, 3), mask=torch.ones(1, 1, dtype=torch.bool)),
             _batch([0]), TrainState())


def test_training_learns_toy_problem():
    torch.manual_seed(5)
    bags = []
    for i in range(48):
        n = 4 + i % 5
        x = torch.randn(n, 8) * 0.5
        y = i % 2
        if y:
            x[i % n, 0] += 3.0  # one witness instance
        bags.append(Bag(x=x, y=y))
    p = DSMILPooling(DSMILPooling.Config(), 8, 2)
    loss = DSMILLoss(DSMILLoss.Config(), 2)
    opt = torch.optim.Adam(p.parameters(), lr=5e-2)

    def evaluate():
        p.eval()
        with torch.no_grad():
            b = collate_bags(bags)
            o = p(b.x, b.mask)
            return loss(o, b, TrainState()).total.item(), (o.bag_probs.argmax(-1) == b.y).float().mean().item()

    l0, _ = evaluate()
    for step in range(40):
        p.train()
        idx = torch.randperm(48)[:12]
        b = collate_bags([bags[int(i)] for i in idx])
        r = loss(p(b.x, b.mask), b, TrainState(step=step))
        opt.zero_grad()
        r.total.backward()
        opt.step()
    l1, acc = evaluate()
    assert l1 < 0.6 * l0
    assert acc >= 0.9
