"""Checks of encoders and augments: outputs, batch independence, gradients, state, determinism."""

from __future__ import annotations

import json

import torch
from torch import Tensor

from milzoo.components.base import Augment, Encoder
from milzoo.components.output import TrainState
from milzoo.testing._core import (
    ComponentSpec, IN_SHAPE_CANDIDATES, assert_close, padded_batch, build_seeded, register_check, compare_states, make_dataset,
    fail, floating, seeded_generator, grad_report, load_fresh, make_bags, safetensors_roundtrip,
)


_SHAPES: dict[tuple, tuple[int, ...]] = {}


def _in_shape(spec: ComponentSpec) -> tuple[int, ...]:
    """``contract_in_shape``, else the first of :data:`IN_SHAPE_CANDIDATES` the component accepts."""
    declared = getattr(spec.cls, "contract_in_shape", None)
    if declared:
        return tuple(int(s) for s in declared)
    key = (spec.cls, json.dumps(spec.options, sort_keys=True, default=str))
    if key in _SHAPES:
        return _SHAPES[key]
    tried = []
    for shape in IN_SHAPE_CANDIDATES:
        try:
            with torch.random.fork_rng(devices=[]):
                m = build_seeded(spec, shape)
                x = torch.rand(2, *shape)
                if spec.kind == "augment":
                    m.train()
                    m(x)
                else:
                    m.eval()
                    with torch.no_grad():
                        m(x)
        except Exception as exc:  # noqa: BLE001 - try the next shape
            tried.append(f"{shape}: {type(exc).__name__}: {exc}")
            continue
        _SHAPES[key] = shape
        return shape
    fail(spec, "no test input shape works; set `contract_in_shape = (...)` on the class. Tried "
                + "; ".join(tried))
    raise AssertionError  # unreachable


def _instances(shape: tuple[int, ...], m: int, seed: int) -> Tensor:
    g = seeded_generator(seed)
    return torch.randn(m, *shape, generator=g) if len(shape) == 1 else torch.rand(m, *shape, generator=g)


@register_check("encoder")
def check_encoder_output(spec: ComponentSpec) -> None:
    """``[M, *in_shape] -> [M, out_dim]``, floating and finite, in eval and train mode."""
    shape = _in_shape(spec)
    enc = build_seeded(spec, shape)
    if not isinstance(getattr(enc, "out_dim", None), int) or enc.out_dim <= 0:
        fail(spec, f"the constructor must set out_dim to a positive int, got {getattr(enc, 'out_dim', None)!r}")
    if tuple(enc.in_shape) != shape:
        fail(spec, f"in_shape is {enc.in_shape}, expected {shape} (call Encoder.__init__)")
    x = _instances(shape, 5, seed=70)
    for mode in ("eval", "train"):
        enc.train(mode == "train")
        with torch.no_grad():
            z = enc(x)
        floating(spec, f"{mode}-mode output", z)
        if tuple(z.shape) != (5, enc.out_dim):
            fail(spec, f"{mode}-mode output has shape {tuple(z.shape)}, expected [M, out_dim] = {(5, enc.out_dim)}")


@register_check("encoder")
def check_encoder_batch_independence(spec: ComponentSpec) -> None:
    """Eval mode: encoding instances together equals encoding them one at a time (bags share encoder calls)."""
    shape = _in_shape(spec)
    enc = build_seeded(spec, shape)
    enc.eval()
    x = _instances(shape, 4, seed=71)
    with torch.no_grad():
        together = enc(x)
        for i in range(x.shape[0]):
            assert_close(spec, f"instance {i} encoded with others vs alone", together[i : i + 1], enc(x[i : i + 1]))


@register_check("encoder")
def check_encoder_single_instance(spec: ComponentSpec) -> None:
    """A single instance (a batch holding one bag of one instance) encodes in train and eval mode."""
    shape = _in_shape(spec)
    enc = build_seeded(spec, shape)
    x = _instances(shape, 1, seed=72)
    for mode in ("eval", "train"):
        enc.train(mode == "train")
        try:
            z = enc(x)
        except Exception as exc:  # noqa: BLE001
            fail(spec, f"{mode} mode fails on a single instance ({type(exc).__name__}: {exc})")
        floating(spec, f"{mode}-mode output for one instance", z)


def _encoder_model(enc: Encoder, k: int, augment: Augment | None = None):
    from milzoo.builtin.poolings import MeanPooling
    from milzoo.model.mil import MILModel

    torch.manual_seed(5)
    return MILModel(enc, MeanPooling(MeanPooling.Config(), enc.out_dim, k), augment)


def _bce_step(model, shape, k: int, lengths: list[int], seed: int):
    from milzoo.builtin.losses import BagCrossEntropy

    ds = make_dataset(make_bags(lengths, shape, k, seed), k)
    batch = padded_batch(ds)
    model.train()
    torch.manual_seed(seed + 1)
    out = model(batch)
    return out, BagCrossEntropy(BagCrossEntropy.Config(), k)(out, batch, TrainState()).total


@register_check("encoder")
def check_encoder_gradients(spec: ComponentSpec) -> None:
    """Train mode, encoder + mean pooling + bag cross-entropy: every trainable parameter gets a gradient."""
    shape = _in_shape(spec)
    enc = build_seeded(spec, shape)
    model = _encoder_model(enc, 2)
    _, total = _bce_step(model, shape, 2, [3, 1, 2], seed=73)
    floating(spec, "the loss of a model around the encoder", total)
    if not any(p.requires_grad for p in enc.parameters()):
        return
    total.backward()
    grad_report(spec, enc.named_parameters(), "encoder")


@register_check("encoder", "augment")
def check_state_dict_roundtrip(spec: ComponentSpec) -> None:
    """state_dict through safetensors into a fresh instance: same state, same outputs."""
    shape = _in_shape(spec)
    comp = build_seeded(spec, shape, seed=1)
    x = _instances(shape, 3, seed=74)
    comp.train()
    torch.manual_seed(0)
    with torch.no_grad():
        comp(x)  # moves running statistics (BatchNorm) if any
    state = safetensors_roundtrip(spec, comp)
    fresh = build_seeded(spec, shape, seed=2)
    load_fresh(spec, fresh, state)
    compare_states(spec, "after loading", fresh.state_dict(), comp.state_dict())
    outs = []
    for m in (comp, fresh):
        m.train(spec.kind == "augment")  # augments only act in training
        torch.manual_seed(3)
        with torch.no_grad():
            outs.append(m(x))
    assert_close(spec, "outputs of the reloaded instance", outs[1], outs[0], atol=1e-6, rtol=1e-5)


@register_check("encoder", "augment")
def check_seeded_determinism(spec: ComponentSpec) -> None:
    """Same seed: same initial state and same train-mode outputs."""
    shape = _in_shape(spec)
    a, b = build_seeded(spec, shape, seed=7), build_seeded(spec, shape, seed=7)
    compare_states(spec, "two instances built after the same torch.manual_seed", a.state_dict(), b.state_dict())
    x = _instances(shape, 3, seed=75)
    outs = []
    for m in (a, b):
        m.train()
        torch.manual_seed(11)
        with torch.no_grad():
            outs.append(m(x))
    assert_close(spec, "train-mode outputs under the same seed", outs[1], outs[0], atol=0.0, rtol=0.0)
    if spec.kind == "encoder":
        a.eval()
        with torch.no_grad():
            torch.manual_seed(1)
            e1 = a(x)
            torch.manual_seed(2)
            e2 = a(x)
        assert_close(spec, "eval-mode outputs under different global seeds (evaluation must be deterministic)",
                      e2, e1, atol=0.0, rtol=0.0)


@register_check("augment")
def check_augment_output(spec: ComponentSpec) -> None:
    """``[M, *s] -> [V, M, *s]`` with ``V = num_views``; also inside a MILModel (``view_features``)."""
    from milzoo.builtin.encoders import IdentityEncoder

    shape = _in_shape(spec)
    aug = build_seeded(spec, shape)
    v = getattr(aug, "num_views", None)
    if not isinstance(v, int) or v < 1:
        fail(spec, f"num_views must be a positive int set by the constructor, got {v!r}")
    x = _instances(shape, 4, seed=76)
    aug.train()
    with torch.no_grad():
        views = aug(x)
    floating(spec, "views", views)
    if tuple(views.shape) != (v, 4, *shape):
        fail(spec, f"views have shape {tuple(views.shape)}, expected [V, M, *in_shape] = {(v, 4, *shape)}")
    enc = IdentityEncoder(IdentityEncoder.Config(), shape)
    model = _encoder_model(enc, 2, aug)
    out, total = _bce_step(model, shape, 2, [3, 1], seed=77)
    vf = out.extras.get("view_features")
    if vf is None or tuple(vf.shape) != (v, 4, enc.out_dim):
        fail(spec, f"inside a MILModel the view features should be [V, M, d] = {(v, 4, enc.out_dim)}, "
                    f"got {None if vf is None else tuple(vf.shape)}")
    floating(spec, "the loss of a model using the augmentation", total)
