"""Tests of the DEMIL pooling, the ``demil`` loss and the ``mipl_candidates`` dataset."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from milzoo import registry
from milzoo.datasets.batch import Bag, MILBatch, collate_bags
from milzoo.builtin.encoders import IdentityEncoder
from milzoo.builtin.poolings import MeanPooling
from milzoo.datasets.base import BagListDataset
from milzoo.errors import ComponentError, DataError
from milzoo.model.mil import MILModel
from milzoo.components.output import MILOutput, TrainState
from milzoo_demil.datasets import CandidateSetDataset, MIPLCandidates, generate_candidate_sets
from milzoo_demil.loss import DEMILLoss
from milzoo_demil.pooling import DEMILPooling


def pooling(in_dim=4, k=3, **opts):
    return DEMILPooling(DEMILPooling.Config(**opts), in_dim, k)


def loss_fn(k=3, **opts):
    return DEMILLoss(DEMILLoss.Config(**opts), k)


def fake_output(p: list[list[float]], n: int = 1) -> MILOutput:
    """An output whose softmax(bag_logits) is exactly ``p``."""
    logits = torch.log(torch.tensor(p, dtype=torch.float32))
    b = logits.shape[0]
    return MILOutput(bag_logits=logits, mask=torch.ones(b, n, dtype=torch.bool),
                     extras={"sigmoid_attention": torch.full((b, n), 0.5)})


def fake_batch(y, index, candidates=None, n=1) -> MILBatch:
    b = len(y)
    return MILBatch(
        x=torch.zeros(b, n, 2), mask=torch.ones(b, n, dtype=torch.bool), y=torch.tensor(y),
        index=torch.tensor(index), bag_ids=[str(i) for i in index],
        candidates=None if candidates is None else torch.tensor(candidates, dtype=torch.float32),
    )


def toy_dataset(num_bags=4, k=3, d=2, with_candidates=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(num_bags):
        y = i % k
        cand = torch.zeros(k)
        cand[y] = 1
        cand[(y + 1) % k] = 1
        bags.append(Bag(x=torch.randn(3 + i % 2, d, generator=g), y=y, bag_id=f"b{i}",
                        candidates=cand if with_candidates else None))
    return BagListDataset(bags, [f"c{c}" for c in range(k)])


def model_for(k=3, d=2, **opts):
    return MILModel(IdentityEncoder(IdentityEncoder.Config(), (d,)), pooling(d, k, **opts))


# ------------------------------------------------------------------ registry


def test_registered_with_default_loss():
    assert registry.get_component("pooling", "demil") is DEMILPooling
    assert registry.get_component("loss", "demil") is DEMILLoss
    assert registry.get_component("dataset", "mipl_candidates") is MIPLCandidates
    assert DEMILPooling.default_loss == "demil"
    assert pooling().scores_instances


# ------------------------------------------------------------------ pooling


def _set_hand_weights(p: DEMILPooling):
    """in_dim 2, L 2, score MLP 2 -> 1 -> 1, k 2: every weight set by hand."""
    with torch.no_grad():
        p.attn_V.weight.copy_(torch.eye(2))
        p.attn_V.bias.zero_()
        if p.attn_U is not None:
            p.attn_U.weight.zero_()
            p.attn_U.bias.zero_()  # sigm(0) = 0.5
        p.attn_score[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        p.attn_score[0].bias.zero_()
        p.attn_score[2].weight.copy_(torch.tensor([[2.0]]))
        p.attn_score[2].bias.fill_(-0.5)
        p.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        p.classifier.bias.zero_()


H = [[0.5, 0.5], [1.0, 0.0], [-1.0, -1.0]]


def _sigm(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_sigmoid_normalised_attention_known_values():
    p = pooling(2, 2, attn_hidden=2, score_hidden=1, head="linear")
    _set_hand_weights(p)
    # s_i = 2 relu(0.5 (tanh h_i1 + tanh h_i2)) - 0.5 ; a_i = sigm(s_i)
    t5, t1 = math.tanh(0.5), math.tanh(1.0)
    s = [2 * max(0.0, 0.5 * 2 * t5) - 0.5, 2 * max(0.0, 0.5 * t1) - 0.5, -0.5]
    a = [_sigm(v) for v in s]
    norm = [v / sum(a) for v in a]
    z = [sum(norm[i] * H[i][j] for i in range(3)) for j in range(2)]
    out = p(torch.tensor([H]), torch.ones(1, 3, dtype=torch.bool))
    assert out.extras["attention_scores"][0].tolist() == pytest.approx(s, abs=1e-6)
    assert out.extras["sigmoid_attention"][0].tolist() == pytest.approx(a, abs=1e-6)
    assert out.attention[0].tolist() == pytest.approx(norm, abs=1e-6)
    assert out.attention[0].sum().item() == pytest.approx(1.0, abs=1e-6)
    # linear head with identity classifier: bag logits = z
    assert out.bag_logits[0].tolist() == pytest.approx(z, abs=1e-6)
    # not a softmax over the scores
    assert not torch.allclose(out.attention[0], torch.softmax(torch.tensor(s), 0), atol=1e-3)


def test_share_uv_uses_v_in_gate_and_sigmoid_softmax_head():
    p = pooling(2, 2, attn_hidden=2, score_hidden=1, share_uv=True)
    assert p.attn_U is None
    _set_hand_weights(p)
    # gated product with shared weights: tanh(v) * sigm(v)
    g = lambda v: math.tanh(v) * _sigm(v)  # noqa: E731
    s = [2 * max(0.0, 2 * g(0.5)) - 0.5, 2 * max(0.0, g(1.0) + g(0.0)) - 0.5,
         2 * max(0.0, 2 * g(-1.0)) - 0.5]
    out = p(torch.tensor([H]), torch.ones(1, 3, dtype=torch.bool))
    assert out.extras["attention_scores"][0].tolist() == pytest.approx(s, abs=1e-6)
    a = [_sigm(v) for v in s]
    z = [sum(a[i] * H[i][j] for i in range(3)) / sum(a) for j in range(2)]
    head = [min(max(_sigm(v), 1e-5), 1 - 1e-5) for v in z]
    assert out.bag_logits[0].tolist() == pytest.approx(head, abs=1e-6)
    # instance outputs: the same head on single instances, zero at padding
    assert out.inst_logits[0, 1].tolist() == pytest.approx([_sigm(1.0), _sigm(0.0)], abs=1e-6)
    assert torch.allclose(p.instance_logits(torch.tensor(H)), out.inst_logits[0])


def test_sigmoid_softmax_caps_confidence():
    p = pooling(2, 2, head="sigmoid_softmax")
    with torch.no_grad():
        p.classifier.weight.fill_(0)
        p.classifier.bias.copy_(torch.tensor([100.0, -100.0]))
    out = p(torch.randn(1, 3, 2), torch.ones(1, 3, dtype=torch.bool))
    hi, lo = math.exp(1 - 1e-5), math.exp(1e-5)  # sigmoids clamped to 1 - eps and eps
    assert out.bag_probs[0, 0].item() == pytest.approx(hi / (hi + lo), abs=1e-5)
    assert out.bag_probs[0, 0].item() < 0.74


def test_shapes_and_default_hidden_is_k():
    p = pooling(5, 4)
    assert p.attn_V.out_features == 4 and p.attn_U.out_features == 4
    assert pooling(5, 4, attn_hidden=16).attn_V.out_features == 16
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
    out = p(torch.randn(2, 6, 5) * mask.unsqueeze(-1), mask)
    assert out.bag_logits.shape == (2, 4)
    assert out.inst_logits.shape == (2, 6, 4)
    assert out.attention.shape == (2, 6)
    assert out.extras["sigmoid_attention"].shape == (2, 6)
    assert (out.attention[1, 2:] == 0).all() and (out.inst_logits[1, 2:] == 0).all()
    assert out.extras["sigmoid_attention"][1, 2:].abs().sum() == 0
    assert torch.allclose(out.attention.sum(1), torch.ones(2))


def test_padding_invariance_pooling_and_loss():
    torch.manual_seed(0)
    ds = toy_dataset(num_bags=5, k=3, d=4)
    model = model_for(3, 4)
    model.eval()
    bags = [ds[i] for i in range(5)]
    batch = collate_bags(bags)
    assert batch.mask.sum(1).tolist() != [batch.mask.shape[1]] * 5  # really padded
    out = model(batch)
    lf = loss_fn(3, entropy_weight=0.1)
    state = TrainState(training=False)
    total = lf(out, batch, state).total
    per_bag = []
    for b in range(5):
        one = collate_bags([bags[b]])
        o1 = model(one)
        n = len(bags[b])
        assert torch.allclose(out.bag_logits[b], o1.bag_logits[0], atol=1e-6)
        assert torch.allclose(out.attention[b, :n], o1.attention[0], atol=1e-6)
        assert torch.allclose(out.inst_logits[b, :n], o1.inst_logits[0], atol=1e-6)
        assert torch.allclose(out.extras["sigmoid_attention"][b, :n], o1.extras["sigmoid_attention"][0], atol=1e-6)
        per_bag.append(lf(o1, one, state).total)
    assert total.item() == pytest.approx(torch.stack(per_bag).mean().item(), abs=1e-6)


def test_permutation_invariance():
    p = pooling(4, 3)
    h = torch.randn(1, 7, 4)
    perm = torch.randperm(7)
    m = torch.ones(1, 7, dtype=torch.bool)
    a, b = p(h, m), p(h[:, perm], m)
    assert torch.allclose(a.bag_logits, b.bag_logits, atol=1e-6)
    assert torch.allclose(a.attention[0, perm], b.attention[0], atol=1e-6)


# ------------------------------------------------------------------ loss


def test_entropy_regulariser_value():
    lf = loss_fn(2, entropy_weight=0.5)
    # a = [0.5, 0.25] (+ padding) -> sum -a ln a = 0.5 ln 2 + 0.25 ln 4 = ln 2
    out = MILOutput(bag_logits=torch.zeros(1, 2), mask=torch.tensor([[True, True, False]]),
                    extras={"sigmoid_attention": torch.tensor([[0.5, 0.25, 0.0]])})
    res = lf(out, fake_batch([1], [-1], n=3), TrainState())
    assert res.parts["demil_entropy"].item() == pytest.approx(0.5 * math.log(2), abs=1e-6)
    assert res.parts["demil_ce"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert res.total.item() == pytest.approx(math.log(2) * 1.5, abs=1e-6)


def test_singleton_candidates_reduce_to_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(4, 3)
    y = [0, 2, 1, 2]
    out = MILOutput(bag_logits=logits, mask=torch.ones(4, 1, dtype=torch.bool))
    ce = F.cross_entropy(logits, torch.tensor(y)).item()
    bag_ce = registry.get_component("loss", "bag_ce")
    ref = bag_ce(bag_ce.Config(), 3)(out, fake_batch(y, [0, 1, 2, 3]), TrainState()).total.item()
    assert ref == pytest.approx(ce, abs=1e-6)
    # no candidates (standard MIL), and explicit |S| = 1 candidates, with bound state
    for cands in (None, F.one_hot(torch.tensor(y), 3).tolist()):
        lf = loss_fn(3, entropy_weight=0.0)
        ds = BagListDataset([Bag(x=torch.zeros(1, 2), y=c) for c in y], ["a", "b", "c"])
        lf.bind(model_for(3, 2), ds)
        for epoch in range(3):  # the update keeps one-hot labels one-hot
            state = TrainState(epoch=epoch, num_epochs=3)
            res = lf(out, fake_batch(y, [0, 1, 2, 3], cands), state)
            assert res.total.item() == pytest.approx(ce, abs=1e-6)
            lf.end_epoch(state)
        assert torch.allclose(lf.soft_labels, F.one_hot(torch.tensor(y), 3).float())


def test_soft_label_update_two_epochs_hand_computed():
    """k = 3, S = {0, 2}, T = 4: lam = 1, 3/4, 1/2 after epochs 1, 2, 3."""
    lf = loss_fn(3, entropy_weight=0.0)
    bags = [Bag(x=torch.zeros(1, 2), y=0, candidates=torch.tensor([1.0, 0.0, 1.0]))]
    lf.bind(model_for(3, 2), BagListDataset(bags, ["a", "b", "c"]))
    assert lf.soft_labels[0].tolist() == pytest.approx([0.5, 0.0, 0.5])
    cands = [[1.0, 0.0, 1.0]]

    def epoch(e, p):
        state = TrainState(epoch=e, num_epochs=4)
        res = lf(fake_output([p]), fake_batch([0], [0], cands), state)
        lf.end_epoch(state)
        return res

    # epoch 1: loss uses s = [.5, 0, .5]; p~ = [.4, 0, .6]; lam = 1 -> s unchanged
    res = epoch(0, [0.2, 0.5, 0.3])
    assert res.parts["demil_ce"].item() == pytest.approx(-(0.5 * math.log(0.2) + 0.5 * math.log(0.3)), abs=1e-5)
    assert lf.soft_labels[0].tolist() == pytest.approx([0.5, 0.0, 0.5], abs=1e-6)
    # epoch 2: p~ = [2/3, 0, 1/3]; lam = 3/4 -> s = [.5*.75 + 2/3*.25, 0, .5*.75 + 1/3*.25]
    res = epoch(1, [0.6, 0.1, 0.3])
    assert res.parts["demil_ce"].item() == pytest.approx(-(0.5 * math.log(0.6) + 0.5 * math.log(0.3)), abs=1e-5)
    s2 = [0.375 + 1 / 6, 0.0, 0.375 + 1 / 12]
    assert lf.soft_labels[0].tolist() == pytest.approx(s2, abs=1e-6)
    # epoch 3: the loss now uses s2; p~ = [.5, 0, .5]; lam = 1/2
    res = epoch(2, [0.1, 0.8, 0.1])
    assert res.parts["demil_ce"].item() == pytest.approx(-(s2[0] * math.log(0.1) + s2[2] * math.log(0.1)), abs=1e-5)
    assert lf.soft_labels[0].tolist() == pytest.approx([0.5 * s2[0] + 0.25, 0.0, 0.5 * s2[2] + 0.25], abs=1e-6)
    assert lf.soft_labels[0].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_momentum_schedule():
    assert DEMILLoss.momentum(0, 100) == 1.0
    assert DEMILLoss.momentum(99, 100) == pytest.approx(0.01)
    assert DEMILLoss.momentum(1, 4) == pytest.approx(0.75)
    assert DEMILLoss.momentum(10, 4) == 0.0


def test_no_update_in_eval_and_lazy_init():
    lf = loss_fn(3, entropy_weight=0.0)
    # a dataset the loss cannot read cheaply -> rows are initialised on first training sight
    ds = toy_dataset(num_bags=2)
    sub = ds.subset([1])
    lf.bind(model_for(3, 2), sub)
    lf.initialised.zero_()
    lf.soft_labels.zero_()
    cands = [[0.0, 1.0, 1.0]]
    lf(fake_output([[0.2, 0.2, 0.6]]), fake_batch([1], [1], cands), TrainState(training=False))
    assert not lf.initialised.any() and lf.pending_count.sum() == 0
    lf(fake_output([[0.2, 0.2, 0.6]]), fake_batch([1], [1], cands), TrainState(epoch=1, num_epochs=2))
    assert lf.initialised.tolist() == [False, True]
    assert lf.pending_count.tolist() == [0.0, 1.0]
    lf.end_epoch(TrainState(epoch=1, num_epochs=2))  # lam = 1/2, p~ = [0, .25, .75]
    assert lf.soft_labels[1].tolist() == pytest.approx([0.0, 0.375, 0.625])
    assert lf.soft_labels[0].tolist() == [0.0, 0.0, 0.0]


def test_end_epoch_syncs_ranks_under_distributed(monkeypatch):
    """Two simulated ranks, each training on a different lazily initialised bag, end the
    epoch with identical soft labels (all_reduce replaced by a sum with the other rank)."""
    import milzoo_demil.loss as loss_mod

    ranks = []
    for rank in range(2):
        lf = loss_fn(3, entropy_weight=0.0)
        lf.bind(model_for(3, 2), toy_dataset(num_bags=2).subset([0, 1]))
        lf.initialised.zero_()
        lf.soft_labels.zero_()
        cands = [[1.0, 1.0, 0.0]] if rank == 0 else [[0.0, 1.0, 1.0]]
        p = [[0.6, 0.2, 0.2]] if rank == 0 else [[0.2, 0.2, 0.6]]
        lf(fake_output(p), fake_batch([rank], [rank], cands), TrainState(epoch=1, num_epochs=2))
        ranks.append(lf)

    def contributions(lf):
        init = lf.initialised.float()
        return [lf.pending_sum.clone(), lf.pending_count.clone(), init, lf.soft_labels * init.unsqueeze(-1)]

    before = [contributions(lf) for lf in ranks]
    monkeypatch.setattr(loss_mod, "_dist_ready", lambda: True)
    for me, lf in enumerate(ranks):
        calls = iter(before[1 - me])
        monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, calls=calls: t.add_(next(calls)))
        lf.end_epoch(TrainState(epoch=1, num_epochs=2))  # lam = 1/2
    expected = torch.tensor([[0.5 * 0.5 + 0.5 * 0.75, 0.5 * 0.5 + 0.5 * 0.25, 0.0],
                             [0.0, 0.5 * 0.5 + 0.5 * 0.25, 0.5 * 0.5 + 0.5 * 0.75]])
    for lf in ranks:
        assert torch.allclose(lf.soft_labels, expected, atol=1e-6)
        assert lf.initialised.all() and lf.pending_count.sum() == 0


def test_state_roundtrip_safetensors_and_load_before_bind():
    lf = loss_fn(3)
    lf.bind(model_for(3, 2), toy_dataset(num_bags=4))
    lf.soft_labels[2] = torch.tensor([0.1, 0.2, 0.7])
    blob = st_save(dict(lf.state_dict()))
    fresh = loss_fn(3)
    fresh.load_state_dict(st_load(blob))
    assert torch.equal(fresh.soft_labels, lf.soft_labels)
    assert torch.equal(fresh.initialised, lf.initialised)
    # unbound (empty) state round-trips as well
    loss_fn(3).load_state_dict(st_load(st_save(dict(loss_fn(3).state_dict()))))


def test_bind_checks():
    ds = toy_dataset()
    with pytest.raises(ComponentError, match="sigmoid attention"):
        mean = MILModel(IdentityEncoder(IdentityEncoder.Config(), (2,)), MeanPooling(MeanPooling.Config(), 2, 3))
        loss_fn(3).bind(mean, ds)
    loss_fn(3, entropy_weight=0.0).bind(mean, ds)  # disambiguation alone works with any pooling
    with pytest.raises(ComponentError, match="classes"):
        loss_fn(4).bind(model_for(3, 2), ds)
    bad = BagListDataset([Bag(x=torch.zeros(1, 2), y=0, candidates=torch.zeros(3))], ["a", "b", "c"])
    with pytest.raises(ComponentError, match="empty candidate"):
        loss_fn(3).bind(model_for(3, 2), bad)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for opts in ({}, {"share_uv": True, "head": "linear"}):
        model = model_for(3, 4, **opts)
        model.train()
        ds = toy_dataset(num_bags=3, d=4)
        lf = loss_fn(3)
        lf.bind(model, ds)
        batch = collate_bags([ds[i] for i in range(3)])
        lf(model(batch), batch, TrainState()).total.backward()
        for name, prm in model.named_parameters():
            assert prm.grad is not None and prm.grad.abs().sum() > 0, name


# ------------------------------------------------------------------ training sanity


def _mipl_toy(num_bags, k=3, d=6, seed=0):
    """Bags of 4-6 noise instances, two of which carry the prototype of the bag's class.

    Candidate sets: the label plus one random other label (MIPL r = 1)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.eye(d)[:k] * 3.0
    bags = []
    for i in range(num_bags):
        y = i % k
        x = torch.randn(6, d, generator=g) * 0.5
        x[:2] += protos[y]
        bags.append(Bag(x=x[: 4 + i % 3], y=y, bag_id=str(i)))
    ds = BagListDataset(bags, [str(c) for c in range(k)])
    return CandidateSetDataset(ds, generate_candidate_sets(ds.labels, k, 1, seed))


@pytest.mark.parametrize("head", ["linear", "sigmoid_softmax"])
def test_training_with_candidate_sets_disambiguates(head):
    torch.manual_seed(0)
    T, k = 15, 3
    ds = _mipl_toy(48, k)
    model = model_for(k, 6, head=head)
    lf = loss_fn(k, entropy_weight=1e-3)
    lf.bind(model, ds)
    assert lf.initialised.all()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    full = collate_bags([ds[i] for i in range(len(ds))])
    acc0 = (model.predict(full).bag_probs.argmax(-1) == full.y).float().mean().item()
    losses = []
    for epoch in range(T):
        model.train()
        state = TrainState(epoch=epoch, num_epochs=T)
        order = torch.randperm(len(ds)).tolist()
        total = 0.0
        for s in range(0, len(order), 8):
            batch = collate_bags([ds[i] for i in order[s : s + 8]])
            assert batch.candidates is not None
            res = lf(model(batch), batch, state)
            opt.zero_grad()
            res.total.backward()
            opt.step()
            total += res.parts["demil_ce"].item()
        lf.end_epoch(state)
        losses.append(total)
    acc = (model.predict(full).bag_probs.argmax(-1) == full.y).float().mean().item()
    assert acc >= 0.9 and acc > acc0 + 0.2
    assert losses[-1] < losses[0]
    # disambiguation: the soft labels moved onto the true labels, never outside the candidate sets
    labels = torch.as_tensor(ds.labels)
    assert (lf.soft_labels.argmax(-1) == labels).float().mean() >= 0.9
    # mass on the true label, 0.5 at the start; the sigmoid_softmax head caps p (docs/methods.md 5.6.2)
    true_mass = lf.soft_labels.gather(1, labels[:, None]).mean().item()
    assert true_mass > (0.8 if head == "linear" else 0.6)
    assert (lf.soft_labels * (1 - torch.as_tensor(ds.candidate_sets))).abs().sum() == 0
    assert torch.allclose(lf.soft_labels.sum(-1), torch.ones(len(ds)))


# ------------------------------------------------------------------ dataset


def test_generate_candidate_sets():
    labels = np.array([0, 1, 2, 3, 4] * 4)
    sets = generate_candidate_sets(labels, 5, 2, 7)
    assert (sets.sum(1) == 3).all() and (sets[np.arange(20), labels] == 1).all()
    assert np.array_equal(sets, generate_candidate_sets(labels, 5, 2, 7))
    assert not np.array_equal(sets, generate_candidate_sets(labels, 5, 2, 8))
    with pytest.raises(DataError, match="num_false"):
        generate_candidate_sets(labels, 5, 5, 0)


def _classic_csv(tmp_path):
    rows = []
    for bag in range(6):
        for inst in range(2):
            rows.append(f"{bag % 3},{bag},{bag + 0.1 * inst},{inst}")
    path = tmp_path / "toy.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_mipl_candidates_source(tmp_path):
    cfg = MIPLCandidates.Config(base={"name": "classic", "path": _classic_csv(tmp_path)}, num_false=1, seed=3)
    splits = MIPLCandidates(cfg).load()
    ds = splits["all"]
    assert ds.num_classes == 3 and len(ds) == 6
    bag = ds[4]
    assert bag.index == 4 and bag.candidates.shape == (3,)
    assert bag.candidates[bag.y] == 1 and bag.candidates.sum() == 2
    assert torch.equal(collate_bags([ds[0], ds[1]]).candidates, torch.as_tensor(ds.candidate_sets[:2]))
    again = MIPLCandidates(cfg).load()["all"]
    assert np.array_equal(again.candidate_sets, ds.candidate_sets)
    # the loss initialises from the wrapper even through a fold subset
    lf = loss_fn(3)
    lf.bind(model_for(3, 2), ds.subset([1, 3]))
    assert lf.initialised.all()
    assert torch.allclose(lf.soft_labels * 2, torch.as_tensor(ds.candidate_sets))


def test_mipl_candidates_from_csv_and_config_errors(tmp_path):
    base = {"name": "classic", "path": _classic_csv(tmp_path)}
    cands = tmp_path / "cands.csv"
    cands.write_text("".join(f"{b},{b % 3},{(b + 2) % 3}\n" for b in range(6)))
    ds = MIPLCandidates(MIPLCandidates.Config(base=base, path=str(cands))).load()["all"]
    assert ds[5].candidates.tolist() == [0.0, 1.0, 1.0]
    cands.write_text("".join(f"{b},{(b + 1) % 3}\n" for b in range(6)))
    with pytest.raises(DataError, match="lacks its label"):
        MIPLCandidates(MIPLCandidates.Config(base=base, path=str(cands))).load()
    with pytest.raises(ValueError, match="not both"):
        MIPLCandidates.Config(base=base, path=str(cands), num_false=1)
    with pytest.raises(ValueError, match="unknown dataset"):
        MIPLCandidates.Config(base={"name": "nope"})
    with pytest.raises(ValueError, match="options"):
        MIPLCandidates.Config(base={"name": "classic", "bogus": 1})


# ------------------------------------------------------------- the PSMIL paper's DEMIL baseline ("mha")

PAPER = {"head": "linear", "classifier": "kaiming_nobias", "detach_normaliser": True}


def test_paper_form_defaults_and_classifier():
    cfg = DEMILPooling.Config()
    assert cfg.classifier == "linear" and cfg.detach_normaliser is False
    torch.manual_seed(0)
    p = pooling(512, 10, **PAPER)
    w = p.classifier.weight
    assert p.classifier.bias is None and w.shape == (10, 512)
    bound = math.sqrt(6 / 10)  # 0.7746: kaiming_uniform_ of the official [d, k] parameter (fan_in = k)
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert p.attn_V.out_features == 10 and p.attn_U is not None  # V, U: d -> k, separate (as 'mha')
    h = torch.randn(1, 6, 512)
    out = p(h, torch.ones(1, 6, dtype=torch.bool))
    torch.testing.assert_close(out.bag_logits, out.extras["bag_feature"] @ w.t())  # z W, no bias
    with pytest.raises(ComponentError, match="head"):
        pooling(4, 3, classifier="kaiming_nobias")  # with the sigmoid_softmax head


def test_detached_normaliser_same_forward_other_gradient_by_hand():
    """z = sum_i a_i h_i / S: in the graph dz/da_j = (h_j - z) / S; with S detached, h_j / S.
    With identical instances the first is exactly 0 (z does not depend on the attention)."""
    torch.manual_seed(0)
    h = torch.ones(1, 3, 2) * torch.tensor([2.0, -1.0])
    m = torch.ones(1, 3, dtype=torch.bool)
    grads = {}
    for detach in (False, True):
        torch.manual_seed(4)
        p = pooling(2, 2, head="linear", detach_normaliser=detach)
        out = p(h, m)
        out.bag_logits.sum().backward()
        grads[detach] = p.attn_score[2].bias.grad.clone()
        a = out.extras["sigmoid_attention"][0].detach()
        S = a.sum()
        # d(sum of logits)/d b_score = sum_j d/da_j * a_j (1 - a_j), and d/da_j = (C h_j).sum() / S when detached
        ch = (h[0] @ p.classifier.weight.T).sum(-1).detach()  # C h_j: the bias does not depend on z
        expect = (ch / S * a * (1 - a)).sum() if detach else torch.tensor(0.0)
        torch.testing.assert_close(grads[detach][0], expect, atol=1e-6, rtol=1e-5)
    assert grads[True].abs().item() > 1e-3
    torch.manual_seed(4)
    pa = pooling(2, 2, head="linear")
    torch.manual_seed(4)
    pb = pooling(2, 2, head="linear", detach_normaliser=True)
    x = torch.randn(2, 5, 2)
    torch.testing.assert_close(pa(x, torch.ones(2, 5, dtype=torch.bool)).bag_logits,
                               pb(x, torch.ones(2, 5, dtype=torch.bool)).bag_logits)


def test_paper_form_batched_with_padding_equals_each_bag_alone_gradients_too():
    torch.manual_seed(1)
    bags = [Bag(torch.randn(n, 4), n % 3) for n in (5, 1, 3)]
    batch = collate_bags(bags)
    torch.manual_seed(2)
    p = pooling(4, 3, **PAPER)
    out = p(batch.x, batch.mask)
    out.bag_logits.sum().backward()
    g_batched = [q.grad.clone() for q in p.parameters()]
    p.zero_grad()
    for i, bag in enumerate(bags):
        one = p(bag.x[None], torch.ones(1, len(bag), dtype=torch.bool))
        torch.testing.assert_close(out.bag_logits[i], one.bag_logits[0].detach())
        one.bag_logits.sum().backward()
    for gb, q in zip(g_batched, p.parameters()):
        torch.testing.assert_close(gb, q.grad)


@pytest.mark.parametrize("detach", [False, True])
def test_underflowed_attention_stays_finite_and_matches_float64(detach):
    """Scores near -200 make every sigmoid a_i exactly 0 in fp32; the old a / sum(a) then gave 1/S = inf in the
    backward and a NaN loss (the PSMIL paper's DEMIL baseline at FMNIST reduced scale, epoch 4). Such a bag takes
    the log-sigmoid form: forward and gradients equal the float64 model's (where the direct division is exact),
    padding included; healthy bags are computed exactly as before (the next test)."""
    torch.manual_seed(3)
    p = pooling(4, 3, head="linear", detach_normaliser=detach)
    with torch.no_grad():
        p.attn_score[2].bias.fill_(-200.0)
    h = torch.randn(3, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False  # padded
    h64 = h.double().requires_grad_(True)
    h = h.clone().requires_grad_(True)
    p64 = copy.deepcopy(p).double()
    out, out64 = p(h, mask), p64(h64, mask)
    assert torch.sigmoid(out.extras["attention_scores"][mask]).max().item() == 0.0  # underflowed in fp32
    torch.testing.assert_close(out.attention, out64.attention.float(), atol=1e-5, rtol=1e-4)
    assert (out.attention[2, 3:] == 0).all()
    (out.bag_logits.square().sum()).backward()
    (out64.bag_logits.square().sum()).backward()
    for q, q64 in zip(p.parameters(), p64.parameters()):
        assert torch.isfinite(q.grad).all()
        # fp32 log-sigmoids near -200 carry about 200 * 6e-8 of absolute error: hence 1e-4, not 1e-6
        torch.testing.assert_close(q.grad, q64.grad.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(h.grad, h64.grad.float(), atol=1e-4, rtol=1e-4)


def test_healthy_bags_keep_the_direct_division_bit_for_bit():
    torch.manual_seed(5)
    p = pooling(4, 3, head="linear", detach_normaliser=True)
    h = torch.randn(2, 6, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    out = p(h, mask)
    raw = out.extras["sigmoid_attention"]
    assert torch.equal(out.attention, raw / raw.sum(1, keepdim=True))


class _BooleanStateReference:
    """The per-step state handling as written before it became shape-static (boolean selections, a branch on
    ``fresh.any()``): the reference the scatter form must equal."""

    def __init__(self, lf: DEMILLoss):
        self.soft = lf.soft_labels.clone()
        self.init = lf.initialised.clone()
        self.sum = lf.pending_sum.clone()
        self.count = lf.pending_count.clone()

    def step(self, index: torch.Tensor, cand: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        uniform = cand / cand.sum(-1, keepdim=True)
        n = self.soft.shape[0]
        valid = (index >= 0) & (index < n)
        slots = index[valid]
        uni_v = uniform[valid]
        fresh = ~self.init[slots]
        if bool(fresh.any()):
            self.soft[slots[fresh]] = uni_v[fresh]
            self.init[slots[fresh]] = True
        stored = torch.where(self.init[slots].unsqueeze(-1), self.soft[slots], uni_v)
        targets = uniform.clone()
        targets[valid] = stored
        masked = p * cand
        total = masked.sum(-1, keepdim=True)
        p_tilde = torch.where(total > 0, masked / total.clamp_min(1e-30), uniform)[valid]
        self.sum.index_add_(0, slots, p_tilde)
        self.count.index_add_(0, slots, torch.ones_like(slots, dtype=self.count.dtype))
        return targets


def test_shape_static_state_equals_the_boolean_form():
    """Lazily initialised rows, a bag twice in one batch, rows without state (index -1 and past the table):
    the targets (through the loss), the soft labels, the flags and the epoch's records equal the boolean form's,
    over several steps and an epoch end; and no step reads anything back."""
    from milzoo.testing.dispatch import StepCounter

    lf = loss_fn(3, entropy_weight=0.0)
    lf.bind(model_for(3, 2), toy_dataset(num_bags=5).subset([0, 1, 2, 3, 4]))
    lf.initialised.zero_()
    lf.soft_labels.zero_()
    lf._sets_checked = True  # the per-step check of candidate sets is the only read back left
    ref = _BooleanStateReference(lf)
    g = torch.Generator().manual_seed(0)
    steps = [[0, 2, 2], [-1, 1, 5], [2, 0, 4], [3, 3, -1]]
    for e in range(2):
        for index in steps:
            b = len(index)
            cand = (torch.rand(b, 3, generator=g) > 0.4).float()
            cand[:, 0] = 1.0
            p = torch.softmax(torch.randn(b, 3, generator=g), -1)
            for i, j in enumerate(index):  # the same bag has the same candidate set wherever it appears
                cand[i] = cand[index.index(j)]
            want = ref.step(torch.tensor(index), cand, p)
            state = TrainState(epoch=e, num_epochs=2)
            out, batch = fake_output(p.tolist()), fake_batch([0] * b, index, cand.tolist())
            with StepCounter() as counter:
                res = lf(out, batch, state)
            assert not counter.syncs, counter.syncs
            ce = -(want * torch.log(p)).sum(-1).mean()
            assert res.parts["demil_ce"].item() == pytest.approx(ce.item(), rel=1e-6)
            torch.testing.assert_close(lf.soft_labels, ref.soft, rtol=0, atol=0)
            assert torch.equal(lf.initialised, ref.init)
            torch.testing.assert_close(lf.pending_sum, ref.sum, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(lf.pending_count, ref.count, rtol=0, atol=0)
        lf.end_epoch(TrainState(epoch=e, num_epochs=2))
        seen = ref.count > 0
        lam = DEMILLoss.momentum(e, 2)
        ref.soft[seen] = lam * ref.soft[seen] + (1 - lam) * ref.sum[seen] / ref.count[seen].unsqueeze(-1)
        ref.sum.zero_()
        ref.count.zero_()
        torch.testing.assert_close(lf.soft_labels, ref.soft, rtol=1e-6, atol=1e-7)


def test_candidate_sets_checked_at_bind_are_not_checked_again_per_step():
    """bind() checks every candidate set of a dataset it can read cheaply; the steps then read nothing back.
    A dataset it cannot read cheaply keeps the per-step check (which refuses an empty set)."""
    from milzoo.testing.dispatch import StepCounter

    lf = loss_fn(3, entropy_weight=0.0)
    lf.bind(model_for(3, 2), toy_dataset(num_bags=3))
    assert lf._sets_checked
    out, batch = fake_output([[0.2, 0.3, 0.5]]), fake_batch([0], [0], [[1.0, 1.0, 0.0]])
    with StepCounter() as counter:
        lf(out, batch, TrainState(epoch=0, num_epochs=2))
    assert not counter.syncs, counter.syncs
    lf._sets_checked = False  # as after bind() on a dataset whose sets come with each bag
    with pytest.raises(ComponentError, match="empty candidate"):
        lf(out, fake_batch([0], [0], [[0.0, 0.0, 0.0]]), TrainState(epoch=0, num_epochs=2))
