"""Tests of PSAtt (pooling) and PSAli (loss): known values computed by hand, masking, training."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from torch import nn

from milzoo.datasets.batch import Bag, collate_bags
from milzoo.builtin.encoders import MLPEncoder
from milzoo.components.base import Augment, ComponentConfig, Pooling
from milzoo.errors import ComponentError
from milzoo.model.mil import MILModel
from milzoo.components.output import MILOutput, TrainState
from milzoo.registry import get_component
from milzoo_psmil.loss import PSAliLoss
from milzoo_psmil.pooling import PSAttPooling


def make_pool(d=2, k=3, **opts) -> PSAttPooling:
    return PSAttPooling(PSAttPooling.Config(**opts), d, k)


def set_q(pool: PSAttPooling, q) -> None:
    pool.Q.copy_(torch.tensor(q, dtype=torch.float32))
    pool.initialized.fill_(1)


def fake_out(h, attention, mask=None) -> MILOutput:
    """A MILOutput with hand-chosen features/attention, as after_forward reads it."""
    if mask is None:
        mask = torch.ones(h.shape[:2], dtype=torch.bool)
    return MILOutput(bag_logits=torch.zeros(h.shape[0], 3), mask=mask, attention=attention, features=h)


def fake_batch(y, mask):
    return SimpleNamespace(y=torch.tensor(y), mask=mask)


# Q with columns q0 = (1, 0), q1 = (0, 1), q2 = (-1, 0)   (d = 2, k = 3)
Q_HAND = [[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
# instances: h1 -> class 0 (2 > 0.5), h2 -> class 1 (1 > 0.2), h3 -> class 1 (3 > 0.1)
H_HAND = torch.tensor([[[2.0, 0.5], [0.2, 1.0], [0.1, 3.0]]])


# --------------------------------------------------------------------------- registry
def test_registered_through_entry_point():
    assert get_component("pooling", "psatt") is PSAttPooling
    assert get_component("loss", "psali") is PSAliLoss


# --------------------------------------------------------------------------- PSAtt forward
def test_forward_known_values():
    pool = make_pool(tau_p=2.0)
    set_q(pool, Q_HAND)
    with torch.no_grad():
        pool.attn.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        pool.attn.bias.fill_(0.3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = pool(H_HAND, mask)
    # by hand: sim = h Q, P~ = softmax(sim / 2), score = P~ . w + 0.3, a = softmax(score)
    sims = [[2.0, 0.5, -2.0], [0.2, 1.0, -0.2], [0.1, 3.0, -0.1]]
    p_rows, scores = [], []
    for s in sims:
        e = [math.exp(v / 2.0) for v in s]
        p = [v / sum(e) for v in e]
        p_rows.append(p)
        scores.append(p[0] * 1.0 + p[1] * -2.0 + p[2] * 0.5 + 0.3)
    ex = [math.exp(s) for s in scores]
    a = [v / sum(ex) for v in ex]
    assert torch.allclose(out.extras["P_tilde"][0], torch.tensor(p_rows), atol=1e-6)
    assert torch.allclose(out.attention[0], torch.tensor(a), atol=1e-6)
    z = sum(a[i] * H_HAND[0, i] for i in range(3))
    assert torch.allclose(out.extras["bag_feature"][0], z, atol=1e-6)
    assert torch.allclose(out.bag_logits[0], pool.classifier(z), atol=1e-6)
    assert torch.allclose(out.inst_logits, pool.instance_logits(H_HAND), atol=1e-6)
    assert out.extras["P_tilde"].requires_grad is False  # P~ is a constant (no_grad in the code)
    assert "Q" not in dict(pool.named_parameters())


def test_onehot_mix_known_values():
    pool = make_pool(onehot_mix=True)
    set_q(pool, Q_HAND)
    with torch.no_grad():
        pool.attn.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        pool.attn.bias.zero_()
    out = pool(H_HAND, torch.ones(1, 3, dtype=torch.bool))
    plain = torch.softmax(pool.attn(out.extras["P_tilde"][0]).squeeze(-1), 0)
    # one-hot argmax: classes 0, 1, 1 -> scores 1, -2, -2
    hard = torch.softmax(torch.tensor([1.0, -2.0, -2.0]), 0)
    assert torch.allclose(out.attention[0], 0.5 * (plain + hard), atol=1e-6)
    assert torch.allclose(out.attention.sum(1), torch.ones(1))


def test_shapes_padding_and_permutation_invariance():
    torch.manual_seed(0)
    d, k = 6, 4
    pool = make_pool(d, k, proto_update="all", onehot_mix=True)  # random unit prototypes
    pool.eval()
    bags = [torch.randn(n, d) for n in (5, 2, 7)]
    n_max = 7
    h = torch.zeros(3, n_max, d)
    mask = torch.zeros(3, n_max, dtype=torch.bool)
    for i, b in enumerate(bags):
        h[i, : len(b)] = b
        mask[i, : len(b)] = True
    out = pool(h, mask)
    assert out.bag_logits.shape == (3, k)
    assert out.inst_logits.shape == (3, n_max, k) and out.attention.shape == (3, n_max)
    assert out.extras["P_tilde"].shape == (3, n_max, k)
    assert torch.all(out.attention[~mask] == 0) and torch.all(out.inst_logits[~mask] == 0)
    assert torch.all(out.extras["P_tilde"][~mask] == 0)
    assert torch.allclose(out.extras["P_tilde"][mask].sum(-1), torch.ones(int(mask.sum())))
    assert torch.allclose(out.attention.sum(1), torch.ones(3))
    for i, b in enumerate(bags):
        alone = pool(b.unsqueeze(0), torch.ones(1, len(b), dtype=torch.bool))
        n = len(b)
        assert torch.allclose(out.bag_logits[i], alone.bag_logits[0], atol=1e-6)
        assert torch.allclose(out.attention[i, :n], alone.attention[0], atol=1e-6)
        assert torch.allclose(out.extras["P_tilde"][i, :n], alone.extras["P_tilde"][0], atol=1e-6)
    perm = torch.randperm(7)
    shuffled = pool(bags[2][perm].unsqueeze(0), torch.ones(1, 7, dtype=torch.bool))
    assert torch.allclose(shuffled.bag_logits, out.bag_logits[2:3], atol=1e-5)
    assert torch.allclose(shuffled.attention[0], out.attention[2][perm], atol=1e-6)


def test_state_dict_roundtrip_keeps_prototypes():
    pool = make_pool()
    set_q(pool, Q_HAND)
    blob = save({k: v.contiguous() for k, v in pool.state_dict().items()})
    other = make_pool()
    assert int(other.initialized) == 0
    other.load_state_dict(load(blob))
    assert torch.equal(other.Q, pool.Q) and int(other.initialized) == 1


# --------------------------------------------------------------------------- prototype update
def test_label_mode_first_bag_initialisation():
    pool = make_pool(gamma=0.5)
    pool.train()
    h = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = pool(h, mask)
    out.features = h
    # Q = 0 so P~ is uniform: uniform attention, every instance assigned to class 0
    assert torch.allclose(out.attention, torch.full((1, 2), 0.5))
    pool.after_forward(out, fake_batch([1], mask))
    mean = torch.tensor([2.0, 1.0])
    assert int(pool.initialized) == 1
    # columns 0 and 2: the first bag's mean, unnormalised
    assert torch.allclose(pool.Q[:, 0], mean) and torch.allclose(pool.Q[:, 2], mean)
    # column 1 (the label): nobody is assigned to 1 -> fallback H_bag = mean; blend, L2-normalise
    assert torch.allclose(pool.Q[:, 1], mean / mean.norm(), atol=1e-6)
    # a later bag does not re-initialise
    pool.after_forward(fake_out(h * 10, torch.full((1, 2), 0.5)), fake_batch([0], mask))
    assert torch.allclose(pool.Q[:, 2], mean)


def test_label_mode_mean_of_assigned_instances():
    pool = make_pool(gamma=0.5)
    set_q(pool, Q_HAND)
    pool.train()
    mask = torch.ones(1, 3, dtype=torch.bool)
    pool.after_forward(fake_out(H_HAND, torch.full((1, 3), 1 / 3)), fake_batch([1], mask))
    # h2, h3 are assigned to class 1: Q_new = (0.15, 2.0); 0.5 (0, 1) + 0.5 Q_new = (0.075, 1.5)
    expect = torch.tensor([0.075, 1.5]) / math.hypot(0.075, 1.5)
    assert torch.allclose(pool.Q[:, 1], expect, atol=1e-6)
    assert torch.allclose(pool.Q[:, 0], torch.tensor([1.0, 0.0]))  # other columns untouched
    assert torch.allclose(pool.Q[:, 2], torch.tensor([-1.0, 0.0]))


def test_label_mode_falls_back_to_bag_feature():
    pool = make_pool(gamma=0.5)
    set_q(pool, Q_HAND)
    pool.train()
    mask = torch.ones(1, 3, dtype=torch.bool)
    att = torch.tensor([[0.5, 0.25, 0.25]])
    pool.after_forward(fake_out(H_HAND, att), fake_batch([2], mask))
    # no instance is assigned to class 2: Q_new = H_bag = 0.5 h1 + 0.25 h2 + 0.25 h3 = (1.075, 1.25)
    blended = 0.5 * torch.tensor([-1.0, 0.0]) + 0.5 * torch.tensor([1.075, 1.25])
    assert torch.allclose(pool.Q[:, 2], blended / blended.norm(), atol=1e-6)
    assert torch.allclose(pool.Q[:, :2], torch.tensor(Q_HAND)[:, :2])


def test_label_mode_default_gamma_and_padding():
    pool = make_pool()  # gamma = 0.001
    set_q(pool, Q_HAND)
    pool.train()
    h = torch.cat([H_HAND, torch.zeros(1, 2, 2)], dim=1)  # two padded rows (zeros would go to class 0/1)
    mask = torch.tensor([[True, True, True, False, False]])
    att = torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]])
    pool.after_forward(fake_out(h, att, mask), fake_batch([1], mask))
    v = 0.999 * torch.tensor([0.0, 1.0]) + 0.001 * torch.tensor([0.15, 2.0])
    assert torch.allclose(pool.Q[:, 1], v / v.norm(), atol=1e-7)


def test_batch_is_applied_bag_by_bag_in_order():
    pool = make_pool(gamma=0.5)
    set_q(pool, Q_HAND)
    pool.train()
    h = torch.cat([H_HAND, torch.tensor([[[0.0, 4.0], [5.0, 0.0], [0.0, 0.0]]])], dim=0)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    att = torch.tensor([[1 / 3] * 3, [0.5, 0.5, 0.0]])
    pool.after_forward(fake_out(h, att, mask), fake_batch([1, 1], mask))
    # bag 0: Q_new = (0.15, 2.0); bag 1 (assigned against the *starting* Q): only (0, 4) -> class 1
    q1 = 0.5 * torch.tensor([0.0, 1.0]) + 0.5 * torch.tensor([0.15, 2.0])
    q1 = q1 / q1.norm()
    q2 = 0.5 * q1 + 0.5 * torch.tensor([0.0, 4.0])
    assert torch.allclose(pool.Q[:, 1], q2 / q2.norm(), atol=1e-6)


def test_all_mode_skips_empty_classes():
    pool = make_pool(gamma=0.5, proto_update="all")
    set_q(pool, Q_HAND)
    pool.train()
    mask = torch.ones(1, 3, dtype=torch.bool)
    pool.after_forward(fake_out(H_HAND, torch.full((1, 3), 1 / 3)), fake_batch([2], mask))
    c0 = 0.5 * torch.tensor([1.0, 0.0]) + 0.5 * torch.tensor([2.0, 0.5])  # h1 alone
    c1 = 0.5 * torch.tensor([0.0, 1.0]) + 0.5 * torch.tensor([0.15, 2.0])  # mean of h2, h3
    assert torch.allclose(pool.Q[:, 0], c0 / c0.norm(), atol=1e-6)
    assert torch.allclose(pool.Q[:, 1], c1 / c1.norm(), atol=1e-6)
    assert torch.equal(pool.Q[:, 2], torch.tensor([-1.0, 0.0]))  # class 2 got nothing: skipped


def test_all_mode_random_unit_initialisation():
    torch.manual_seed(3)
    pool = make_pool(d=5, k=4, proto_update="all")
    assert int(pool.initialized) == 1
    assert torch.allclose(pool.Q.norm(dim=0), torch.ones(4), atol=1e-6)
    assert pool.Q.std(dim=1).min() > 0  # columns differ: the symmetry is broken
    torch.manual_seed(3)
    assert torch.equal(make_pool(d=5, k=4, proto_update="all").Q, pool.Q)


def test_no_update_in_eval_mode():
    pool = make_pool(gamma=0.5)
    pool.eval()
    mask = torch.ones(1, 3, dtype=torch.bool)
    pool.after_forward(fake_out(H_HAND, torch.full((1, 3), 1 / 3)), fake_batch([1], mask))
    assert int(pool.initialized) == 0 and torch.all(pool.Q == 0)
    set_q(pool, Q_HAND)
    pool.after_forward(fake_out(H_HAND, torch.full((1, 3), 1 / 3)), fake_batch([1], mask))
    assert torch.equal(pool.Q, torch.tensor(Q_HAND))


# --------------------------------------------------------------------------- PSAli
# three views of one instance; probabilities chosen so that
#   sum of probabilities -> class 0 (1.01 vs 1.00 vs 0.99), sum of log-probabilities -> class 1
VIEW_PROBS = torch.tensor([[0.95, 0.03, 0.02], [0.03, 0.50, 0.47], [0.03, 0.47, 0.50]])


def test_target_is_argmax_of_summed_log_probs():
    logits = VIEW_PROBS.log().unsqueeze(1)  # [V=3, M=1, k=3]
    assert int(VIEW_PROBS.sum(0).argmax()) == 0
    assert int(PSAliLoss.targets(logits)[0]) == 1
    raw = PSAliLoss.alignment(logits, torch.ones(1, 1, dtype=torch.bool))
    expect = -(math.log(0.03) + math.log(0.50) + math.log(0.47)) / 3
    assert raw.item() == pytest.approx(expect, rel=1e-5)


def test_alignment_gradient_is_hard_ce_on_logits():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 5, requires_grad=True)
    mask = torch.ones(1, 4, dtype=torch.bool)
    PSAliLoss.alignment(logits, mask).backward()
    target = F.log_softmax(logits.detach(), -1).sum(0).argmax(-1)
    expect = (torch.softmax(logits.detach(), -1) - F.one_hot(target, 5)) / (3 * 4)
    assert torch.allclose(logits.grad, expect, atol=1e-6)


def test_alignment_is_a_mean_over_bags_of_per_bag_means():
    torch.manual_seed(2)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    logits = torch.randn(3, 4, 3)  # rows 0-2 belong to bag 0, row 3 to bag 1
    both = PSAliLoss.alignment(logits, mask)
    one = PSAliLoss.alignment(logits[:, :3], torch.ones(1, 3, dtype=torch.bool))
    two = PSAliLoss.alignment(logits[:, 3:], torch.ones(1, 1, dtype=torch.bool))
    assert both.item() == pytest.approx((one.item() + two.item()) / 2, rel=1e-6)


def test_lambda_schedule():
    loss = PSAliLoss(PSAliLoss.Config(), 3)
    got = [loss.lambda_at(t) for t in range(13)]
    expect = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.1, 0.1]
    assert got == pytest.approx(expect)
    assert loss.freeze_encoder_epochs == 1
    const = PSAliLoss(PSAliLoss.Config(schedule="constant", lam=0.1), 3)
    assert [const.lambda_at(t) for t in (0, 5, 20)] == pytest.approx([0.1, 0.1, 0.1])
    assert PSAliLoss(PSAliLoss.Config(freeze_encoder_epochs=0), 3).freeze_encoder_epochs == 0


class NoisyViews(Augment):
    """Test augmentation: view 0 unchanged, the others with Gaussian noise."""

    name = "test_noisy_views"

    class Config(ComponentConfig):
        pass

    def __init__(self, in_shape, views=3, sigma=0.3):
        super().__init__(self.Config(), in_shape)
        self.num_views = views
        self.sigma = sigma

    def forward(self, x):
        noisy = [x] + [x + self.sigma * torch.randn_like(x) for _ in range(self.num_views - 1)]
        return torch.stack(noisy)


class NoInstancePooling(Pooling):
    """A pooling without instance_logits (like TransMIL)."""

    name = "test_no_instances"

    class Config(ComponentConfig):
        pass

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.head = nn.Linear(in_dim, num_classes)

    def forward(self, h, mask):
        return MILOutput(bag_logits=self.head(h.sum(1)), mask=mask)


def make_model(d_in=6, k=3, augment=True, pooling=None, **pool_opts) -> MILModel:
    enc = MLPEncoder(MLPEncoder.Config(dims=[16]), (d_in,))
    pool = pooling if pooling is not None else PSAttPooling(PSAttPooling.Config(**pool_opts), enc.out_dim, k)
    return MILModel(enc, pool, augment=NoisyViews((d_in,)) if augment else None)


def test_bind_checks_the_model():
    loss = PSAliLoss(PSAliLoss.Config(), 3)
    enc = MLPEncoder(MLPEncoder.Config(dims=[8]), (6,))
    bad = MILModel(enc, NoInstancePooling(NoInstancePooling.Config(), 8, 3), augment=NoisyViews((6,)))
    with pytest.raises(ComponentError, match="instance"):
        loss.bind(bad, None)
    with pytest.raises(ComponentError, match="augment"):
        loss.bind(make_model(augment=False), None)
    one_view = make_model()
    one_view.augment.num_views = 1
    with pytest.raises(ComponentError, match="allow_single_view"):
        loss.bind(one_view, None)
    PSAliLoss(PSAliLoss.Config(allow_single_view=True), 3).bind(make_model(augment=False), None)
    with pytest.raises(ComponentError, match="classes"):
        PSAliLoss(PSAliLoss.Config(), 4).bind(make_model(), None)


def test_loss_on_model_output_and_no_duplicated_parameters():
    torch.manual_seed(4)
    model = make_model()
    loss = PSAliLoss(PSAliLoss.Config(), 3)
    loss.bind(model, None)
    assert list(loss.parameters()) == [] and len(loss.state_dict()) == 0
    batch = collate_bags([Bag(torch.randn(n, 6), y) for n, y in ((4, 1), (2, 0))])
    model.train()
    out = model(batch)
    views = out.extras["view_features"]
    assert views.shape == (3, 6, 16)
    res = loss(out, batch, TrainState(epoch=3))
    raw = PSAliLoss.alignment(model.pooling.classifier(views), batch.mask)
    assert res.total.item() == pytest.approx(0.03 * raw.item(), rel=1e-5)
    assert res.parts["psali_raw"].item() == pytest.approx(raw.item(), rel=1e-5)
    assert res.parts["lambda_T"].item() == pytest.approx(0.03)
    assert set(res.parts) == {"psali", "psali_raw", "lambda_T"}
    res.total.backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0  # reaches the encoder through every view
    assert model.pooling.classifier.weight.grad.abs().sum() > 0
    out.extras["view_features"] = views.detach().bfloat16()  # mixed precision: losses run outside autocast
    assert torch.isfinite(loss(out, batch, TrainState(epoch=3)).total)
    model.eval()  # evaluation: no views, the pooling's single view is used
    res = loss(model(batch), batch, TrainState(epoch=3, training=False))
    assert torch.isfinite(res.total)


# --------------------------------------------------------------------------- training
def toy_bags(n_bags, gen):
    """k = 3: class-0 background everywhere; a bag of label c > 0 holds 2 key instances of class c."""
    centres = torch.tensor([[0.0] * 6, [3.0, 3, 0, 0, 0, 0], [0.0, 0, 0, 3, 3, 0]])
    bags = []
    for i in range(n_bags):
        y = i % 3
        labels = torch.zeros(8, dtype=torch.long)
        if y > 0:
            labels[:2] = y
        x = centres[labels] + 0.5 * torch.randn(8, 6, generator=gen)
        bags.append(Bag(x, y, index=i, inst_y=labels))
    return bags


def test_training_sanity():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    train, test = toy_bags(48, gen), toy_bags(30, gen)
    model = make_model(gamma=0.05)
    ce = get_component("loss", "bag_ce")(get_component("loss", "bag_ce").Config(), 3)
    psali = PSAliLoss(PSAliLoss.Config(lam=0.05, tau=2), 3)
    psali.bind(model, None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    test_batch = collate_bags(test)

    def accuracy():
        out = model.predict(test_batch)
        bag = (out.bag_logits.argmax(-1) == test_batch.y).float().mean().item()
        inst = (out.inst_logits.argmax(-1)[test_batch.mask] == test_batch.inst_y[test_batch.mask]).float().mean()
        return bag, inst.item()

    bag0, _ = accuracy()
    q0 = model.pooling.Q.clone()
    first = last = None
    for epoch in range(4):
        model.train()
        for s in range(0, 48, 4):
            batch = collate_bags(train[s : s + 4])
            out = model(batch)
            state = TrainState(epoch=epoch, num_epochs=4)
            total = ce(out, batch, state).total + psali(out, batch, state).total
            opt.zero_grad()
            total.backward()
            opt.step()
            with torch.no_grad():
                model.pooling.after_forward(out, batch)
            first = total.item() if first is None else first
            last = total.item()
    bag1, inst1 = accuracy()
    assert last < first
    assert bag1 >= 0.9 and bag1 > bag0
    assert inst1 >= 0.8
    assert int(model.pooling.initialized) == 1 and not torch.equal(model.pooling.Q, q0)
    assert torch.allclose(model.pooling.Q.norm(dim=0), torch.ones(3), atol=1e-5)  # every column updated


# --------------------------------------------------------------------------- torch.distributed
def _dist_case(mode):
    """5 bags (mixed lengths) and attentions; rank 0 gets bags 0-2, rank 1 bags 3-4."""
    torch.manual_seed(0)
    h = torch.randn(5, 4, 3)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[1, 2:] = False
    mask[4, 1:] = False
    y = torch.tensor([1, 2, 0, 1, 2])
    att = torch.softmax(torch.randn(5, 4).masked_fill(~mask, -1e9), 1) * mask
    pool = PSAttPooling(PSAttPooling.Config(gamma=0.3, proto_update=mode), 3, 3)  # 'all': random Q
    pool.train()
    return pool, h, mask, y, att


WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from types import SimpleNamespace
    from milzoo.components.output import MILOutput
    sys.path.insert(0, sys.argv[4])
    from test_psmil import _dist_case
    rank, store, outdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    part = slice(0, 3) if rank == 0 else slice(3, 5)
    for mode in ("label", "all"):
        pool, h, mask, y, att = _dist_case(mode)
        for _ in range(2):
            out = MILOutput(bag_logits=torch.zeros(1), mask=mask[part], attention=att[part], features=h[part])
            pool.after_forward(out, SimpleNamespace(y=y[part], mask=mask[part]))
        torch.save(pool.Q, f"{outdir}/{mode}{rank}.pt")
    dist.destroy_process_group()
    """
)


def test_distributed_ranks_apply_identical_update(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"), str(tmp_path), here], env=env)
        for r in range(2)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    for mode in ("label", "all"):
        q0, q1 = torch.load(tmp_path / f"{mode}0.pt"), torch.load(tmp_path / f"{mode}1.pt")
        assert torch.equal(q0, q1)
        # the same as one process seeing all 5 bags in rank order
        pool, h, mask, y, att = _dist_case(mode)
        start = pool.Q.clone()
        for _ in range(2):
            pool.after_forward(fake_out(h, att, mask), fake_batch(y.tolist(), mask))
        assert torch.allclose(q0, pool.Q, atol=1e-6) and not torch.allclose(pool.Q, start)


# --- the official code's configuration (docs/models/psmil.md) ----------------------------------------------
@pytest.mark.parametrize("k", [2, 10])
def test_ce_on_probabilities_gradient_is_one_kth_at_uniform_logits(k):
    """At equal logits p = 1/k, softmax(p) is uniform again, and the softmax Jacobian J = I/k - 11^T/k^2
    maps (1/k - e_c) to (1/k - e_c)/k: the official form's gradient is exactly 1/k of the paper's."""
    mask = torch.ones(1, 1, dtype=torch.bool)
    grads = {}
    for form in ("logits", "probabilities"):
        z = torch.zeros(1, 1, k, requires_grad=True)
        PSAliLoss.alignment(z, mask, ce_input=form).backward()
        grads[form] = z.grad.flatten()
    expect_paper = torch.full((k,), 1.0 / k)
    expect_paper[0] -= 1.0  # the tie resolves to class 0
    assert torch.allclose(grads["logits"], expect_paper, atol=1e-7)
    assert torch.allclose(grads["probabilities"], expect_paper / k, atol=1e-7)


def test_ce_on_probabilities_value_and_chain_rule():
    torch.manual_seed(3)
    logits = torch.randn(3, 4, 5, requires_grad=True)
    mask = torch.ones(1, 4, dtype=torch.bool)
    raw = PSAliLoss.alignment(logits, mask, ce_input="probabilities")
    raw.backward()
    z = logits.detach()
    target = F.log_softmax(z, -1).sum(0).argmax(-1)  # the same target as the paper's form
    p = torch.softmax(z, -1)
    value = -F.log_softmax(p, -1).gather(-1, target.view(1, -1, 1).expand(3, -1, 1)).mean()
    assert raw.item() == pytest.approx(value.item(), rel=1e-6)
    outer = torch.softmax(p, -1) - F.one_hot(target, 5)  # d loss / d p, per view and instance
    jac = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # d p / d z
    expect = (jac @ outer.unsqueeze(-1)).squeeze(-1) / (3 * 4)
    assert torch.allclose(logits.grad, expect, atol=1e-6)


def test_psali_config_ce_input_reaches_the_loss():
    model, loss = make_model(), None
    loss = PSAliLoss(PSAliLoss.Config(ce_input="probabilities", lam=1.0, schedule="constant"), 3)
    loss.bind(model, None)
    torch.manual_seed(0)
    batch = collate_bags([Bag(x=torch.randn(5, 6), y=1), Bag(x=torch.randn(3, 6), y=2)])
    model.train()
    out = model(batch)
    got = loss(out, batch, TrainState(epoch=0)).parts["psali_raw"]
    views = out.extras["view_features"]
    want = PSAliLoss.alignment(model.pooling.instance_logits(views), batch.mask, ce_input="probabilities")
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert got.item() != pytest.approx(PSAliLoss.alignment(model.pooling.instance_logits(views), batch.mask).item())


def test_kaiming_nobias_classifier_bound():
    from milzoo.layers.heads import kaiming_nobias_bound

    # PyTorch's kaiming_uniform_ on a [d, k] tensor: fan_in = k, gain sqrt(2) -> bound sqrt(2) * sqrt(3 / k)
    assert kaiming_nobias_bound(10) == pytest.approx(math.sqrt(2) * math.sqrt(3 / 10))
    assert kaiming_nobias_bound(10) == pytest.approx(0.7746, abs=1e-4)
    ref = torch.empty(512, 10)
    torch.nn.init.kaiming_uniform_(ref)
    assert ref.abs().max().item() <= kaiming_nobias_bound(10) and ref.abs().max().item() > 0.75
    torch.manual_seed(0)
    code = make_pool(d=512, k=10, classifier="kaiming_nobias")
    paper = make_pool(d=512, k=10)
    assert code.classifier.bias is None and paper.classifier.bias is not None
    w = code.classifier.weight
    assert w.shape == (10, 512)
    assert 0.75 < w.abs().max().item() <= kaiming_nobias_bound(10)
    assert w.std().item() == pytest.approx(kaiming_nobias_bound(10) / math.sqrt(3), rel=0.05)
    assert paper.classifier.weight.abs().max().item() <= 1 / math.sqrt(512) + 1e-7  # nn.Linear: 0.044
    # the forward is the same function of (W, b): instance logits are h @ W^T without a bias
    h = torch.randn(2, 4, 512)
    assert torch.allclose(code.instance_logits(h), h @ w.t(), atol=1e-5)
