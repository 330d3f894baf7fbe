"""Checks that every component runs in float64, as ``train.precision = "fp64"`` trains it.

The trainer doubles the model (and each loss that is a module) and :class:`~milzoo.model.mil.MILModel` casts its
inputs to the weights' type, so a component passes when it creates its own tensors in its input's dtype
(``x.new_zeros``, ``dtype=x.dtype``) and casts with :func:`milzoo.layers.precision.at_least_float32` rather than
``.float()``: then outputs, losses and gradients are float64 throughout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from milzoo.components.output import TrainState
from milzoo.testing._core import (
    POOLING_SETTINGS, ComponentSpec, all_output_tensors, padded_batch, build_seeded, register_check, make_dataset, fail, make_bags,
)

_HOW = ("create new tensors in the input's dtype (x.new_zeros(...), dtype=x.dtype) and cast with "
        "milzoo.layers.precision.at_least_float32(t) instead of t.float()")


@contextlib.contextmanager
def _in_float64(spec: ComponentSpec, what: str) -> Iterator[None]:
    try:
        yield
    except (RuntimeError, TypeError) as exc:
        fail(spec, f"{what} fails in float64 (train.precision = \"fp64\"): {type(exc).__name__}: {exc}; {_HOW}")


def _all_float64(spec: ComponentSpec, what: str, tensors: dict[str, torch.Tensor]) -> None:
    lower = {name: t.dtype for name, t in tensors.items() if t.is_floating_point() and t.dtype != torch.float64}
    if lower:
        fail(spec, f"{what} in float64: {', '.join(f'{n} is {d}' for n, d in lower.items())} ({_HOW})")


def _grads_float64(spec: ComponentSpec, module: torch.nn.Module, where: str) -> None:
    lower = {n: p.grad.dtype for n, p in module.named_parameters()
             if p.grad is not None and p.grad.dtype != torch.float64}
    if lower:
        fail(spec, f"{where}: gradients not float64 in float64: {sorted(lower)[:5]}")


def _double_if_module(obj) -> None:
    if isinstance(obj, torch.nn.Module):
        obj.double()


@register_check("pooling")
def check_pooling_float64(spec: ComponentSpec) -> None:
    """A float64 model around the pooling, its default loss: float64 outputs, loss and gradients."""
    from milzoo.testing.pooling import _default_loss, _pooling_model

    d, k = POOLING_SETTINGS[-1]
    pool = build_seeded(spec, d, k)
    model = _pooling_model(pool, d).double()
    ds = make_dataset(make_bags([4, 2, 6, 1], (d,), k, seed=90), k)
    batch = padded_batch(ds)  # float32 features: the model casts them, as in a fp64 run
    batch.x.requires_grad_(True)  # a graph even for a pooling without trainable parameters
    loss = _default_loss(spec, k)
    with _in_float64(spec, "a training step"):
        loss.bind(model, ds)
        _double_if_module(loss)
        model.train()
        torch.manual_seed(91)
        out = model(batch)
        with torch.no_grad():
            pool.after_forward(out, batch)
        total = loss(out, batch, TrainState(epoch=1, num_epochs=3)).total
        total.backward()
    _all_float64(spec, "train-mode outputs", {**all_output_tensors(out), "default loss total": total})
    _grads_float64(spec, pool, "pooling")
    with _in_float64(spec, "predict()"), torch.no_grad():
        ev = model.predict(batch)
    _all_float64(spec, "eval-mode outputs", {**all_output_tensors(ev), "bag_probs": ev.bag_probs})


@register_check("loss")
def check_loss_float64(spec: ComponentSpec) -> None:
    """Bound to a float64 model (and doubled when it is a module): a float64 total and float64 gradients."""
    from milzoo.testing.loss import _LossSetup

    setup = _LossSetup(spec, 3)
    setup.model.double()
    loss = setup.new_loss()  # bound after the model was doubled, as the trainer does
    with _in_float64(spec, "the loss"):
        _double_if_module(loss)
        res = setup.call(loss, setup.forward())
        res.total.backward()
    _all_float64(spec, "LossResult", {"total": res.total})
    _grads_float64(spec, setup.model, "model")
    if isinstance(loss, torch.nn.Module):
        _grads_float64(spec, loss, "loss")


@register_check("encoder")
def check_encoder_float64(spec: ComponentSpec) -> None:
    """A doubled encoder maps float64 instances to float64 features, with float64 gradients."""
    from milzoo.testing.encoder import _in_shape, _instances

    shape = _in_shape(spec)
    enc = build_seeded(spec, shape).double()
    x = _instances(shape, 4, seed=92).double().requires_grad_(True)  # a graph even without parameters
    with _in_float64(spec, "forward/backward"):
        enc.train()
        z = enc(x)
        z.sum().backward()
    _all_float64(spec, "the output", {"features": z})
    _grads_float64(spec, enc, "encoder")


@register_check("augment")
def check_augment_float64(spec: ComponentSpec) -> None:
    """float64 instances give float64 views."""
    from milzoo.testing.encoder import _in_shape, _instances

    shape = _in_shape(spec)
    aug = build_seeded(spec, shape).double()
    x = _instances(shape, 4, seed=93).double()
    with _in_float64(spec, "forward"), torch.no_grad():
        aug.train()
        views = aug(x)
    _all_float64(spec, "the views", {"views": views})
