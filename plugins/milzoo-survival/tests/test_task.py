"""SurvivalTask: labels, fitted bins, predictions, metrics; the metrics against lifelines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from milzoo.components import MILOutput
from milzoo.datasets import Bag, BagListDataset
from milzoo.errors import DataError
from milzoo.registry import get_component

from milzoo_survival import metrics as sm
from milzoo_survival.task import SurvivalTask


def _ds(labels):
    return BagListDataset([Bag(x=torch.zeros(1, 2), y=(float(t), float(e)), bag_id=str(i))
                           for i, (t, e) in enumerate(labels)], ["time", "event"])


def _out(logits):
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return MILOutput(bag_logits=logits, mask=torch.ones(len(logits), 1, dtype=torch.bool))


def test_registered_with_its_config():
    assert get_component("task", "survival") is SurvivalTask
    t = SurvivalTask(SurvivalTask.Config())
    assert (t.config.head, t.config.bins, t.out_dim(2), t.default_loss) == ("discrete", 4, 4, "surv_nll")
    c = SurvivalTask(SurvivalTask.Config(head="cox", bins=6))
    assert (c.out_dim(2), c.default_loss) == (1, "cox")
    assert t.columns([]) == ["risk", "S_bin0", "S_bin1", "S_bin2", "S_bin3"] and c.columns([]) == ["risk"]
    assert t.label_columns() == ["time", "event"]
    assert t.headline == "c_index" and not t.classes
    with pytest.raises(Exception):
        SurvivalTask.Config(head="weibull")


def test_fit_bins_are_quantiles_of_uncensored_training_times():
    times = [1, 2, 3, 4, 5, 6, 7, 8, 100, 200]
    events = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # the two longest are censored and must not move the edges
    t = SurvivalTask(SurvivalTask.Config(bins=4))
    t.fit(_ds(zip(times, events)))
    want = np.quantile(np.arange(1, 9), [0.25, 0.5, 0.75])
    assert np.allclose(t.edges.numpy(), [0.0, *want, 200.0])
    # bins are [q_j, q_{j+1}): a time equal to an edge starts the next bin; beyond the range: the last bin
    got = t.bin_index(torch.tensor([0.0, float(want[0]), 2.9, 4.6, 7.0, 500.0])).tolist()
    assert got == [0, 1, 1, 2, 3, 3]


def test_fit_refuses_too_few_or_tied_event_times():
    t = SurvivalTask(SurvivalTask.Config(bins=4))
    with pytest.raises(DataError, match="Lower task.bins"):
        t.fit(_ds([(1, 1), (2, 1), (3, 0), (4, 0), (5, 0)]))
    with pytest.raises(DataError, match="Lower task.bins"):
        t.fit(_ds([(2, 1)] * 6 + [(3, 0)]))
    SurvivalTask(SurvivalTask.Config(head="cox")).fit(_ds([(2, 1)] * 6 + [(3, 0)]))  # the cox head needs no bins


def test_bin_index_before_fit_is_refused():
    from milzoo.errors import ComponentError

    with pytest.raises(ComponentError, match="not fitted"):
        SurvivalTask(SurvivalTask.Config()).bin_index(torch.tensor([1.0]))


@pytest.mark.parametrize("labels, match", [
    ([(1.0, 1.0), (-2.0, 0.0)], "negative"),
    ([(1.0, 1.0), (float("nan"), 0.0)], "non-finite"),
    ([(1.0, 1.0), (2.0, 2.0)], "other than 0 or 1"),
    ([(1.0, 0.0), (2.0, 0.0)], "none of the 2 bags has an observed event"),
    ([1.0, 2.0], r"\(time, event\) pair"),
])
def test_check_labels_refusals(labels, match):
    with pytest.raises(DataError, match=match):
        SurvivalTask(SurvivalTask.Config()).check_labels(np.asarray(labels), "the split")


def test_predict_discrete_survival_and_risk():
    t = SurvivalTask(SurvivalTask.Config(bins=3))
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]])
    pred = t.predict(_out(logits))
    h = torch.sigmoid(logits)
    s = torch.cumprod(1 - h, dim=1)
    assert pred.shape == (2, 4)
    assert torch.allclose(pred[:, 1:], s, atol=1e-6)
    assert torch.allclose(pred[:, 0], -s.sum(1), atol=1e-6)  # MCAT's risk: minus the expected survival
    assert torch.allclose(pred[0, 1:], torch.tensor([0.5, 0.25, 0.125]))


def test_predict_cox_is_the_log_hazard():
    t = SurvivalTask(SurvivalTask.Config(head="cox"))
    pred = t.predict(_out([[0.3], [-1.2]]))
    assert torch.equal(pred, torch.tensor([[0.3], [-1.2]]))


def test_metrics_keys_and_values():
    rng = np.random.default_rng(0)
    n = 200
    risk = rng.normal(size=n)
    time = rng.exponential(1 / np.exp(risk))
    event = (rng.random(n) < 0.7).astype(float)
    y = np.stack([time, event], 1)
    cox = SurvivalTask(SurvivalTask.Config(head="cox"))
    m = cox.metrics(y, risk[:, None])
    assert set(m) == {"c_index", "c_index_uno", "td_auc", "ibs", "loss"}
    assert m["c_index"] > 0.65 and m["c_index_uno"] > 0.65 and m["td_auc"] > 0.65
    assert math.isnan(m["ibs"])  # a Cox head has no baseline hazard: no survival curve, no Brier score
    assert math.isclose(m["loss"], sm.cox_partial_nll(time, event, risk))
    # the discrete head: survival curves from logits, IBS defined, loss = the NLL of the fitted bins
    d = SurvivalTask(SurvivalTask.Config(bins=4))
    d.fit(_ds(y))
    logits = torch.as_tensor(np.stack([risk - 2 + 0.3 * j for j in range(4)], 1), dtype=torch.float32)
    pred = d.predict(_out(logits)).double().numpy()
    md = d.metrics(y, pred)
    assert set(md) == {"c_index", "c_index_uno", "td_auc", "ibs", "loss"}
    assert 0.0 < md["ibs"] < 0.25 and md["c_index"] > 0.65
    from milzoo_survival.losses import discrete_survival_nll

    bins = d.bin_index(torch.as_tensor(time))
    want = float(discrete_survival_nll(logits.double(), bins, torch.as_tensor(event)).mean())
    assert math.isclose(md["loss"], want, rel_tol=1e-4)


def test_metrics_are_nan_when_the_split_does_not_allow_them():
    t = SurvivalTask(SurvivalTask.Config(head="cox"))
    m = t.metrics(np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]), np.array([[0.1], [0.2], [0.3]]))
    assert all(math.isnan(v) for v in m.values())
    m = t.metrics(np.array([[1.0, 1.0]]), np.array([[0.1]]))  # one bag: no pair
    assert math.isnan(m["c_index"]) and math.isnan(m["td_auc"])
    with pytest.raises(DataError, match="NaN/inf"):
        t.metrics(np.array([[1.0, 1.0], [2.0, 0.0]]), np.array([[0.1], [np.nan]]))


def test_harrell_c_sksurv_equals_lifelines():
    from lifelines.utils import concordance_index  # milzoo-survival[test]

    rng = np.random.default_rng(1)
    for trial in range(10):
        n = int(rng.integers(20, 150))
        time = rng.exponential(5.0, size=n)
        event = (rng.random(n) < 0.6).astype(float)
        risk = rng.normal(size=n) if trial % 2 else rng.integers(0, 4, size=n).astype(float)  # with tied risks
        ours = sm.harrell_c(time, event, risk)
        theirs = concordance_index(time, -risk, event)  # lifelines scores survival: higher = longer
        assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12)


def test_logrank_sksurv_equals_lifelines():
    from lifelines.statistics import logrank_test

    from milzoo_survival.km import _logrank

    rng = np.random.default_rng(2)
    n = 120
    group = rng.random(n) < 0.5
    time = rng.exponential(np.where(group, 3.0, 5.0))
    event = (rng.random(n) < 0.7).astype(float)
    chi2, p = _logrank(time, event, group)
    ref = logrank_test(time[group], time[~group], event[group], event[~group])
    assert math.isclose(p, ref.p_value, rel_tol=1e-6) and math.isclose(chi2, ref.test_statistic, rel_tol=1e-6)


def test_uno_is_truncated_at_the_split_quantile():
    from sksurv.metrics import concordance_index_ipcw

    rng = np.random.default_rng(4)
    n = 300
    risk = rng.normal(size=n)
    time = rng.exponential(1 / np.exp(risk))
    event = (rng.random(n) < 0.7).astype(float)
    y = sm.structured(time, event)
    want = concordance_index_ipcw(y, y, risk, tau=float(np.quantile(time, 0.8)))[0]
    assert math.isclose(sm.uno_c(time, event, risk), want)


def test_interpolated_survival_hits_the_bin_ends():
    edges = np.array([0.0, 2.0, 5.0, 9.0])
    surv = np.array([[0.8, 0.5, 0.1]])
    got = sm.interpolate_survival(surv, edges, np.array([0.0, 1.0, 2.0, 5.0, 9.0, 20.0]))
    assert np.allclose(got, [[1.0, 0.9, 0.8, 0.5, 0.1, 0.1]])


def test_bins_loaded_unfitted_are_refused_again():
    """Whether the bins are fitted is read once and then kept on the host; loading a state resets that, so an
    unfitted state loaded over a fitted task is refused as before."""
    from milzoo.errors import ComponentError

    bags = [Bag(x=torch.randn(2, 3), y=(float(1 + i), float(i % 3 != 2)), bag_id=str(i)) for i in range(12)]
    task = SurvivalTask(SurvivalTask.Config(bins=3))
    task.fit(BagListDataset(bags, ["time", "event"]))
    assert task.bin_index(torch.tensor([0.5, 100.0])).tolist() == [0, 2]
    task.load_state_dict(SurvivalTask(SurvivalTask.Config(bins=3)).state_dict())
    with pytest.raises(ComponentError, match="not fitted"):
        task.bin_index(torch.tensor([0.5]))
