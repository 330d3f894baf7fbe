"""milzoo.optim: torch's optimisers without their torch.compile guards -- the same numbers, state and hooks,
and no torch._dynamo import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from milzoo.train import optim

CASES = [
    (optim.Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 5e-4, "foreach": True}),
    (optim.Adam, torch.optim.Adam, {"lr": 1e-2, "foreach": False}),
    (optim.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 1e-2, "foreach": True}),
    (optim.SGD, torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
                                  "foreach": True}),
]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def _train(opt_cls, kwargs, steps=12, state=None):
    model = _model()
    opt = opt_cls(model.parameters(), **kwargs)
    if state is not None:
        opt.load_state_dict(state)
    torch.manual_seed(1)
    x, y = torch.randn(20, 7), torch.randint(0, 3, (20,))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("ours, theirs, kwargs", CASES)
def test_same_weights_and_state_as_torch(ours, theirs, kwargs):
    m1, o1 = _train(ours, kwargs)
    m2, o2 = _train(theirs, kwargs)
    assert isinstance(o1, theirs)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)  # bit for bit
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s2["state"]:
        for key, value in s2["state"][i].items():
            assert torch.equal(torch.as_tensor(s1["state"][i][key]), torch.as_tensor(value)), key
    # each loads the other's state (checkpoints of either kind resume)
    m3, _ = _train(ours, kwargs, steps=3, state=s2)
    m4, _ = _train(theirs, kwargs, steps=3, state=s1)
    for a, b in zip(m3.parameters(), m4.parameters()):
        assert torch.equal(a, b)


def test_hooks_closure_and_zeroing_keep_working():
    model = _model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    x = torch.randn(4, 7)

    def closure():
        opt.zero_grad(set_to_none=False)
        loss = model(x).square().mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == ["pre", "post"] and loss.ndim == 0
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()  # grad mode restored after the step


def test_profiler_still_sees_the_step():
    model = _model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(2, 7)).sum().backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
        opt.zero_grad()
    names = {e.name for e in prof.events()}
    assert "Optimizer.step#Adam.step" in names and "Optimizer.zero_grad#Adam.zero_grad" in names


def test_no_dynamo_import():
    code = (
        "import sys, torch\n"
        "from milzoo.train.settings import make_optimizer\n"
        "from milzoo.recipe import load_recipe\n"
        "m = torch.nn.Linear(3, 2)\n"
        "for name in ('adam', 'adamw', 'sgd'):\n"
        "    cfg = load_recipe('recipes/quickstart.toml', [f'optim.name={name}']).root.optim\n"
        "    opt = make_optimizer(cfg, m.parameters())\n"
        "    m(torch.randn(4, 3)).sum().backward()\n"
        "    opt.step(); opt.zero_grad(); opt.load_state_dict(opt.state_dict())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False", out.stderr
