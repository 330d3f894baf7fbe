"""The survival losses against references: the official discrete-time NLL's formula, hand-worked values, lifelines'
Cox partial likelihood; binding rules; the contract suite."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from milzoo.builtin.encoders import MLPEncoder
from milzoo.builtin.poolings import MeanPooling
from milzoo.components import MILOutput, TrainState
from milzoo.datasets import Bag, BagListDataset, collate_bags
from milzoo.errors import ComponentError
from milzoo.model import MILModel
from milzoo.testing import parametrize_with_checks

from milzoo_survival.losses import CoxLoss, DiscreteSurvivalNLL, cox_nll, discrete_survival_nll
from milzoo_survival.metrics import cox_partial_nll
from milzoo_survival.task import SurvivalTask


# --------------------------------------------------------------------------- references
def reference_nll(hazards, bin_y, censorship, alpha, eps=1e-7):
    """The discrete-time NLL as MCAT/PORPOISE's ``nll_loss`` computes it, written from its definition: hazards
    ``[B, k]`` (probabilities), the true bin ``[B]``, censorship ``c`` (1 = censored), mean over the batch."""
    S = torch.cumprod(1 - hazards, dim=1)
    S_pad = torch.cat([torch.ones(len(S), 1, dtype=S.dtype), S], dim=1)  # S(-1) = 1
    y = bin_y.view(-1, 1)
    c = censorship.view(-1, 1).to(S.dtype)
    s_before = torch.gather(S_pad, 1, y).clamp(min=eps)
    h_at = torch.gather(hazards, 1, y).clamp(min=eps)
    s_at = torch.gather(S_pad, 1, y + 1).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(s_before) + torch.log(h_at))
    censored = -c * torch.log(s_at)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


@pytest.mark.parametrize("alpha", [0.0, 0.15, 0.5, 1.0])
def test_discrete_nll_matches_the_official_formula(alpha):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64) * 1.5
    bins = torch.tensor([0, 1, 2, 3, 3, 0, 2])
    event = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    ours = discrete_survival_nll(logits, bins, event, alpha).mean()
    ref = reference_nll(torch.sigmoid(logits), bins, 1 - event, alpha)  # the official code takes c = 1 - event
    assert torch.allclose(ours, ref, atol=1e-12, rtol=1e-10)


def test_discrete_nll_hand_worked_values():
    z = torch.zeros(2, 4, dtype=torch.float64)  # every hazard 1/2
    # an event in bin 2: alive through bins 0 and 1 (1/4), dies in bin 2 (1/2) -> -log(1/8)
    # a censoring in bin 1: alive at the end of bin 1 -> -log(1/4)
    per_bag = discrete_survival_nll(z, torch.tensor([2, 1]), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(per_bag, torch.tensor([3 * math.log(2), 2 * math.log(2)], dtype=torch.float64))
    # alpha = 1 keeps only the uncensored term
    per_bag = discrete_survival_nll(z, torch.tensor([2, 1]), torch.tensor([1.0, 0.0], dtype=torch.float64), 1.0)
    assert torch.allclose(per_bag, torch.tensor([3 * math.log(2), 0.0], dtype=torch.float64))


def test_discrete_nll_stays_finite_where_the_official_clamp_would_flatten_it():
    z = torch.tensor([[40.0, 40.0, -40.0, -40.0]], requires_grad=True)
    loss = discrete_survival_nll(z, torch.tensor([3]), torch.tensor([1.0])).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def reference_cox(risk, time, event):
    """Breslow partial likelihood by two plain loops, divided by the number of events."""
    total, n_events = 0.0, 0
    for i in range(len(time)):
        if event[i]:
            den = sum(math.exp(risk[j]) for j in range(len(time)) if time[j] >= time[i])
            total += risk[i] - math.log(den)
            n_events += 1
    return -total / n_events


def test_cox_hand_worked_example_with_ties():
    risk = torch.tensor([0.5, -0.2, 0.1, 0.3], dtype=torch.float64)
    time = torch.tensor([1.0, 2.0, 2.0, 3.0], dtype=torch.float64)
    event = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    # events at t=1 (risk set: all four), t=2 (bags 1, 2, 3: the tie stays in, Breslow), t=3 (bag 3 alone: 0)
    want = -((0.5 - math.log(sum(math.exp(r) for r in (0.5, -0.2, 0.1, 0.3))))
             + (-0.2 - math.log(sum(math.exp(r) for r in (-0.2, 0.1, 0.3))))
             + 0.0) / 3
    assert math.isclose(float(cox_nll(risk, time, event)), want, rel_tol=1e-12)
    assert math.isclose(reference_cox(risk.tolist(), time.tolist(), event.tolist()), want, rel_tol=1e-12)
    assert math.isclose(cox_partial_nll(time.numpy(), event.numpy(), risk.numpy()), want, rel_tol=1e-12)


def test_cox_matches_random_references():
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        time = rng.integers(1, 8, size=n).astype(float)  # many ties
        event = (rng.random(n) < 0.6).astype(float)
        event[0] = 1.0
        risk = rng.normal(size=n)
        want = reference_cox(risk.tolist(), time.tolist(), event.tolist())
        got = float(cox_nll(torch.tensor(risk), torch.tensor(time), torch.tensor(event)))
        assert math.isclose(got, want, rel_tol=1e-10)
        assert math.isclose(cox_partial_nll(time, event, risk), want, rel_tol=1e-10)


def test_cox_equals_lifelines_partial_likelihood():
    import lifelines  # milzoo-survival[test]
    import pandas as pd

    rng = np.random.default_rng(11)
    n = 60
    x = rng.normal(size=n)
    time = rng.exponential(1.0 / np.exp(0.7 * x))  # continuous: no ties, so lifelines' Efron equals Breslow
    event = (rng.random(n) < 0.7).astype(float)
    cph = lifelines.CoxPHFitter().fit(pd.DataFrame({"x": x, "T": time, "E": event}), "T", "E")
    beta = float(cph.params_["x"])
    ours = float(cox_nll(torch.tensor(beta * x), torch.tensor(time), torch.tensor(event)))
    assert math.isclose(ours * event.sum(), -cph.log_likelihood_, rel_tol=1e-6)
    # and the fitted beta is where our loss is smallest
    for d in (-0.05, 0.05):
        other = float(cox_nll(torch.tensor((beta + d) * x), torch.tensor(time), torch.tensor(event)))
        assert other > ours


def test_cox_batch_without_events_is_zero_with_a_graph():
    risk = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    loss = cox_nll(risk, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(risk.grad, torch.zeros(3))


def test_cox_declares_its_minimum_batch():
    assert CoxLoss.min_bags_per_step == 8
    assert getattr(DiscreteSurvivalNLL, "min_bags_per_step", 1) == 1


# --------------------------------------------------------------------------- binding
def _model(task=None, k=4):
    torch.manual_seed(0)
    enc = MLPEncoder(MLPEncoder.Config(dims=[4]), (3,))
    out_dim = task.out_dim(2) if task is not None else k
    return MILModel(enc, MeanPooling(MeanPooling.Config(), enc.out_dim, out_dim), task=task)


def _dataset(n=10, seed=0):
    g = np.random.default_rng(seed)
    bags = [Bag(x=torch.randn(3, 3), y=(float(1 + g.exponential(5)), float(i % 3 != 2)), bag_id=str(i))
            for i in range(n)]
    return BagListDataset(bags, ["time", "event"])


def test_bind_refuses_a_classification_model():
    with pytest.raises(ComponentError, match=r"needs \[task\] name = \"survival\""):
        DiscreteSurvivalNLL(DiscreteSurvivalNLL.Config(), 2).bind(_model(None, 2), _dataset())
    with pytest.raises(ComponentError, match="survival"):
        CoxLoss(CoxLoss.Config(), 2).bind(_model(None, 2), _dataset())


def test_bind_refuses_the_other_head():
    cox_task = SurvivalTask(SurvivalTask.Config(head="cox"))
    with pytest.raises(ComponentError, match="Use the 'cox' loss"):
        DiscreteSurvivalNLL(DiscreteSurvivalNLL.Config(), 2).bind(_model(cox_task), _dataset())
    discrete_task = SurvivalTask(SurvivalTask.Config())
    with pytest.raises(ComponentError, match="Use the 'surv_nll' loss"):
        CoxLoss(CoxLoss.Config(), 2).bind(_model(discrete_task), _dataset())


def test_losses_train_the_bound_model_and_keep_no_task_state():
    ds = _dataset()
    for head, cls in (("discrete", DiscreteSurvivalNLL), ("cox", CoxLoss)):
        task = SurvivalTask(SurvivalTask.Config(head=head))
        task.fit(ds)
        model = _model(task)
        loss = cls(cls.Config(), 2)
        loss.bind(model, ds)
        assert dict(loss.state_dict()) == {}  # the task's buffers belong to the model, not the loss
        batch = collate_bags([ds[i] for i in range(len(ds))])
        res = loss(model(batch), batch, TrainState(epoch=1, num_epochs=1, step=1))
        res.total.backward()
        assert torch.isfinite(res.total)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_surv_nll_uses_the_fitted_bins():
    ds = _dataset(12)
    task = SurvivalTask(SurvivalTask.Config(bins=3))
    task.fit(ds)
    model = _model(task)
    loss = DiscreteSurvivalNLL(DiscreteSurvivalNLL.Config(alpha=0.3), 2)
    loss.bind(model, ds)
    batch = collate_bags([ds[i] for i in range(len(ds))])
    out = model(batch)
    bins = torch.as_tensor(np.searchsorted(task.edges[1:-1].numpy(), ds.labels[:, 0], side="right"))
    ref = reference_nll(torch.sigmoid(out.bag_logits.double()), bins, torch.as_tensor(1 - ds.labels[:, 1]), 0.3)
    got = loss(out, batch, TrainState(epoch=1, num_epochs=1, step=1)).total
    assert torch.allclose(got.double(), ref, atol=1e-6)


def test_extra_logits_average_a_second_stream():
    ds = _dataset()
    task = SurvivalTask(SurvivalTask.Config())
    task.fit(ds)
    model = _model(task)
    batch = collate_bags([ds[i] for i in range(len(ds))])
    out = model(batch)
    second = torch.zeros_like(out.bag_logits)
    out2 = MILOutput(bag_logits=out.bag_logits, mask=out.mask, extras={"other": second})
    state = TrainState(epoch=1, num_epochs=1, step=1)
    plain = DiscreteSurvivalNLL(DiscreteSurvivalNLL.Config(), 2)
    plain.bind(model, ds)
    both = DiscreteSurvivalNLL(DiscreteSurvivalNLL.Config(extra_logits=["other"]), 2)
    both.bind(model, ds)
    zero_only = DiscreteSurvivalNLL(DiscreteSurvivalNLL.Config(), 2)
    zero_only.bind(model, ds)
    want = 0.5 * (plain(out2, batch, state).total
                  + zero_only(MILOutput(bag_logits=second, mask=out.mask), batch, state).total)
    assert torch.allclose(both(out2, batch, state).total, want)
    missing = DiscreteSurvivalNLL(DiscreteSurvivalNLL.Config(extra_logits=["nope"]), 2)
    missing.bind(model, ds)
    with pytest.raises(ComponentError, match="does not output"):
        missing(out2, batch, state)


# --------------------------------------------------------------------------- the contract suite
@parametrize_with_checks(
    [SurvivalTask, (SurvivalTask, {"head": "cox"}), (SurvivalTask, {"bins": 2}), DiscreteSurvivalNLL,
     (DiscreteSurvivalNLL, {"alpha": 0.5}), CoxLoss],
)
def test_contract(component, check):
    check(component)


@pytest.mark.parametrize("head, cls", [("discrete", DiscreteSurvivalNLL), ("cox", CoxLoss)], ids=["discrete", "cox"])
def test_a_survival_step_reads_nothing_back(head, cls):
    """The loss and its backward make the host wait for nothing (a GPU step stays asynchronous and can be
    captured): Cox weights its events by a mask instead of selecting them, with or without events."""
    from milzoo.testing import StepCounter

    ds = _dataset()
    task = SurvivalTask(SurvivalTask.Config(head=head))
    task.fit(ds)
    model = _model(task)
    loss = cls(cls.Config(), 2)
    loss.bind(model, ds)
    for rows in (range(len(ds)), [2, 5, 8]):  # the second batch has no event
        batch = collate_bags([ds[i] for i in rows])
        with StepCounter() as counter:
            res = loss(model(batch), batch, TrainState(epoch=1, num_epochs=1, step=1))
            res.total.backward()
        assert not counter.syncs, dict(counter.syncs)
        assert torch.isfinite(res.total)
