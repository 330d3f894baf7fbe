"""RGMIL: standardised regressor-guided pooling, ordinal branches, loss, frozen regressor, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from milzoo.datasets.batch import Bag, collate_bags
from milzoo.builtin.encoders import MLPEncoder
from milzoo.builtin.poolings import MeanPooling
from milzoo.errors import ComponentError
from milzoo.model.mil import MILModel
from milzoo.components.output import TrainState
from milzoo_rgmil.loss import RGMILBranchLoss
from milzoo_rgmil.pooling import RGMILPooling, cascade_log_probs, masked_standardize, ordinal_rule


def pool(in_dim=2, k=2, **kw):
    return RGMILPooling(RGMILPooling.Config(**kw), in_dim, k)


def logit(p: float) -> list[float]:
    """Two logits whose softmax gives (1 - p, p)."""
    return [0.0, math.log(p / (1 - p))]


# --- the pooling operator, by hand ------------------------------------------------------


def test_rgp_known_values_on_hand_made_bag():
    p = pool()
    with torch.no_grad():
        p.regressor.copy_(torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))  # z_i = (0, h_i0): delta_i = h_i0
    h = torch.zeros(1, 6, 2)
    h[0, :4] = torch.tensor([[1.0, 5.0], [2.0, 0.0], [3.0, -1.0], [6.0, 2.0]])
    h[0, 4:] = 9.0  # padding garbage must not matter
    mask = torch.tensor([[True] * 4 + [False] * 2])
    out = p(h, mask)
    # mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5
    sd = math.sqrt(3.5 + 1e-5)
    std = [-2 / sd, -1 / sd, 0.0, 3 / sd]
    e = [math.exp(s) for s in std]
    alpha = [v / sum(e) for v in e]
    assert torch.allclose(out.extras["branch_scores"][0, :4, 0], torch.tensor(std), atol=1e-6)
    assert torch.allclose(out.attention[0, :4], torch.tensor(alpha), atol=1e-6)
    assert torch.all(out.attention[0, 4:] == 0)
    f0 = sum(a * x for a, x in zip(alpha, [1.0, 2.0, 3.0, 6.0]))
    assert torch.allclose(out.bag_logits, torch.tensor([[0.0, f0]]), atol=1e-5)
    assert torch.allclose(out.inst_logits[0, :4], torch.stack([torch.zeros(4), h[0, :4, 0]], 1))
    assert torch.all(out.inst_logits[0, 4:] == 0)
    # the same as the official fresh LayerNorm(n) on the real instances
    ln = F.layer_norm(torch.tensor([1.0, 2.0, 3.0, 6.0]), (4,), eps=1e-5)
    assert torch.allclose(out.extras["branch_scores"][0, :4, 0], ln, atol=1e-6)


def test_masked_standardize_single_instance_gives_uniform_weight():
    x = torch.tensor([[4.0, 7.0, 7.0]])
    mask = torch.tensor([[True, False, False]])
    assert torch.equal(masked_standardize(x, mask, 1e-5), torch.zeros(1, 3))
    out = pool(in_dim=3, k=3)(torch.randn(1, 1, 3), torch.ones(1, 1, dtype=torch.bool))
    assert torch.equal(out.attention, torch.ones(1, 1))
    assert torch.equal(out.extras["branch_attention"], torch.ones(1, 1, 2))


def test_padding_never_changes_results():
    torch.manual_seed(0)
    p = pool(in_dim=5, k=4)
    lengths = [6, 1, 3]
    h = torch.randn(3, 6, 5)
    mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    out = p(h, mask)
    assert out.bag_logits.shape == (3, 4) and out.inst_logits.shape == (3, 6, 4)
    assert torch.allclose(out.attention.sum(1), torch.ones(3))
    for b, n in enumerate(lengths):
        one = p(h[b : b + 1, :n], mask[b : b + 1, :n])
        assert torch.allclose(one.bag_logits, out.bag_logits[b : b + 1], atol=1e-5)
        assert torch.allclose(one.attention, out.attention[b : b + 1, :n], atol=1e-6)
        assert torch.allclose(one.inst_logits, out.inst_logits[b : b + 1, :n], atol=1e-5)
        assert torch.allclose(one.extras["branch_logits"], out.extras["branch_logits"][b : b + 1], atol=1e-5)


# --- ordinal multi-class ------------------------------------------------------------------


def test_cascade_probabilities_and_rule_known_values():
    bl = torch.tensor([[logit(0.6), logit(0.4)], [logit(0.2), logit(0.9)]])  # two bags, K = 2
    probs = cascade_log_probs(bl).exp()
    assert torch.allclose(probs[0], torch.tensor([0.4 * 0.6, 0.6 * 0.6, 0.4]), atol=1e-6)
    assert torch.allclose(probs[1], torch.tensor([0.8 * 0.1, 0.2 * 0.1, 0.9]), atol=1e-6)
    assert ordinal_rule(bl).tolist() == [1, 2]
    bl3 = torch.tensor([[logit(0.2), logit(0.9), logit(0.3)], [logit(0.1), logit(0.2), logit(0.3)]])
    probs3 = cascade_log_probs(bl3).exp()
    assert torch.allclose(probs3[0], torch.tensor([0.8 * 0.1 * 0.7, 0.2 * 0.1 * 0.7, 0.9 * 0.7, 0.3]), atol=1e-6)
    assert torch.allclose(probs3.sum(1), torch.ones(2))
    assert ordinal_rule(bl3).tolist() == [2, 0]
    # the lower branches do not matter once a higher one is positive
    assert ordinal_rule(torch.tensor([[logit(0.9), logit(0.1), logit(0.8)]])).tolist() == [3]


def test_multiclass_outputs_and_attention_branch():
    torch.manual_seed(0)
    p = pool(in_dim=4, k=4)
    h = torch.randn(2, 5, 4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = p(h, mask)
    bl = out.extras["branch_logits"]
    assert bl.shape == (2, 3, 2)
    assert torch.allclose(out.bag_probs, cascade_log_probs(bl).exp(), atol=1e-6)
    pred = out.extras["ordinal_pred"]
    assert torch.equal(pred, ordinal_rule(bl))
    alpha = out.extras["branch_attention"]  # [B, N, K]
    for b in range(2):
        j = int(pred[b]) - 1 if pred[b] > 0 else int(torch.softmax(bl[b], -1)[:, 1].argmax())
        assert torch.equal(out.attention[b], alpha[b, :, j])
    # instance logits: each C_j on the single instance, combined by the same cascade
    z = torch.einsum("bnd,jdc->bnjc", h, p.regressor)
    assert torch.allclose(out.inst_logits, cascade_log_probs(z), atol=1e-5)
    assert torch.allclose(p.instance_logits(h), out.inst_logits, atol=1e-5)


def test_binary_bag_logits_are_the_branch_logits():
    torch.manual_seed(0)
    p = pool(in_dim=3, k=2)
    out = p(torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool))
    assert torch.equal(out.bag_logits, out.extras["branch_logits"][:, 0])
    assert torch.equal(out.attention, out.extras["branch_attention"][..., 0])


# --- loss -----------------------------------------------------------------------------------


def _batch(labels, n=3):
    return collate_bags([Bag(x=torch.zeros(n, 2), y=y) for y in labels])


def test_branch_loss_known_values():
    loss = RGMILBranchLoss(RGMILBranchLoss.Config(), 4)
    bl = torch.tensor([[logit(0.2), logit(0.9), logit(0.3)], [logit(0.1), logit(0.2), logit(0.3)]])
    out = type("O", (), {"extras": {"branch_logits": bl}})()
    res = loss(out, _batch([2, 0]), TrainState())
    bag0 = -(math.log(0.8) + math.log(0.9) + math.log(0.7))  # label 2: only branch 2 positive
    bag1 = -(math.log(0.9) + math.log(0.8) + math.log(0.7))  # label 0: all negative
    assert res.total.item() == pytest.approx((bag0 + bag1) / 2, rel=1e-5)
    assert set(res.parts) == {"rgmil_branch_ce"} and not res.parts["rgmil_branch_ce"].requires_grad


def test_branch_loss_equals_bag_ce_for_two_classes():
    torch.manual_seed(0)
    p = pool(in_dim=3, k=2)
    out = p(torch.randn(3, 4, 3), torch.ones(3, 4, dtype=torch.bool))
    batch = _batch([1, 0, 1], n=4)
    res = RGMILBranchLoss(RGMILBranchLoss.Config(weight=2.0), 2)(out, batch, TrainState())
    assert torch.allclose(res.total, 2 * F.cross_entropy(out.bag_logits, batch.y))


def test_bind_rejects_other_poolings():
    enc = MLPEncoder(MLPEncoder.Config(dims=[4]), (3,))
    loss = RGMILBranchLoss(RGMILBranchLoss.Config(), 2)
    loss.bind(MILModel(enc, pool(in_dim=4)), None)
    with pytest.raises(ComponentError, match="rgmil"):
        loss.bind(MILModel(enc, MeanPooling(MeanPooling.Config(), 4, 2)), None)


# --- regressor training flag and init ---------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_train_regressor_flag(train):
    torch.manual_seed(0)
    enc = MLPEncoder(MLPEncoder.Config(dims=[8]), (3,))
    model = MILModel(enc, pool(in_dim=8, k=3, train_regressor=train))
    assert model.pooling.regressor.requires_grad is train
    assert "pooling.regressor" in model.state_dict()
    batch = collate_bags([Bag(x=torch.randn(4, 3), y=2), Bag(x=torch.randn(2, 3), y=0)])
    loss = RGMILBranchLoss(RGMILBranchLoss.Config(), 3)(model(batch), batch, TrainState()).total
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert (model.pooling.regressor.grad is not None) is train


def test_kaiming_init_on_d_by_2_layout():
    torch.manual_seed(0)
    u = pool(in_dim=512, k=4).regressor
    assert u.shape == (3, 512, 2)
    assert u.abs().max() <= math.sqrt(3) and u.abs().max() > 1.6  # bound sqrt(6 / fan_in), fan_in = 2
    n = pool(in_dim=512, k=2, init="kaiming_normal").regressor
    assert 0.9 < n.std().item() < 1.1  # std sqrt(2 / fan_in) = 1


def test_registered_through_entry_points():
    from milzoo.registry import get_component

    assert get_component("pooling", "rgmil") is RGMILPooling
    assert get_component("loss", "rgmil_branch_ce") is RGMILBranchLoss
    assert RGMILPooling.default_loss == "rgmil_branch_ce"


# --- training sanity ------------------------------------------------------------------------


def _ordinal_bags(num, rng):
    """Instances are noisy one-hot codes of digits 0..3; the bag label is the max digit (balanced)."""
    bags = []
    for i in range(num):
        y = i % 4
        digits = torch.randint(0, y + 1, (6,), generator=rng)
        digits[int(torch.randint(0, 6, (1,), generator=rng))] = y
        x = F.one_hot(digits, 4).float() + 0.1 * torch.randn(6, 4, generator=rng)
        bags.append(Bag(x=x, y=int(digits.max())))
    return bags


@pytest.mark.parametrize("k", [2, 4])
def test_training_sanity(k):
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(1)
    bags = _ordinal_bags(48, rng)
    if k == 2:
        bags = [Bag(x=b.x, y=int(b.y >= 2)) for b in bags]
    batch = collate_bags(bags)
    model = MILModel(MLPEncoder(MLPEncoder.Config(dims=[32, 32]), (4,)), pool(in_dim=32, k=k))
    loss_fn = RGMILBranchLoss(RGMILBranchLoss.Config(), k)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = (model.predict(batch).extras["ordinal_pred"] == batch.y).float().mean()
    losses = []
    for _ in range(80):
        opt.zero_grad()
        loss = loss_fn(model(batch), batch, TrainState()).total
        loss.backward()
        opt.step()
        losses.append(loss.item())
    out = model.predict(batch)
    after = (out.extras["ordinal_pred"] == batch.y).float().mean()
    assert losses[-1] < 0.5 * losses[0]
    assert after >= 0.9 and after > before
    assert (out.bag_probs.argmax(1) == batch.y).float().mean() >= 0.9
