"""ABMIL: attention computed by hand, gating, masking, multi-class, training."""

from __future__ import annotations

import math

import torch

from milzoo.datasets.batch import Bag, collate_bags
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
    from milzoo.components.output import TrainState
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


# ---------------------------------------------------------------- the PSMIL paper's ABMIL baseline ("fsa")


def _paper_pool(d=2, k=2):
    return ABMILPooling(ABMILPooling.Config(attention="linear", classifier="kaiming_nobias"), d, k)


def test_linear_attention_by_hand_on_a_three_instance_bag():
    """The official 'fsa' pooling: e = w^T h + b (no tanh, no V), a = softmax_n(e), logits = z W (no bias)."""
    assert ABMILPooling.Config().attention == "tanh" and ABMILPooling.Config().classifier == "linear"
    pool = _paper_pool()
    assert pool.attn_V is None and pool.attn_U is None
    assert pool.attn_w.weight.shape == (1, 2) and pool.classifier.bias is None
    with torch.no_grad():
        pool.attn_w.weight.copy_(torch.tensor([[1.0, -1.0]]))
        pool.attn_w.bias.fill_(0.3)  # cancels in the softmax
        pool.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    out = pool(H, MASK)
    # e = [1, -1, 0] (+0.3): softmax = [e, 1/e, 1] / (e + 1/e + 1)
    a = [0.665241, 0.090031, 0.244728]
    assert torch.allclose(out.attention[0], torch.tensor(a), atol=1e-6)
    torch.testing.assert_close(out.extras["attention_scores"][0], torch.tensor([1.3, -0.7, 0.3]))
    z = [a[0] + 2 * a[2], a[1] + 2 * a[2]]  # [1.154697, 0.579487]
    assert torch.allclose(out.bag_logits[0], torch.tensor(z), atol=1e-6)  # W = I, no bias
    assert torch.allclose(out.inst_logits[0], H[0], atol=1e-6)
    torch.testing.assert_close(pool.instance_logits(H[0]), H[0])


def test_kaiming_nobias_classifier_bound_is_sqrt_6_over_k():
    torch.manual_seed(0)
    pool = _paper_pool(512, 10)
    w = pool.classifier.weight
    bound = math.sqrt(6 / 10)
    assert abs(bound - 0.7746) < 1e-4
    assert w.shape == (10, 512) and pool.classifier.bias is None
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound  # uniform on (-0.7746, 0.7746)
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.01
    # the official nn.init.kaiming_uniform_ on its [d, k] parameter has the same bound (fan_in = k)
    ref = torch.nn.init.kaiming_uniform_(torch.empty(512, 10))
    assert ref.abs().max() <= bound and ref.abs().max() > 0.99 * bound
    # the default nn.Linear is ~17x narrower
    assert ABMILPooling(ABMILPooling.Config(), 512, 10).classifier.weight.abs().max() <= 1 / math.sqrt(512)


def test_paper_baseline_batched_with_padding_equals_each_bag_alone():
    torch.manual_seed(3)
    pool = _paper_pool(5, 10).eval()
    bags = [Bag(torch.randn(n, 5), 0) for n in (3, 7, 1)]
    b = collate_bags(bags)
    out = pool(b.x, b.mask)
    for i, bag in enumerate(bags):
        n = bag.x.shape[0]
        alone = pool(bag.x[None], torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(out.bag_logits[i], alone.bag_logits[0])
        torch.testing.assert_close(out.attention[i, :n], alone.attention[0])
        assert out.attention[i, n:].abs().sum() == 0 and (out.inst_logits[i, n:] == 0).all()
    # attention = softmax over the real instances of w^T h + b
    e = bags[1].x @ pool.attn_w.weight[0] + pool.attn_w.bias
    torch.testing.assert_close(out.attention[1, :7], torch.softmax(e, 0))


def test_paper_baseline_options_refuse_what_they_cannot_mean():
    from milzoo.errors import ComponentError

    for cfg, words in (({"attention": "linear", "gated": True}, ("gated", "tanh")),
                       ({"head": "sigmoid", "classifier": "kaiming_nobias"}, ("kaiming_nobias", "softmax"))):
        try:
            ABMILPooling(ABMILPooling.Config(**cfg), 3, 2)
        except ComponentError as err:
            assert all(w in str(err) for w in words), str(err)
        else:
            raise AssertionError(f"{cfg} must be refused")
