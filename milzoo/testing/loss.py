"""Checks of losses, bound to a model around a compatible pooling."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from milzoo.components.base import Augment, ComponentConfig, Loss
from milzoo.errors import ComponentError
from milzoo.components.output import LossResult, MILOutput, TrainState
from milzoo.testing._core import (
    ComponentSpec, assert_close, padded_batch, register_check, compare_states, make_dataset, fail, floating, grad_report,
    load_fresh, make_bags, safetensors_roundtrip, resolve,
)


class _ContractViews(Augment):
    """Gaussian-noise views of feature vectors (view 0 unchanged), for losses that need several views."""

    name = "contract_views"

    class Config(ComponentConfig):
        num_views: int = Field(default=3, ge=1)
        noise: float = Field(default=0.1, ge=0.0)

    def __init__(self, config, in_shape):
        super().__init__(config, in_shape)
        self.num_views = int(config.num_views)

    def forward(self, x: Tensor) -> Tensor:
        noise = torch.randn(self.num_views - 1, *x.shape, dtype=x.dtype) * self.config.noise
        return torch.cat([x.unsqueeze(0), x.unsqueeze(0) + noise], dim=0)


LOSS_DIM = 8
LOSS_LENGTHS = [4, 2, 5, 1, 3, 6]


def _loss_pooling_spec(spec: ComponentSpec) -> ComponentSpec:
    from milzoo.registry import _table as registry

    chosen = getattr(spec.cls, "contract_pooling", None)
    if chosen is None:
        for entry in registry.entries("pooling"):
            if getattr(entry.obj, "default_loss", None) == spec.name:
                chosen = entry.obj
                break
    if chosen is None:
        chosen = "mean"
    if isinstance(chosen, str):
        chosen = registry.get_component("pooling", chosen)
    return resolve(chosen)


def contract_task(spec: ComponentSpec):
    """The task a loss is checked under: its ``contract_task`` (a registry name; default classification) with
    the options of ``contract_task_options`` (e.g. the survival task's Cox head)."""
    from milzoo.registry import get_component

    cls = get_component("task", getattr(spec.cls, "contract_task", "classification"))
    return cls(cls.Config(**getattr(spec.cls, "contract_task_options", {})))


class _LossSetup:
    """A small model (mlp encoder + the paired pooling [+ views]) and dataset, with the loss bound to them."""

    def __init__(self, spec: ComponentSpec, k: int, seed: int = 0, pad_to: int | None = None):
        from milzoo.builtin.encoders import MLPEncoder
        from milzoo.model.mil import MILModel

        self.spec, self.k = spec, k
        self.pool_spec = _loss_pooling_spec(spec)
        views = getattr(spec.cls, "contract_needs_views", False)
        torch.manual_seed(seed)
        task = contract_task(spec)
        enc = MLPEncoder(MLPEncoder.Config(dims=[LOSS_DIM]), (LOSS_DIM,))
        pool = self.pool_spec.cls(self.pool_spec.config(), enc.out_dim, task.out_dim(k))
        aug = None
        if views:
            n = 3 if views is True else int(views)
            aug = _ContractViews(_ContractViews.Config(num_views=n), (LOSS_DIM,))
        self.model = MILModel(enc, pool, aug, task=task)
        bags = make_bags(LOSS_LENGTHS, (LOSS_DIM,), k, seed=80 + k, candidates=True)
        if not task.classes:  # the task's own kind of label (a regression target, a survival time and event)
            for bag, y in zip(bags, task.example_labels(len(bags), seed=80 + k)):
                bag.y = y
        self.dataset = make_dataset(bags, k)
        task.fit(self.dataset)
        self.batch = padded_batch(self.dataset, pad_to)
        self.state = TrainState(epoch=1, num_epochs=3, step=5)

    def new_loss(self, seed: int = 0) -> Loss:
        torch.manual_seed(seed)
        loss = self.spec.cls(self.spec.config(), self.k)
        self.bind(loss)
        return loss

    def bind(self, loss: Loss) -> None:
        try:
            loss.bind(self.model, self.dataset)
        except ComponentError as exc:
            fail(
                self.spec,
                f"bind() refuses the model built around pooling {self.pool_spec.name!r}: {exc} -- if the loss "
                "needs a particular pooling, set `contract_pooling = \"<name>\"` on the class (and "
                "`contract_needs_views = True` if it needs augmented views)",
            )

    def forward(self, train: bool = True, seed: int = 3) -> MILOutput:
        self.model.train(train)
        torch.manual_seed(seed)
        out = self.model(self.batch)
        if train:
            with torch.no_grad():
                self.model.pooling.after_forward(out, self.batch)
        return out

    def call(self, loss: Loss, out: MILOutput) -> LossResult:
        res = loss(out, self.batch, self.state)
        if not isinstance(res, LossResult):
            fail(self.spec, f"forward must return a LossResult, got {type(res).__name__}")
        return res


@register_check("loss")
def check_loss_output(spec: ComponentSpec) -> None:
    """bind, then a training forward: a finite scalar total with a graph, named detached scalar parts."""
    for k in (2, 3):
        setup = _LossSetup(spec, k)
        loss = setup.new_loss()
        res = setup.call(loss, setup.forward())
        where = f"(k={k}, pooling {setup.pool_spec.name!r}) "
        total = floating(spec, where + "LossResult.total", res.total)
        if total.dim() != 0:
            fail(spec, where + f"LossResult.total must be a 0-dim scalar, got shape {tuple(total.shape)}")
        if not total.requires_grad:
            fail(spec, where + "LossResult.total has no autograd graph (it does not depend on the model)")
        if not isinstance(res.parts, dict):
            fail(spec, where + "LossResult.parts must be a dict")
        for name, value in res.parts.items():
            if not isinstance(name, str):
                fail(spec, where + f"part names must be strings, got {name!r}")
            t = floating(spec, where + f"part {name!r}", value)
            if t.numel() != 1:
                fail(spec, where + f"part {name!r} must be a scalar, got shape {tuple(t.shape)}")
            if t.requires_grad:
                fail(spec, where + f"part {name!r} must be detached (parts are for logging)")
        loss.end_epoch(setup.state)


@register_check("loss")
def check_loss_gradients(spec: ComponentSpec) -> None:
    """backward() of the total reaches the model and every trainable parameter of the loss."""
    for k in (2, 3):
        setup = _LossSetup(spec, k)
        loss = setup.new_loss()
        total = setup.call(loss, setup.forward()).total
        total.backward()
        got = [n for n, p in setup.model.named_parameters() if p.grad is not None]
        if not got:
            fail(spec, f"(k={k}) no model parameter gets a gradient from the loss")
        grad_report(spec, setup.model.named_parameters(), f"model (k={k})")
        grad_report(spec, loss.named_parameters(), f"loss (k={k})")


@register_check("loss")
def check_loss_padding(spec: ComponentSpec) -> None:
    """Extra padding of the batch does not change the loss (eval-mode model, fresh bound losses)."""
    for k in (2, 3):
        results = []
        for pad_to in (None, max(LOSS_LENGTHS) + 3):
            setup = _LossSetup(spec, k, pad_to=pad_to)
            loss = setup.new_loss()
            with torch.no_grad():
                results.append(setup.call(loss, setup.forward(train=False)))
        assert_close(spec, f"(k={k}) total with 3 extra padded positions vs none", results[1].total, results[0].total)
        for name in results[0].parts:
            if name in results[1].parts:
                assert_close(spec, f"(k={k}) part {name!r} with extra padding", results[1].parts[name],
                              results[0].parts[name])


@register_check("loss")
def check_loss_state_dict(spec: ComponentSpec) -> None:
    """Loss buffers (per-bag state...) through safetensors into a fresh bound instance: same state and results."""
    k = 3
    setup = _LossSetup(spec, k)
    loss = setup.new_loss(seed=1)
    setup.call(loss, setup.forward(seed=4))
    loss.end_epoch(setup.state)
    setup.call(loss, setup.forward(seed=5))  # state recorded after an epoch end, too
    state = safetensors_roundtrip(spec, loss)
    fresh = setup.new_loss(seed=2)
    load_fresh(spec, fresh, state)
    compare_states(spec, "after loading", fresh.state_dict(), loss.state_dict())
    with torch.no_grad():
        out = setup.forward(seed=6)
        a, b = setup.call(loss, out), setup.call(fresh, out)
    assert_close(spec, "total of the reloaded loss", b.total, a.total, atol=1e-6, rtol=1e-5)


@register_check("loss")
def check_loss_determinism(spec: ComponentSpec) -> None:
    """Same seed: same initial state and the same total for the same training forward."""
    k = 3
    totals, states = [], []
    for _ in range(2):
        setup = _LossSetup(spec, k, seed=9)
        loss = setup.new_loss(seed=9)
        states.append(loss.state_dict())
        with torch.no_grad():
            totals.append(setup.call(loss, setup.forward(seed=10)).total)
    compare_states(spec, "two losses built and bound after the same seed", states[0], states[1])
    assert_close(spec, "total under the same seed", totals[1], totals[0], atol=0.0, rtol=0.0)
