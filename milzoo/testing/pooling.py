"""Checks of poolings: ``MILOutput``, padding, permutation, single instances, gradients, state, determinism."""

from __future__ import annotations

import torch

from milzoo.components.base import Loss, Pooling
from milzoo.errors import ComponentError
from milzoo.components.output import LossResult, MILOutput, TrainState
from milzoo.testing._core import (
    ComponentSpec, POOLING_SETTINGS, bag_fields, padded_batch, build_seeded, register_check, compare_bag, compare_outputs,
    compare_states, make_dataset, fail, floating, seeded_generator, grad_report, load_fresh, make_bags, padded_features,
    safetensors_roundtrip,
)


def _pooling_model(pool: Pooling, d: int):
    from milzoo.builtin.encoders import IdentityEncoder
    from milzoo.model.mil import MILModel

    return MILModel(IdentityEncoder(IdentityEncoder.Config(), (d,)), pool)


def _default_loss(spec: ComponentSpec, k: int) -> Loss:
    from milzoo.registry import _table as registry

    name = getattr(spec.cls, "default_loss", "bag_ce")
    loss_cls = registry.get_component("loss", name)
    return loss_cls(loss_cls.Config(), k)


def _pooling_train_step(spec, pool: Pooling, d: int, k: int, lengths: list[int], seed: int,
                        need_input_grad: bool = False):
    """One trainer-like step: forward (train mode), ``after_forward``, default loss.  Returns (out, total, batch)."""
    model = _pooling_model(pool, d)
    ds = make_dataset(make_bags(lengths, (d,), k, seed), k)
    batch = padded_batch(ds)
    if need_input_grad:
        batch.x.requires_grad_(True)
    loss = _default_loss(spec, k)
    try:
        loss.bind(model, ds)
    except ComponentError as exc:
        fail(spec, f"its default loss {loss.name!r} refuses it in bind(): {exc}")
    model.train()
    torch.manual_seed(seed + 1)
    out = model(batch)
    with torch.no_grad():
        pool.after_forward(out, batch)
    res = loss(out, batch, TrainState(epoch=1, num_epochs=3))
    if not isinstance(res, LossResult):
        fail(spec, f"default loss {loss.name!r} returned {type(res).__name__}, not LossResult")
    return out, res.total, batch


@register_check("pooling")
def check_pooling_output(spec: ComponentSpec) -> None:
    """MILOutput fields: shapes, dtypes, finiteness, zeros at padding, normalised attention."""
    normalized = getattr(spec.cls, "attention_normalized", True)
    lengths = [5, 2, 7]
    for d, k in POOLING_SETTINGS:
        pool = build_seeded(spec, d, k)
        pool.eval()
        h, mask = padded_features(lengths, d, seed=d + k)
        B, N = mask.shape
        with torch.no_grad():
            out = pool(h, mask)
        where = f"(in_dim={d}, k={k}) "
        if not isinstance(out, MILOutput):
            fail(spec, f"{where}forward must return a MILOutput, got {type(out).__name__}")
        bl = floating(spec, where + "bag_logits", out.bag_logits)
        if tuple(bl.shape) != (B, k):
            fail(spec, f"{where}bag_logits has shape {tuple(bl.shape)}, expected [B, k] = {(B, k)}")
        if not (torch.is_tensor(out.mask) and torch.equal(out.mask.bool(), mask)):
            fail(spec, f"{where}MILOutput.mask must be the mask the pooling was given")
        pad = ~mask
        if out.attention is not None:
            a = floating(spec, where + "attention", out.attention)
            if tuple(a.shape) not in ((B, N), (B, N, k)):
                fail(spec, f"{where}attention has shape {tuple(a.shape)}, expected [B, N] {(B, N)} or [B, N, k]")
            a3 = a if a.dim() == 3 else a.unsqueeze(-1)
            if bool(pad.any()) and a3[pad].abs().max() > 1e-6:
                fail(spec, f"{where}attention is not zero at padded positions")
            if normalized:
                if a3.min() < -1e-6:
                    fail(spec, f"{where}attention has negative weights (set attention_normalized = False "
                                "on the class if it is not a normalised distribution)")
                sums = a3.sum(dim=1)
                if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
                    fail(spec, f"{where}attention does not sum to 1 over each bag's real instances (sums "
                                f"{sums.squeeze(-1).tolist()}); normalise it, or set attention_normalized = False "
                                "on the class")
        if out.inst_logits is not None:
            il = floating(spec, where + "inst_logits", out.inst_logits)
            if tuple(il.shape) != (B, N, k):
                fail(spec, f"{where}inst_logits has shape {tuple(il.shape)}, expected [B, N, k] = {(B, N, k)}")
            if bool(pad.any()) and il[pad].abs().max() > 1e-6:
                fail(spec, f"{where}inst_logits is not zero at padded positions")
        if out.probs is not None:
            p = floating(spec, where + "probs", out.probs)
            if tuple(p.shape) != (B, k):
                fail(spec, f"{where}probs has shape {tuple(p.shape)}, expected {(B, k)}")
            if p.min() < -1e-6 or not torch.allclose(p.sum(-1), torch.ones(B, dtype=p.dtype), atol=1e-5):
                fail(spec, f"{where}probs must be class probabilities (non-negative, rows summing to 1)")
        if out.inst_probs_override is not None:
            ip = floating(spec, where + "inst_probs_override", out.inst_probs_override)
            if tuple(ip.shape) != (B, N, k):
                fail(spec, f"{where}inst_probs_override has shape {tuple(ip.shape)}, expected {(B, N, k)}")
        if not isinstance(out.extras, dict) or not all(isinstance(key, str) for key in out.extras):
            fail(spec, f"{where}extras must be a dict with string keys")
        for key, value in out.extras.items():
            if torch.is_tensor(value) and value.is_floating_point() and bool(torch.isnan(value).any()):
                fail(spec, f"{where}extras[{key!r}] holds NaN")
        if pool.scores_instances:
            with torch.no_grad():
                flat = pool.instance_logits(h[mask])
                full = pool.instance_logits(h)
            if tuple(flat.shape) != (int(mask.sum()), k) or tuple(full.shape) != (B, N, k):
                fail(spec, f"{where}instance_logits must map [..., d] to [..., k]; got {tuple(flat.shape)} for "
                            f"[M, d] and {tuple(full.shape)} for [B, N, d]")
            floating(spec, where + "instance_logits", flat)


@register_check("pooling")
def check_pooling_padding(spec: ComponentSpec) -> None:
    """A padded batch gives every bag the same outputs as the bag alone (eval mode), also when every
    feature is negative (padding filled with 0 instead of -inf before a max)."""
    lengths = [5, 1, 7, 3]
    for d, k in POOLING_SETTINGS:
        pool = build_seeded(spec, d, k)
        pool.eval()
        for negative in (True, False):
            h, mask = padded_features(lengths, d, seed=10 + d + k, negative=negative)
            kind = "all-negative features, " if negative else ""
            with torch.no_grad():
                out = pool(h, mask)
                for b, n in enumerate(lengths):
                    alone = pool(h[b : b + 1, :n], mask[b : b + 1, :n])
                    compare_bag(spec, f"(in_dim={d}, k={k}) {kind}bag {b} (n={n}) batched with padding vs alone",
                                 bag_fields(out, b, n), bag_fields(alone, 0, n))


@register_check("pooling")
def check_pooling_lengths(spec: ComponentSpec) -> None:
    """A pooling with ``takes_lengths`` gives the same outputs (eval mode) when told each bag's length on the host
    (``lengths=``, as ``MILModel`` does) as when it reads them from the mask, with padding and without.

    Passes for poolings without ``takes_lengths`` (they are never given lengths).
    """
    if not getattr(spec.cls, "takes_lengths", False):
        return
    for d, k in POOLING_SETTINGS:
        pool = build_seeded(spec, d, k)
        pool.eval()
        for lengths in ([5, 1, 7, 3], [4, 4, 4]):
            h, mask = padded_features(lengths, d, seed=40 + d + k)
            with torch.no_grad():
                told, read = pool(h, mask, lengths=list(lengths)), pool(h, mask)
            compare_outputs(spec, f"(in_dim={d}, k={k}) bags of lengths {lengths} given as lengths= vs read from "
                                  "the mask", told, read)


@register_check("pooling")
def check_pooling_permutation(spec: ComponentSpec) -> None:
    """Reordering a bag's instances leaves bag outputs unchanged and permutes instance outputs (eval mode).

    Skipped (passes) when the class declares ``permutation_invariant = False``.
    """
    if not getattr(spec.cls, "permutation_invariant", True):
        return
    lengths = [6, 4, 1]
    g = seeded_generator(99)
    for d, k in POOLING_SETTINGS:
        pool = build_seeded(spec, d, k)
        pool.eval()
        h, mask = padded_features(lengths, d, seed=20 + d + k)
        perms = [torch.randperm(n, generator=g) for n in lengths]
        hp = h.clone()
        for b, (n, p) in enumerate(zip(lengths, perms)):
            hp[b, :n] = h[b, p]
        with torch.no_grad():
            out, outp = pool(h, mask), pool(hp, mask)
        for b, (n, p) in enumerate(zip(lengths, perms)):
            compare_bag(spec, f"(in_dim={d}, k={k}) bag {b} with its instances permuted "
                               "(set permutation_invariant = False if the method is order-dependent)",
                         bag_fields(outp, b, n), bag_fields(out, b, n, perm=p))


@register_check("pooling")
def check_pooling_single_instance(spec: ComponentSpec) -> None:
    """Bags of one instance: finite outputs in eval and train mode; attention 1 when normalised."""
    normalized = getattr(spec.cls, "attention_normalized", True)
    for d, k in POOLING_SETTINGS:
        pool = build_seeded(spec, d, k)
        pool.eval()
        for lengths in ([1], [1, 1]):
            h, mask = padded_features(lengths, d, seed=30 + d)
            with torch.no_grad():
                out = pool(h, mask)
            where = f"(in_dim={d}, k={k}) {len(lengths)} bag(s) of one instance: "
            floating(spec, where + "bag_logits", out.bag_logits)
            if tuple(out.bag_logits.shape) != (len(lengths), k):
                fail(spec, where + f"bag_logits has shape {tuple(out.bag_logits.shape)}")
            if out.attention is not None:
                a = floating(spec, where + "attention", out.attention)
                if normalized and not torch.allclose(a, torch.ones_like(a), atol=1e-5):
                    fail(spec, where + f"the attention of a lone instance must be 1, got {a.flatten().tolist()}")
            if out.inst_logits is not None:
                floating(spec, where + "inst_logits", out.inst_logits)
        out, total, _ = _pooling_train_step(spec, pool, d, k, [1, 1, 1], seed=31)
        floating(spec, f"(in_dim={d}, k={k}) training on bags of one instance: bag_logits", out.bag_logits)
        floating(spec, f"(in_dim={d}, k={k}) training on bags of one instance: default loss", total)


@register_check("pooling")
def check_pooling_defaults(spec: ComponentSpec) -> None:
    """The options a user gets by naming the pooling alone (the class defaults, not the suite's small
    ``contract_options``; the caller's options when given) build for 1-d features and 2 classes and give a bag
    of one instance a finite prediction (attention 1 when normalised)."""
    normalized = getattr(spec.cls, "attention_normalized", True)
    options = dict(spec.options) if spec.explicit else {}
    where = f"with {'the options ' + str(options) if options else 'its default options'} (in_dim=1, k=2)"
    try:
        torch.manual_seed(0)
        pool = spec.cls(spec.cls.Config.model_validate(options), 1, 2).eval()
        with torch.no_grad():
            out = pool(torch.randn(1, 1, 1), torch.ones(1, 1, dtype=torch.bool))
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure
        fail(spec, f"{where}: building it or predicting a bag of one instance raised {type(exc).__name__}: {exc}")
    floating(spec, f"{where}: bag_logits", out.bag_logits)
    if tuple(out.bag_logits.shape) != (1, 2):
        fail(spec, f"{where}: bag_logits has shape {tuple(out.bag_logits.shape)}, expected (1, 2)")
    if out.attention is not None and normalized:
        a = floating(spec, f"{where}: attention", out.attention)
        if not torch.allclose(a, torch.ones_like(a), atol=1e-5):
            fail(spec, f"{where}: the attention of a lone instance must be 1, got {a.flatten().tolist()}")


@register_check("pooling")
def check_pooling_gradients(spec: ComponentSpec) -> None:
    """Train mode, default loss: every trainable parameter and the instance features get a gradient.

    Only ``grad is not None`` is required, not a non-zero value (a softmax makes
    e.g. the last attention bias's gradient exactly zero).
    """
    for d, k in POOLING_SETTINGS:
        pool = build_seeded(spec, d, k)
        out, total, batch = _pooling_train_step(spec, pool, d, k, [4, 2, 6, 1], seed=40 + k, need_input_grad=True)
        floating(spec, f"(in_dim={d}, k={k}) default loss", total)
        if total.dim() != 0:
            fail(spec, f"the default loss total must be a scalar, got shape {tuple(total.shape)}")
        if not total.requires_grad:
            fail(spec, f"(in_dim={d}, k={k}) the default loss does not depend on the pooling's inputs or parameters")
        total.backward()
        grad_report(spec, pool.named_parameters(), f"pooling (in_dim={d}, k={k})")
        gx = batch.x.grad
        if gx is None:
            fail(spec, f"(in_dim={d}, k={k}) no gradient reaches the instance features, so an encoder "
                        "before this pooling could not be trained")
        if not bool(torch.isfinite(gx).all()):
            fail(spec, f"(in_dim={d}, k={k}) the gradient of the instance features is not finite")


@register_check("pooling")
def check_pooling_state_dict(spec: ComponentSpec) -> None:
    """state_dict (buffers included) through safetensors into a fresh instance: identical outputs."""
    d, k = POOLING_SETTINGS[-1]
    pool = build_seeded(spec, d, k, seed=1)
    _pooling_train_step(spec, pool, d, k, [3, 5, 2], seed=50)  # let buffers (prototypes...) move
    state = safetensors_roundtrip(spec, pool)
    fresh = build_seeded(spec, d, k, seed=2)
    load_fresh(spec, fresh, state)
    compare_states(spec, "after loading", fresh.state_dict(), pool.state_dict())
    pool.eval()
    fresh.eval()
    h, mask = padded_features([4, 6, 1], d, seed=51)
    with torch.no_grad():
        compare_outputs(spec, "outputs of the reloaded instance", fresh(h, mask), pool(h, mask))


@register_check("pooling")
def check_pooling_determinism(spec: ComponentSpec) -> None:
    """Same seed: same initial state and same train-mode outputs; eval mode ignores the global RNG."""
    d, k = POOLING_SETTINGS[-1]
    a, b = build_seeded(spec, d, k, seed=7), build_seeded(spec, d, k, seed=7)
    compare_states(spec, "two instances built after the same torch.manual_seed", a.state_dict(), b.state_dict())
    h, mask = padded_features([5, 3, 7], d, seed=60)
    outs = []
    for m in (a, b):
        m.train()
        torch.manual_seed(123)
        outs.append(m(h, mask))
    compare_outputs(spec, "train-mode outputs under the same seed", outs[0], outs[1], atol=0.0, rtol=0.0)
    a.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        e1 = a(h, mask)
        torch.manual_seed(2)
        e2 = a(h, mask)
    compare_outputs(spec, "eval-mode outputs under different global seeds (evaluation must be deterministic)",
                     e1, e2, atol=0.0, rtol=0.0)
