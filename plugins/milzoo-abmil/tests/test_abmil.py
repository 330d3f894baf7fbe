"""ABMIL: attention computed by hand, gating, masking, multi-class, training."""

from __future__ import annotations

import math

import torch

from milzoo.batch import Bag, collate_bags
from milzoo_abmil.pooling import ABMILPooling


def hand_set(pool: ABMILPooling):
    with torch.no_grad():
        pool.attn_V.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        pool.attn_V.bias.zero_()
        pool.attn_w.weight.copy_(torch.tensor([[1.0, -1.0]]))
        pool.attn_w.bias.fill_(0.3)  # cancels in the softmax
        pool.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        pool.classifier.bias.copy_(torch.tensor([0.5, -0.5]))
        if pool.attn_U is not None:
            pool.attn_U.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
            pool.attn_U.bias.zero_()


H = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
MASK = torch.ones(1, 3, dtype=torch.bool)


def test_attention_by_hand():
    pool = ABMILPooling(ABMILPooling.Config(attn_hidden=2), 2, 2)
    hand_set(pool)
    out = pool(H, MASK)
    # e_i = tanh(h1) - tanh(h2): [tanh 1, -tanh 1, 0]
    e = torch.tensor([math.tanh(1), -math.tanh(1), 0.0])
    a = torch.softmax(e, 0)
    assert torch.allclose(out.attention[0], a, atol=1e-6)
    z = (a.unsqueeze(1) * H[0]).sum(0)
    assert torch.allclose(out.bag_logits[0], z + torch.tensor([0.5, -0.5]), atol=1e-6)
    assert torch.allclose(out.inst_logits[0], H[0] + torch.tensor([0.5, -0.5]), atol=1e-6)
    assert torch.allclose(pool.instance_logits(H[0]), out.inst_logits[0])


def test_gated_attention_by_hand():
    pool = ABMILPooling(ABMILPooling.Config(attn_hidden=2, gated=True), 2, 2)
    hand_set(pool)
    out = pool(H, MASK)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # gate u = sigm(U h) = [sigm(2 h1), sigm(0)=0.5]; e = tanh(h1) u1 - tanh(h2) * 0.5
    e = torch.tensor([
        math.tanh(1) * sig(2) - 0.0,
        0.0 - math.tanh(1) * 0.5,
        math.tanh(2) * sig(4) - math.tanh(2) * 0.5,
    ])
    assert torch.allclose(out.attention[0], torch.softmax(e, 0), atol=1e-6)


def test_padding_gets_no_attention_and_changes_nothing():
    torch.manual_seed(0)
    pool = ABMILPooling(ABMILPooling.Config(attn_hidden=4, gated=True), 3, 4).eval()
    bags = [Bag(torch.randn(n, 3), 0) for n in (1, 5)]
    b = collate_bags(bags)
    out = pool(b.x, b.mask)
    assert out.attention[0, 1:].abs().sum() == 0 and math.isclose(out.attention[0, 0].item(), 1.0)
    alone = pool(bags[0].x[None], torch.ones(1, 1, dtype=torch.bool))
    assert torch.allclose(out.bag_logits[0], alone.bag_logits[0], atol=1e-6)
    assert out.bag_logits.shape == (2, 4) and out.inst_logits.shape == (2, 5, 4)


def test_learns_a_toy_problem():
    torch.manual_seed(0)
    pool = ABMILPooling(ABMILPooling.Config(attn_hidden=8), 4, 2)
    opt = torch.optim.Adam(pool.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    bags = []
    for i in range(40):
        x = torch.randn(6, 4, generator=g)
        if i % 2:
            x[0, 0] += 5
        bags.append(Bag(x, i % 2))
    batch = collate_bags(bags)
    for _ in range(60):
        out = pool(batch.x, batch.mask)
        loss = torch.nn.functional.cross_entropy(out.bag_logits, batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (pool(batch.x, batch.mask).bag_logits.argmax(1) == batch.y).float().mean()
    assert acc >= 0.95
    # the positive bags attend to their key instance
    att = pool(batch.x, batch.mask).attention
    assert (att[1::2].argmax(1) == 0).float().mean() >= 0.9


def test_sigmoid_head_is_one_logit_with_a_bernoulli_loss():
    from milzoo.errors import ComponentError
    from milzoo.output import TrainState
    from milzoo.registry import get_entry

    assert ABMILPooling.Config().head == "softmax"
    torch.manual_seed(2)
    pool = ABMILPooling(ABMILPooling.Config(attn_hidden=4, head="sigmoid"), 3, 2)
    assert pool.classifier.weight.shape == (1, 3)  # one logit, as the official Linear(M*K, 1)
    bags = [Bag(torch.randn(n, 3), n % 2) for n in (4, 1, 6)]
    b = collate_bags(bags)
    out = pool(b.x, b.mask)
    z = out.extras["bag_feature"]
    t = z @ pool.classifier.weight[0] + pool.classifier.bias[0]
    torch.testing.assert_close(out.bag_logits, torch.stack([torch.zeros_like(t), t], -1))
    torch.testing.assert_close(out.bag_probs[:, 1], torch.sigmoid(t))  # P(Y=1) = sigm(t)
    # bag_ce on [0, t] is the Bernoulli NLL -[y log p + (1-y) log(1-p)], gradients included
    loss = get_entry("loss", "bag_ce").obj
    ce = loss(loss.Config(), 2)(out, b, TrainState()).total
    bce = torch.nn.functional.binary_cross_entropy_with_logits(t, b.y.float())
    torch.testing.assert_close(ce, bce)
    g_ce = torch.autograd.grad(ce, pool.classifier.weight, retain_graph=True)[0]
    g_bce = torch.autograd.grad(bce, pool.classifier.weight)[0]
    torch.testing.assert_close(g_ce, g_bce)
    inst = pool.instance_logits(bags[0].x)
    torch.testing.assert_close(inst[:, 1], bags[0].x @ pool.classifier.weight[0] + pool.classifier.bias[0])
    assert (inst[:, 0] == 0).all()
    try:
        ABMILPooling(ABMILPooling.Config(head="sigmoid"), 3, 4)
    except ComponentError as err:
        assert "binary" in str(err) and "softmax" in str(err)
    else:
        raise AssertionError("a sigmoid head with 4 classes must be refused")


def test_sigmoid_head_learns_a_toy_problem():
    torch.manual_seed(0)
    pool = ABMILPooling(ABMILPooling.Config(attn_hidden=8, head="sigmoid"), 4, 2)
    opt = torch.optim.Adam(pool.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    bags = []
    for i in range(40):
        x = torch.randn(6, 4, generator=g)
        if i % 2:
            x[0, 0] += 5
        bags.append(Bag(x, i % 2))
    batch = collate_bags(bags)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(pool(batch.x, batch.mask).bag_logits, batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (pool(batch.x, batch.mask).bag_logits.argmax(1) == batch.y).float().mean() >= 0.95
