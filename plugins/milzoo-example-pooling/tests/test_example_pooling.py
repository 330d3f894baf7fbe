"""Tests of the example LSE pooling: the milzoo contract suite, hand-computed values, and a recipe run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from milzoo.testing import parametrize_with_checks
from milzoo_example_pooling.pooling import LSEPooling


# --- 1. the generic contract: shapes, padding, permutation, gradients, state_dict, determinism ---------------
@parametrize_with_checks([
    LSEPooling,
    (LSEPooling, {"learn_r": True}),
    (LSEPooling, {"r": 0.5, "normalize": "sum"}),
])
def test_contract(component, check):
    check(component)


# --- 2. the method's own behaviour, with weights set by hand ------------------------------------------------
def _pool(**options) -> LSEPooling:
    pool = LSEPooling(LSEPooling.Config(**options), in_dim=2, num_classes=2)
    with torch.no_grad():  # s_i = h_i: the identity classifier
        pool.classifier.weight.copy_(torch.eye(2))
        pool.classifier.bias.zero_()
    return pool.eval()


def test_known_values():
    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])  # one bag, two instances
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = _pool(r=1.0)(h, mask)
    # class 0: log((e^1 + e^3) / 2); class 1: log((e^0 + e^2) / 2)
    want = torch.tensor([[math.log((math.e + math.e**3) / 2), math.log((1 + math.e**2) / 2)]])
    torch.testing.assert_close(out.bag_logits, want)
    a0 = math.e / (math.e + math.e**3)
    torch.testing.assert_close(out.attention[0, :, 0], torch.tensor([a0, 1 - a0]))
    torch.testing.assert_close(out.inst_logits, h)

    out_sum = _pool(r=2.0, normalize="sum")(h, mask)
    want_sum = torch.tensor([[math.log(math.exp(2) + math.exp(6)) / 2, math.log(1 + math.exp(4)) / 2]])
    torch.testing.assert_close(out_sum.bag_logits, want_sum)


def test_r_interpolates_between_mean_and_max():
    h = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [0.0, 4.0]]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    small = _pool(r=1e-4)(h, mask).bag_logits
    large = _pool(r=1e3)(h, mask).bag_logits
    torch.testing.assert_close(small, h.mean(1), atol=1e-3, rtol=0)
    torch.testing.assert_close(large, h.amax(1), atol=2e-3, rtol=0)  # max minus log(3)/r
    mid = _pool(r=1.0)(h, mask).bag_logits
    assert bool((mid > h.mean(1)).all() and (mid < h.amax(1)).all())


def test_padding_is_ignored():
    pool = _pool(r=3.0)
    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [0.0, 0.0]]])
    padded = pool(h, torch.tensor([[True, True, False]]))
    alone = pool(h[:, :2], torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(padded.bag_logits, alone.bag_logits)
    assert padded.attention[0, 2].abs().sum() == 0 and padded.inst_logits[0, 2].abs().sum() == 0


def test_learnable_r_is_a_parameter_and_trains():
    fixed = LSEPooling(LSEPooling.Config(r=2.0), 4, 2)
    assert fixed.log_r is None and "log_r" not in fixed.state_dict()
    pool = LSEPooling(LSEPooling.Config(r=2.0, learn_r=True), 4, 2)
    assert float(pool.r.detach()) == pytest.approx(2.0)
    h = torch.randn(3, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    loss = torch.nn.functional.cross_entropy(pool(h, mask).bag_logits, torch.tensor([0, 1, 1]))
    loss.backward()
    assert pool.log_r.grad is not None and pool.log_r.grad.abs() > 0


def test_config_validation():
    with pytest.raises(ValidationError):
        LSEPooling.Config(r=0.0)
    with pytest.raises(ValidationError):
        LSEPooling.Config(normalize="max")
    with pytest.raises(ValidationError):
        LSEPooling.Config(temperature=1.0)  # unknown key


def test_training_separates_toy_bags():
    """A positive bag holds one instance with a large first feature: LSE (near max) learns it quickly."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, 6, 3, generator=g)
    y = torch.arange(32) % 2
    h[y == 1, 0, 0] += 4.0
    mask = torch.ones(32, 6, dtype=torch.bool)
    pool = LSEPooling(LSEPooling.Config(), 3, 2)  # r = 1
    opt = torch.optim.Adam(pool.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(pool(h, mask).bag_logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    acc = float((pool(h, mask).bag_logits.argmax(-1) == y).float().mean())
    assert losses[-1] < 0.5 * losses[0]
    assert acc >= 0.9
    # the positive instance gets the most class-1 attention in positive bags
    att = pool.eval()(h, mask).attention[y == 1, :, 1]
    assert float((att.argmax(1) == 0).float().mean()) >= 0.9


# --- 3. from a recipe, through the registry (needs the plugin installed: pip install -e .) -------------------
def _write_csv(path, n_bags=24, n_feat=4, seed=0):
    """Classic MIL layout: label, bag id, features; positive bags hold one shifted instance."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_bags):
        y = b % 2
        x = rng.normal(size=(int(rng.integers(2, 6)), n_feat))
        if y:
            x[0, 0] += 4.0
        rows += [[y, b + 1, *inst] for inst in x]
    np.savetxt(path, np.array(rows), delimiter=",", fmt="%.6g")
    return path


def test_recipe_run(tmp_path):
    from milzoo.runs.runner import run

    csv = _write_csv(tmp_path / "toy.csv")
    recipe = {
        "name": "lse-example",
        "data": {"name": "classic", "path": str(csv)},
        "encoder": {"name": "mlp", "dims": [8]},
        "pooling": {"name": "lse", "r": 3.0, "learn_r": True},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "batch_size": 4, "progress": False, "threads": 1},
        "protocol": {"kind": "cv", "folds": 2},
    }
    summary = run(recipe, out=tmp_path / "run")
    assert summary["num_folds"] == 2
    assert 0.0 <= summary["last"]["test"]["acc"]["mean"] <= 1.0
    cfg = json.loads((tmp_path / "run" / "fold-00" / "last" / "config.json").read_text())
    assert cfg["pooling"] == {"name": "lse", "r": 3.0, "learn_r": True, "normalize": "mean"}
    assert cfg["components"]["pooling"]["distribution"] == "milzoo-example-pooling"
