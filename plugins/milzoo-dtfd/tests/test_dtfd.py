"""DTFD-MIL: pseudo-bag splits, hand-checked distillation and instance scores, masking, loss, training."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from milzoo.datasets.batch import Bag, MILBatch, collate_bags
from milzoo.errors import ComponentError
from milzoo.components.output import MILOutput, TrainState
from milzoo_dtfd.loss import DTFDLoss
from milzoo_dtfd.pooling import (
    DTFDPooling, chunk_split, device_random_split, random_split, seeded_split, stratified_split,
)


def make(k=2, d=6, **opts) -> DTFDPooling:
    opts.setdefault("reduced_dim", 16)
    opts.setdefault("attn_hidden", 8)
    return DTFDPooling(DTFDPooling.Config(**opts), d, k).eval()


def hand_set(p: DTFDPooling, w1: torch.Tensor, b1: torch.Tensor) -> None:
    """x = ReLU(h) (identity reduction), constant tier-1 attention, classifier1 = (w1, b1)."""
    with torch.no_grad():
        p.reduce.weight.copy_(torch.eye(p.reduce.weight.shape[0], p.reduce.weight.shape[1]))
        p.attention1.w.weight.zero_()
        p.attention1.w.bias.fill_(0.3)
        p.classifier1.weight.copy_(w1)
        p.classifier1.bias.copy_(b1)


def test_registered():
    from milzoo.registry import get_entry

    assert get_entry("pooling", "dtfd").obj is DTFDPooling
    assert get_entry("loss", "dtfd").obj is DTFDLoss
    assert DTFDPooling.default_loss == "dtfd"
    assert DTFDPooling.Config().distill == "AFS" and DTFDPooling.Config().num_groups == 4


def test_random_split_covers_every_real_instance_once():
    torch.manual_seed(0)
    mask = collate_bags([Bag(x=torch.zeros(n, 1), y=0) for n in (11, 4, 3, 1, 8)]).mask
    g = random_split(mask, 4)
    assert (g[~mask] == -1).all()
    for b, n in enumerate((11, 4, 3, 1, 8)):
        ids = g[b, :n]
        m = min(4, n)
        assert set(ids.tolist()) == set(range(m))  # every pseudo-bag non-empty, each instance in one
        sizes = sorted(torch.bincount(ids, minlength=m).tolist(), reverse=True)
        assert sizes == [n // m + (1 if j < n % m else 0) for j in range(m)]  # array_split sizes
    # random (global RNG): a new split next time, the same one after re-seeding
    torch.manual_seed(1)
    a = random_split(mask, 4)
    b = random_split(mask, 4)
    torch.manual_seed(1)
    assert torch.equal(random_split(mask, 4), a)
    assert not torch.equal(a, b)


def test_stratified_split_by_hand():
    scores = torch.tensor([[5.0, 1.0, 3.0, 4.0, 2.0, 9.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    # ranks (descending, padding ignored): 5->0, 4->1, 3->2, 2->3, 1->4; group = rank % 2
    assert stratified_split(scores, mask, 2).tolist() == [[0, 0, 0, 1, 1, -1]]
    assert stratified_split(scores, mask, 4).tolist() == [[0, 0, 2, 1, 3, -1]]
    assert stratified_split(scores, mask, 8).tolist() == [[0, 4, 2, 1, 3, -1]]  # M = min(8, n) = 5


def test_instance_probabilities_and_maxmin_selection_by_hand():
    # 6 instances, 2 pseudo-bags (eval: constant attention -> ties keep index order -> group = i % 2),
    # uniform attention 1/3 within each pseudo-bag.  classifier1 row 1 reads x_0, so
    # s_i = a_i * W1 x_i = [0, x_i0 / 3] (the bias 0.7 must NOT enter), p_i1 = sigmoid(x_i0 / 3).
    p = make(k=2, d=2, reduced_dim=2, num_groups=2, distill="MaxMinS", eval_split="stratified")
    hand_set(p, torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([0.0, 0.7]))
    x0 = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0]
    h = torch.tensor([[[v, 0.5] for v in x0]])
    out = p(h, torch.ones(1, 6, dtype=torch.bool))
    assert out.extras["pseudo_bag"].tolist() == [[0, 1, 0, 1, 0, 1]]
    torch.testing.assert_close(out.extras["pseudo_attention"][0], torch.full((6,), 1 / 3))
    want = torch.tensor([[0.0, v / 3] for v in x0])
    torch.testing.assert_close(out.extras["inst_logits_pseudo"][0], want)
    # pseudo-bag 0 = {0, 2, 4} (x0 5, 4, 3): max 0, min 4; pseudo-bag 1 = {1, 3, 5} (1, 2, 6): max 5, min 1
    assert out.extras["distilled_index"].tolist() == [[[0, 4], [5, 1]]]
    # tier-1 logits: W1 f_m + b1 with f_m the mean of the pseudo-bag
    torch.testing.assert_close(out.extras["tier1_logits"][0], torch.tensor([[0.0, 4.0 + 0.7], [0.0, 3.0 + 0.7]]))
    # whole-bag attention (localisation) is uniform over the bag, and inst_logits use it
    torch.testing.assert_close(out.attention[0], torch.full((6,), 1 / 6))
    torch.testing.assert_close(out.inst_logits[0], torch.tensor([[0.0, v / 6] for v in x0]))

    # MaxS keeps only the top instance of each pseudo-bag
    q = make(k=2, d=2, reduced_dim=2, num_groups=2, distill="MaxS", eval_split="stratified")
    q.load_state_dict(p.state_dict())
    assert q(h, torch.ones(1, 6, dtype=torch.bool)).extras["distilled_index"].tolist() == [[[0], [5]]]


def test_maxmin_selection_follows_random_training_split():
    torch.manual_seed(3)
    p = make(k=2, d=2, reduced_dim=2, num_groups=3, distill="MaxMinS", distill_k=2).train()
    hand_set(p, torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.zeros(2))
    x0 = torch.randperm(12).float()
    h = torch.stack([x0, torch.zeros(12)], -1).unsqueeze(0)
    out = p(h, torch.ones(1, 12, dtype=torch.bool))
    g = out.extras["pseudo_bag"][0]
    for m in range(3):
        members = torch.nonzero(g == m).squeeze(1)
        order = members[x0[members].argsort(descending=True)]
        want = order[:2].tolist() + order.flip(0)[:2].tolist()
        assert out.extras["distilled_index"][0, m].tolist() == want


def test_rank_class_pred_vs_last():
    # one pseudo-bag, classifier1 = identity, uniform attention 1/3: s_i = x_i / 3.
    # bias [0, 1, 0] makes the pseudo-bag predict class 1 (f = [0, 4/3, 4/3]).
    h = torch.tensor([[[0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, 1.0]]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    picks = {}
    for rank_class in ("last", "pred"):
        p = make(k=3, d=3, reduced_dim=3, num_groups=1, distill="MaxMinS", rank_class=rank_class)
        hand_set(p, torch.eye(3), torch.tensor([0.0, 1.0, 0.0]))
        out = p(h, mask)
        assert out.extras["tier1_logits"][0, 0].argmax().item() == 1
        picks[rank_class] = out.extras["distilled_index"][0, 0].tolist()
    assert picks["last"] == [1, 0]  # by p_{i,2}: highest instance 1, lowest instance 0
    assert picks["pred"] == [0, 1]  # by p_{i,1}: highest instance 0, lowest instance 1


@pytest.mark.parametrize("distill,eval_split,draws", [("AFS", "random", 1), ("MaxMinS", "random", 3),
                                                      ("MaxS", "random", 1), ("AFS", "stratified", 1),
                                                      ("MaxMinS", "stratified", 1)])
def test_padding_permutation_and_eval_determinism(distill, eval_split, draws):
    torch.manual_seed(4)
    p = make(k=3, distill=distill, distill_k=2, rank_class="pred", num_res_blocks=1, eval_split=eval_split,
             eval_draws=draws)
    bags = [Bag(x=torch.randn(n, 6), y=0) for n in (9, 2, 1, 6)]
    batch = collate_bags(bags)
    out = p(batch.x, batch.mask)
    again = p(batch.x, batch.mask)
    torch.testing.assert_close(out.bag_logits, again.bag_logits, atol=0, rtol=0)
    for b, bag in enumerate(bags):
        n = len(bag)
        one = p(bag.x.unsqueeze(0), torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(out.bag_logits[b : b + 1], one.bag_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.attention[b, :n], one.attention[0], atol=1e-6, rtol=1e-5)
        assert out.attention[b, :n].sum().item() == pytest.approx(1.0, abs=1e-5)
        assert (out.attention[b, n:] == 0).all() and (out.inst_logits[b, n:] == 0).all()
        perm = torch.randperm(n)
        pm = p(bag.x[perm].unsqueeze(0), torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(pm.bag_logits, one.bag_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pm.inst_logits[0], one.inst_logits[0, perm], atol=1e-6, rtol=1e-5)
    assert out.extras["pseudo_mask"].sum(1).tolist() == [4, 2, 1, 4]


def test_eval_split_default_is_the_official_random_split():
    assert DTFDPooling.Config().eval_split == "random" and DTFDPooling.Config().eval_draws == 1
    assert DTFDPooling.Config().instance_tier == "tier2"


def test_the_split_drawn_on_the_device_has_the_cpu_splits_sizes_and_distribution():
    """split_generator = "device": array_split sizes in pseudo-bag order, -1 at padding, fresh draws from the
    global generator, nothing read back; over many draws every partition of a small bag is as likely as with
    randperm (two given instances share a pseudo-bag with probability 1/3 for n = 4, M = 2; 3/7 for n = 7, M = 2)."""
    from milzoo.testing import StepCounter

    lengths = (11, 4, 3, 1, 8)
    mask = collate_bags([Bag(x=torch.zeros(n, 1), y=0) for n in lengths]).mask
    torch.manual_seed(0)
    with StepCounter() as counter:
        g = device_random_split(mask, 4)
    assert not counter.syncs
    assert (g[~mask] == -1).all()
    for b, n in enumerate(lengths):
        m = min(4, n)
        assert torch.bincount(g[b, :n], minlength=m).tolist() == [n // m + (1 if j < n % m else 0) for j in range(m)]
    torch.manual_seed(1)
    a = device_random_split(mask, 4)
    assert not torch.equal(a, device_random_split(mask, 4))
    torch.manual_seed(1)
    assert torch.equal(device_random_split(mask, 4), a)
    for n, share in ((4, 1 / 3), (7, 3 / 7)):
        m = torch.ones(4000, n, dtype=torch.bool)
        torch.manual_seed(2)
        dev, cpu = device_random_split(m, 2), random_split(m, 2)
        for split in (dev, cpu):
            together = (split[:, 0] == split[:, 1]).float().mean().item()
            assert abs(together - share) < 0.03, (n, together, share)


def test_seeded_split_is_random_uniform_and_deterministic():
    scores = torch.randn(3, 11)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 3:] = False
    rng = torch.get_rng_state()
    g = seeded_split(scores, mask, 4, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)  # evaluation leaves the training RNG alone
    assert torch.equal(seeded_split(scores, mask, 4, seed=5), g)  # deterministic for a seed
    assert (g[~mask] == -1).all()
    for b, n in enumerate((11, 7, 3)):
        m = min(4, n)
        sizes = sorted(torch.bincount(g[b, :n], minlength=m).tolist(), reverse=True)
        assert sizes == [n // m + (1 if j < n % m else 0) for j in range(m)]  # array_split sizes
    # a function of the attention ranks: reordering the instances moves their ids with them
    perm = torch.randperm(11)
    assert torch.equal(seeded_split(scores[:1, perm], mask[:1], 4, seed=5)[0], g[0, perm])
    assert any(not torch.equal(seeded_split(scores, mask, 4, seed=s)[0], g[0]) for s in range(6, 9))


def test_random_eval_split_spreads_top_instances_like_training():
    # 5 top-attended instances among 2,000, 4 pseudo-bags of 500: the stratified split puts one into every
    # pseudo-bag every time; a uniformly random partition (training, the official test) does so with
    # probability 4 C(500,2) 500^3 / C(2000,5) = 0.2351.
    n, top = 2000, 5
    scores = torch.zeros(1, n)
    scores[0, :top] = 10.0 + torch.arange(top, dtype=torch.float)
    mask = torch.ones(1, n, dtype=torch.bool)
    assert len(set(stratified_split(scores, mask, 4)[0, :top].tolist())) == 4
    want = 4 * math.comb(500, 2) * 500**3 / math.comb(n, top)
    hits = [len(set(seeded_split(scores, mask, 4, seed=s)[0, :top].tolist())) == 4 for s in range(600)]
    assert abs(sum(hits) / len(hits) - want) < 0.06  # 3.4 standard errors
    torch.manual_seed(0)
    train = [len(set(random_split(mask, 4)[0, :top].tolist())) == 4 for _ in range(600)]
    assert abs(sum(train) / len(train) - want) < 0.06


def test_eval_draws_average_bag_probabilities():
    torch.manual_seed(8)
    p = make(k=2, eval_draws=3, eval_seed=10)
    h, mask = torch.randn(2, 13, 6), torch.ones(2, 13, dtype=torch.bool)
    with torch.no_grad():
        out = p(h, mask)
        singles = []
        for j in range(3):
            q = make(k=2, eval_seed=10 + j)
            q.load_state_dict(p.state_dict())
            singles.append(q(h, mask).bag_probs)
    torch.testing.assert_close(out.bag_probs, torch.stack(singles).mean(0))
    torch.testing.assert_close(torch.softmax(out.bag_logits, -1), out.bag_probs)
    assert not torch.allclose(singles[0], singles[1])  # the draws do differ
    p.train()  # training: one random split, no averaging
    assert p(h, mask).probs is None


def test_instance_tier_tier1_scores_single_instances_with_tier1():
    torch.manual_seed(9)
    p = make(k=3, instance_tier="tier1")
    q = make(k=3)
    q.load_state_dict(p.state_dict())
    h = torch.randn(4, 6)
    with torch.no_grad():
        x = torch.relu(p.reduce(h))
        w1x = x @ p.classifier1.weight.t()  # the official instance score: tier-1 weight, no bias
        torch.testing.assert_close(p.instance_logits(h), w1x)
        torch.testing.assert_close(q.instance_logits(h), p.classifier2(x))  # tier2: through both tiers
        ones = torch.cat([p(h[i].view(1, 1, 6), torch.ones(1, 1, dtype=torch.bool)).bag_logits for i in range(4)])
        torch.testing.assert_close(ones, w1x)
        # a padded batch: the one-instance bag is scored by tier 1, the 4-instance bag by tier 2 as before
        batch = collate_bags([Bag(x=h[:1], y=0), Bag(x=h, y=0)])
        out, ref = p(batch.x, batch.mask), q(batch.x, batch.mask)
        torch.testing.assert_close(out.bag_logits[0], w1x[0])
        torch.testing.assert_close(out.bag_logits[1], ref.bag_logits[1])
        p.train()
        torch.testing.assert_close(p(h[:1].view(1, 1, 6), torch.ones(1, 1, dtype=torch.bool)).bag_logits[0],
                                   p.classifier2(x[0]))  # training never swaps the tier


def test_training_split_is_random_and_tier2_input_detached():
    torch.manual_seed(5)
    p = make(k=2, distill="MaxMinS").train()
    h, mask = torch.randn(1, 20, 6), torch.ones(1, 20, dtype=torch.bool)
    g1 = p(h, mask).extras["pseudo_bag"]
    out = p(h, mask)
    assert not torch.equal(g1, out.extras["pseudo_bag"])
    # L2 alone trains tier 2 only; L1 trains the reduction and tier 1
    torch.nn.functional.cross_entropy(out.bag_logits, torch.tensor([1])).backward()
    for name, prm in p.named_parameters():
        tier2 = name.startswith(("attention2", "classifier2"))
        assert (prm.grad is not None) == tier2, name
    assert p.classifier2.weight.grad.abs().sum() > 0 and p.attention2.V.weight.grad.abs().sum() > 0


def test_instance_logits_equal_one_instance_bags():
    torch.manual_seed(6)
    for distill in ("AFS", "MaxMinS"):
        p = make(k=3, distill=distill)
        h = torch.randn(4, 6)
        per_bag = torch.cat([p(h[i].view(1, 1, 6), torch.ones(1, 1, dtype=torch.bool)).bag_logits for i in range(4)])
        torch.testing.assert_close(p.instance_logits(h), per_bag, atol=1e-5, rtol=1e-5)


def test_reduction_is_bias_free():
    p = make(num_res_blocks=2)
    assert p.reduce.bias is None
    assert all(m.bias is None for m in p.res_blocks.modules() if isinstance(m, nn.Linear))


def _batch(y):
    y = torch.tensor(y)
    return MILBatch(x=torch.zeros(len(y), 1, 1), mask=torch.ones(len(y), 1, dtype=torch.bool), y=y,
                    index=torch.arange(len(y)), bag_ids=[str(i) for i in range(len(y))])


def test_loss_by_hand():
    t1 = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [5.0, 5.0]], [[0.0, 1.0], [1.0, 0.0], [9.0, -9.0]]])
    pmask = torch.tensor([[True, True, True], [True, True, False]])  # bag 1 has 2 pseudo-bags
    out = MILOutput(bag_logits=torch.tensor([[0.0, 3.0], [1.0, 1.0]]), mask=torch.ones(2, 1, dtype=torch.bool),
                    extras={"tier1_logits": t1, "pseudo_mask": pmask})
    r = DTFDLoss(DTFDLoss.Config(), 2)(out, _batch([1, 0]), TrainState())

    def ce(z, y):
        return -z[y] + math.log(sum(math.exp(v) for v in z))

    l1_b0 = (ce([2, 0], 1) + ce([0, 0], 1) + ce([5, 5], 1)) / 3
    l1_b1 = (ce([0, 1], 0) + ce([1, 0], 0)) / 2  # the empty pseudo-bag is ignored
    l1 = (l1_b0 + l1_b1) / 2
    l2 = (ce([0, 3], 1) + ce([1, 1], 0)) / 2
    assert r.parts["dtfd_tier1"].item() == pytest.approx(l1, abs=1e-6)
    assert r.parts["dtfd_tier2"].item() == pytest.approx(l2, abs=1e-6)
    assert r.total.item() == pytest.approx(l1 + l2, abs=1e-6)


def test_bind_rejects_other_poolings():
    loss = DTFDLoss(DTFDLoss.Config(), 2)
    loss.bind(SimpleNamespace(pooling=make()), None)
    with pytest.raises(ComponentError, match="dtfd"):
        loss.bind(SimpleNamespace(pooling=nn.Identity()), None)


def test_training_learns_toy_problem():
    torch.manual_seed(7)
    bags = []
    for i in range(48):
        n = 6 + i % 7
        x = torch.randn(n, 8) * 0.5
        y = i % 2
        if y:
            x[i % n, 0] += 3.0
            x[(i + 1) % n, 0] += 3.0
        bags.append(Bag(x=x, y=y))
    p = DTFDPooling(DTFDPooling.Config(reduced_dim=32, attn_hidden=16), 8, 2)
    loss = DTFDLoss(DTFDLoss.Config(), 2)
    opt = torch.optim.Adam(p.parameters(), lr=1e-2)
    full = collate_bags(bags)

    def evaluate():
        p.eval()
        with torch.no_grad():
            o = p(full.x, full.mask)
            return loss(o, full, TrainState()).total.item(), (o.bag_probs.argmax(-1) == full.y).float().mean().item()

    l0, _ = evaluate()
    for step in range(40):
        p.train()
        b = collate_bags([bags[int(i)] for i in torch.randperm(48)[:12]])
        r = loss(p(b.x, b.mask), b, TrainState(step=step))
        opt.zero_grad()
        r.total.backward()
        opt.step()
    l1, acc = evaluate()
    assert l1 < 0.7 * l0
    assert acc >= 0.9


# --------------------------------------------------------------------------- the PSMIL paper's 'dta' baseline


def _paper(k=3, d=6, **opts) -> DTFDPooling:
    cfg = dict(split="chunks", num_groups=10, reduce=False, tier1_classifier="kaiming_nobias",
               detach_distilled=False, instance_tier="tier1", attn_hidden=8)
    cfg.update(opts)
    return DTFDPooling(DTFDPooling.Config(**cfg), d, k)


def test_chunk_split_is_torch_chunk_of_the_real_instances():
    mask = torch.zeros(3, 64, dtype=torch.bool)
    mask[0, :64] = True
    mask[1, :12] = True  # torch.chunk(12 items, 10) gives 6 chunks of 2
    mask[2, :7] = True  # 7 chunks of 1
    g = chunk_split(mask, 10)
    for b in range(3):
        n = int(mask[b].sum())
        expect = torch.cat([torch.full((len(c),), j) for j, c in enumerate(torch.chunk(torch.arange(n), 10))])
        assert torch.equal(g[b, :n], expect), b
        assert (g[b, n:] == -1).all()
    assert g[0].bincount().tolist() == [7] * 9 + [1] and int(g[1].max()) == 5
    # padding between real instances is skipped: the chunks follow the real instances' order
    m = torch.tensor([[True, False, True, True, False, True]])
    assert chunk_split(m, 2).tolist() == [[0, -1, 0, 1, -1, 1]]


def test_paper_dta_forward_by_hand():
    """f_m = gated-attention pool of chunk m of the encoder features; bag = tier 2 over the f_m (not detached)."""
    torch.manual_seed(11)
    p = _paper(k=3, d=6, num_groups=2).eval()
    h, mask = torch.randn(1, 5, 6), torch.ones(1, 5, dtype=torch.bool)
    out = p(h, mask)
    chunks = torch.chunk(h[0], 2)  # sizes 3 and 2
    feats = []
    for c in chunks:
        a = torch.softmax(p.attention1(c), dim=0)
        feats.append(a @ c)
    f = torch.stack(feats)
    torch.testing.assert_close(out.extras["tier1_logits"][0], f @ p.classifier1.weight.t())
    a2 = torch.softmax(p.attention2(f), dim=0)
    torch.testing.assert_close(out.bag_logits[0], p.classifier2(a2 @ f))
    assert p.reduce is None and p.classifier1.bias is None
    # training uses the same chunks (no random split), so train and eval forwards agree
    torch.testing.assert_close(p.train()(h, mask).bag_logits, out.bag_logits)


def test_paper_dta_bag_loss_reaches_tier1_and_the_features():
    torch.manual_seed(12)
    p = _paper(k=3).train()
    h = torch.randn(1, 20, 6, requires_grad=True)
    out = p(h, torch.ones(1, 20, dtype=torch.bool))
    torch.nn.functional.cross_entropy(out.bag_logits, torch.tensor([2])).backward()
    assert p.attention1.V.weight.grad.abs().sum() > 0 and h.grad.abs().sum() > 0
    assert p.classifier1.weight.grad is None  # only the tier-1 loss trains the instance classifier


def test_paper_dta_scores_single_instances_with_the_bias_free_tier1_matrix():
    torch.manual_seed(13)
    p = _paper(k=10, d=512).eval()
    bound = math.sqrt(6 / 10)  # kaiming_uniform_ on a [d, k] parameter: fan_in = k
    w = p.classifier1.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    h = torch.randn(4, 512)
    torch.testing.assert_close(p.instance_logits(h), h @ w.t())
    one = p(h[:1].view(1, 1, 512), torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(one.bag_logits[0], h[0] @ w.t())


def test_reduce_false_with_residual_blocks_is_refused():
    with pytest.raises(ComponentError, match="num_res_blocks"):
        _paper(num_res_blocks=1)


def test_loss_tier1_on_probabilities_by_hand():
    t1 = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    out = MILOutput(bag_logits=torch.tensor([[0.0, 3.0]]), mask=torch.ones(1, 1, dtype=torch.bool),
                    extras={"tier1_logits": t1, "pseudo_mask": torch.ones(1, 2, dtype=torch.bool)})
    r = DTFDLoss(DTFDLoss.Config(tier1_ce_input="probabilities"), 2)(out, _batch([1]), TrainState())

    def ce(z, y):
        return -z[y] + math.log(sum(math.exp(v) for v in z))

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    l1 = (ce(softmax([2, 0]), 1) + ce(softmax([0, 0]), 1)) / 2  # softmax twice, as the PSMIL code does
    assert r.parts["dtfd_tier1"].item() == pytest.approx(l1, abs=1e-6)
    assert r.parts["dtfd_tier2"].item() == pytest.approx(ce([0, 3], 1), abs=1e-6)
