"""The component contract suite: generic checks every encoder, pooling, loss and augment must pass.

Plugin authors run it in their own pytest suite, in the spirit of
scikit-learn's ``parametrize_with_checks``::

    from milzoo.testing import parametrize_with_checks
    from my_plugin.pooling import MyPooling

    @parametrize_with_checks([MyPooling, (MyPooling, {"gated": True})])
    def test_contract(component, check):
        check(component)

That generates one test per (component, check) with readable ids such as
``pooling:my_pool-check_pooling_padding``.  ``check_pooling(MyPooling)`` (and
``check_encoder``, ``check_loss``, ``check_augment``) runs every check of one
component at once and raises a single :class:`AssertionError` listing the
failures.  Components may be given as classes, ``(class, options)`` pairs or
registry names (``"pooling:abmil"``).

What is checked (small sizes, one CPU thread, the global RNG restored afterwards):

- every kind: the ``Config`` (defaults validate, ``model_dump``/JSON/TOML round
  trips, unknown keys are rejected), a ``state_dict`` round trip through
  safetensors into a fresh instance (identical outputs), seeded determinism;
- poolings: ``MILOutput`` shapes and types, a padded batch equals the bags one
  at a time, permutation invariance (unless ``permutation_invariant = False``),
  bags of one instance, gradients to every trainable parameter and to the
  instance features under the pooling's default loss;
- encoders: output shape, batch independence, a single instance, gradients;
- losses (bound to a model around a compatible pooling): the ``LossResult``,
  gradients, extra padding does not change the loss, state round trip;
- augments: ``[V, M, *s]`` views, also through :class:`~milzoo.model.MILModel`.

Optional class attributes read by the suite (none is needed by milzoo itself):

``contract_options``      options (dict) the suite uses by default, e.g. small sizes for a slow model
``contract_in_shape``     encoders/augments: the instance shape to test with, e.g. ``(1, 28, 28)``;
                          without it ``(16,)``, ``(1, 28, 28)`` and ``(3, 32, 32)`` are tried in turn
``attention_normalized``  poolings: ``False`` when ``MILOutput.attention`` is not normalised to sum
                          to 1 over a bag's real instances (default ``True``)
``contract_pooling``      losses: the pooling (registry name or class) to pair the loss with; by
                          default a pooling whose ``default_loss`` is this loss, else ``mean``
``contract_needs_views``  losses: ``True`` (3 views) or a number of augmented views the model must make
"""

from __future__ import annotations

import contextlib
import functools
import json
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field, ValidationError
from torch import Tensor

from milzoo.batch import Bag, MILBatch, collate_bags
from milzoo.components import Augment, ComponentConfig, DatasetSource, Encoder, Loss, Pooling
from milzoo.errors import ComponentError
from milzoo.output import LossResult, MILOutput, TrainState

__all__ = [
    "ComponentSpec",
    "all_registered_components",
    "check_augment",
    "check_component",
    "check_encoder",
    "check_loss",
    "check_pooling",
    "checks_for",
    "parametrize_with_checks",
    "resolve",
]

#: the kinds the suite covers (datasets are not: they load files)
KIND_BASES: dict[str, type] = {"encoder": Encoder, "pooling": Pooling, "loss": Loss, "augment": Augment}
#: instance shapes tried when an encoder/augment sets no ``contract_in_shape``
IN_SHAPE_CANDIDATES: tuple[tuple[int, ...], ...] = ((16,), (1, 28, 28), (3, 32, 32))
#: (in_dim, num_classes) settings every pooling is checked with (the defaults must work for any in_dim >= 1;
#: checks that need one setting take the last)
POOLING_SETTINGS: tuple[tuple[int, int], ...] = ((1, 2), (8, 2), (12, 3))
#: tolerance of "the same result" comparisons (float32)
ATOL, RTOL = 1e-5, 1e-4
#: the option name used to check that unknown keys are rejected
_UNKNOWN_KEY = "contract_unknown_option"


# --------------------------------------------------------------------------- component specs


@dataclass(frozen=True, eq=False)
class ComponentSpec:
    """A component class plus the options the checks build it with."""

    cls: type
    options: dict[str, Any] = field(default_factory=dict)
    explicit: bool = False  # options given by the caller: shown in the id

    @property
    def kind(self) -> str:
        return _kind_of(self.cls)

    @property
    def name(self) -> str:
        return getattr(self.cls, "name", "") or self.cls.__name__

    @property
    def id(self) -> str:
        base = f"{self.kind}:{self.name}"
        if self.explicit and self.options:
            opts = ",".join(
                f"{k}={json.dumps(v, sort_keys=True, separators=(',', ':'), default=str).replace(chr(34), '')}"
                for k, v in sorted(self.options.items())
            )
            base += f"({opts})"
        return base

    def config(self) -> ComponentConfig:
        return self.cls.Config.model_validate(dict(self.options))

    def __repr__(self) -> str:
        return self.id


def _kind_of(cls: Any) -> str:
    if isinstance(cls, type):
        if issubclass(cls, DatasetSource):
            raise TypeError(
                f"{cls.__name__} is a dataset source; the contract suite covers encoders, poolings, "
                "losses and augments only."
            )
        for kind, base in KIND_BASES.items():
            if issubclass(cls, base):
                return kind
    raise TypeError(
        f"{cls!r} is not a milzoo component class (a subclass of milzoo.components.Encoder, Pooling, "
        "Loss or Augment)."
    )


def resolve(component: Any, options: dict[str, Any] | None = None) -> ComponentSpec:
    """A :class:`ComponentSpec` from a class, ``(class, options)``, ``"kind:name"`` or a spec.

    Without ``options`` the class attribute ``contract_options`` (if any) is used.
    """
    if isinstance(component, ComponentSpec):
        if options is None:
            return component
        return ComponentSpec(component.cls, dict(options), True)
    if isinstance(component, tuple):
        if len(component) != 2 or not isinstance(component[1], dict):
            raise TypeError(f"expected (component, options_dict), got {component!r}")
        if options is not None:
            raise TypeError("give options either in the tuple or as the options argument, not both")
        return resolve(component[0], component[1])
    if isinstance(component, str):
        component = _lookup(component)
    _kind_of(component)
    if options is None:
        return ComponentSpec(component, dict(getattr(component, "contract_options", None) or {}), False)
    return ComponentSpec(component, dict(options), True)


def _lookup(ref: str) -> type:
    from milzoo import registry

    if ":" in ref:
        kind, name = ref.split(":", 1)
        if kind not in KIND_BASES:
            raise ValueError(f"{ref!r}: the contract suite covers the kinds {', '.join(KIND_BASES)}")
        return registry.get_component(kind, name)
    found = [registry.get_entry(k, ref).obj for k in KIND_BASES if ref in registry.names(k)]
    if len(found) != 1:
        raise ValueError(
            f"{ref!r} names {'no' if not found else 'more than one'} registered component; "
            "write it as 'kind:name', e.g. 'pooling:abmil'"
        )
    return found[0]


def all_registered_components() -> list[type]:
    """Every registered encoder, pooling, loss and augment class (datasets skipped), by kind and name."""
    from milzoo import registry

    out: list[type] = []
    for kind in KIND_BASES:
        for entry in registry.entries(kind):
            if entry.obj not in out:
                out.append(entry.obj)
    return out


# --------------------------------------------------------------------------- helpers


class ContractFailure(AssertionError):
    """A contract check failed; the message names the component, the check and the problem."""


def _fail(spec: ComponentSpec, message: str) -> None:
    raise ContractFailure(f"{spec.id}: {message}")


@contextlib.contextmanager
def _isolated(threads: int = 1) -> Iterator[None]:
    """One torch thread, gradients on, and the caller's global RNG state restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            yield
    finally:
        torch.set_num_threads(before)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _build(spec: ComponentSpec, *args: Any, seed: int = 0):
    torch.manual_seed(seed)
    return spec.cls(spec.config(), *args)


def _make_bags(lengths: list[int], shape: tuple[int, ...], k: int, seed: int,
               candidates: bool = False) -> list[Bag]:
    """Random bags (``randn`` for feature vectors, ``rand`` in [0, 1] for images); labels cycle over classes."""
    g = _generator(seed)
    bags = []
    for i, n in enumerate(lengths):
        x = torch.randn(n, *shape, generator=g) if len(shape) == 1 else torch.rand(n, *shape, generator=g)
        y = i % k
        cand = None
        if candidates:
            cand = torch.zeros(k)
            cand[y] = 1.0
            cand[(y + 1 + i) % k] = 1.0  # a second candidate label (partial-label losses)
        bags.append(Bag(x=x, y=y, bag_id=f"bag{i}", index=i, candidates=cand))
    return bags


def _dataset(bags: list[Bag], k: int):
    from milzoo.datasets.base import BagListDataset

    return BagListDataset(bags, [f"class{c}" for c in range(k)])


def _batch(ds, pad_to: int | None = None) -> MILBatch:
    batch = collate_bags([ds[i] for i in range(len(ds))])
    if pad_to is not None and pad_to > batch.mask.shape[1]:
        extra = pad_to - batch.mask.shape[1]
        b = batch.size
        batch.x = torch.cat([batch.x, batch.x.new_zeros(b, extra, *batch.x.shape[2:])], dim=1)
        batch.mask = torch.cat([batch.mask, torch.zeros(b, extra, dtype=torch.bool)], dim=1)
        if batch.inst_y is not None:
            batch.inst_y = torch.cat([batch.inst_y, torch.full((b, extra), -1, dtype=torch.long)], dim=1)
    return batch


def _padded(lengths: list[int], d: int, seed: int, negative: bool = False) -> tuple[Tensor, Tensor]:
    """``h [B, N, d]`` (zeros at padding) and ``mask [B, N]`` for bags of the given lengths.

    ``negative``: every real feature below -1, so a max over instances that fills padding with 0 instead of
    -inf picks the padding (a bug that random signs catch only by chance).
    """
    g = _generator(seed)
    n_max = max(lengths)
    h = torch.zeros(len(lengths), n_max, d)
    mask = torch.zeros(len(lengths), n_max, dtype=torch.bool)
    for b, n in enumerate(lengths):
        x = torch.randn(n, d, generator=g)
        h[b, :n] = -(x.abs() + 1.0) if negative else x
        mask[b, :n] = True
    return h, mask


def _assert_close(spec: ComponentSpec, what: str, got: Tensor, want: Tensor,
                  atol: float = ATOL, rtol: float = RTOL) -> None:
    if tuple(got.shape) != tuple(want.shape):
        _fail(spec, f"{what}: shape {tuple(got.shape)} differs from {tuple(want.shape)}")
    g, w = got.detach().double(), want.detach().double()
    if g.numel() == 0:
        return
    if not torch.equal(torch.isnan(g), torch.isnan(w)):
        _fail(spec, f"{what}: NaN in one result but not the other")
    ok = torch.isclose(g, w, atol=atol, rtol=rtol, equal_nan=True)
    if not bool(ok.all()):
        diff = (g - w).abs().nan_to_num(0.0).max().item()
        _fail(spec, f"{what}: max abs difference {diff:.3g} exceeds the tolerance (atol {atol:g}, rtol {rtol:g})")


def _bag_fields(out: MILOutput, b: int, n: int, perm: Tensor | None = None) -> dict[str, Tensor]:
    """The per-bag outputs of bag ``b`` (``n`` real instances), instance tensors reordered by ``perm``."""
    idx = torch.arange(n) if perm is None else perm
    fields = {"bag_logits": out.bag_logits[b]}
    if out.probs is not None:
        fields["probs"] = out.probs[b]
    for name in ("attention", "inst_logits", "inst_probs_override"):
        t = getattr(out, name)
        if t is not None:
            fields[name] = t[b, idx]
    return fields


def _compare_bag(spec, what: str, got: dict[str, Tensor], want: dict[str, Tensor], atol=ATOL, rtol=RTOL) -> None:
    if set(got) != set(want):
        _fail(spec, f"{what}: the outputs set differ ({sorted(got)} vs {sorted(want)})")
    for name in want:
        _assert_close(spec, f"{what}: {name}", got[name], want[name], atol, rtol)


def _all_tensors(out: MILOutput) -> dict[str, Tensor]:
    """Every tensor of an output, extras included (for exact-equality comparisons)."""
    res = {}
    for name in ("bag_logits", "mask", "inst_logits", "attention", "features", "probs", "inst_probs_override"):
        t = getattr(out, name)
        if t is not None:
            res[name] = t
    for key, value in out.extras.items():
        if torch.is_tensor(value):
            res[f"extras[{key!r}]"] = value
    return res


def _compare_outputs(spec, what: str, a: MILOutput, b: MILOutput, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    ta, tb = _all_tensors(a), _all_tensors(b)
    if set(ta) != set(tb):
        _fail(spec, f"{what}: different output fields ({sorted(ta)} vs {sorted(tb)})")
    for name in ta:
        if ta[name].is_floating_point():
            _assert_close(spec, f"{what}: {name}", ta[name], tb[name], atol, rtol)
        elif not torch.equal(ta[name], tb[name]):
            _fail(spec, f"{what}: {name} differs")


def _compare_states(spec, what: str, a: dict[str, Any], b: dict[str, Any]) -> None:
    if set(a) != set(b):
        _fail(spec, f"{what}: state_dict keys differ: {sorted(set(a) ^ set(b))[:6]}")
    for key in a:
        va, vb = a[key], b[key]
        if torch.is_tensor(va) and torch.is_tensor(vb):
            if va.shape != vb.shape or va.dtype != vb.dtype or not torch.equal(va, vb):
                _fail(spec, f"{what}: state_dict entry {key!r} differs")


def _safetensors_roundtrip(spec: ComponentSpec, module: torch.nn.Module) -> dict[str, Tensor]:
    import safetensors.torch

    sd = module.state_dict()
    not_tensors = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if not_tensors:
        _fail(spec, f"state_dict holds non-tensor entries {not_tensors[:5]}; checkpoints are safetensors only")
    try:
        blob = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in sd.items()})
    except Exception as exc:  # noqa: BLE001
        _fail(
            spec,
            f"state_dict cannot be saved with safetensors ({type(exc).__name__}: {exc}). Do not tie or share "
            "tensors between parameters/buffers (keep a plain attribute, or register only one of them).",
        )
    return safetensors.torch.load(blob)


def _load_fresh(spec, fresh: torch.nn.Module, state: dict[str, Tensor]) -> None:
    try:
        fresh.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        _fail(spec, f"a fresh instance cannot load the saved state_dict strictly ({type(exc).__name__}: {exc})")


def _floating(spec, what: str, t: Any) -> Tensor:
    if not torch.is_tensor(t):
        _fail(spec, f"{what} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        _fail(spec, f"{what} must be a floating-point tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        _fail(spec, f"{what} holds non-finite values")
    return t


def _grad_report(spec, named_params: Iterable[tuple[str, torch.nn.Parameter]], where: str) -> None:
    missing, bad = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
        elif not bool(torch.isfinite(p.grad).all()):
            bad.append(name)
    if missing:
        _fail(
            spec,
            f"trainable parameters of the {where} got no gradient: {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}. Every trainable parameter must be used in the training "
            "forward (or created with requires_grad=False).",
        )
    if bad:
        _fail(spec, f"non-finite gradients in the {where}: {', '.join(bad[:8])}")


# --------------------------------------------------------------------------- check registry

_CHECKS: dict[str, list[Callable]] = {kind: [] for kind in KIND_BASES}


def _check(*kinds: str):
    """Register a check for ``kinds``; the check gets a resolved spec and runs isolated."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(component: Any, options: dict[str, Any] | None = None) -> None:
            spec = resolve(component, options)
            if spec.kind not in kinds:
                raise TypeError(f"{fn.__name__} checks {'/'.join(kinds)} components, not the {spec.kind} {spec.name!r}")
            with _isolated():
                fn(spec)

        wrapper.kinds = kinds
        for kind in kinds:
            _CHECKS[kind].append(wrapper)
        return wrapper

    return deco


def checks_for(kind: str) -> list[Callable]:
    """The check functions that apply to components of ``kind`` (each takes ``component, options=None``)."""
    if kind not in _CHECKS:
        raise ValueError(f"no contract checks for kind {kind!r}; kinds: {', '.join(_CHECKS)}")
    return list(_CHECKS[kind])


# --------------------------------------------------------------------------- all kinds


@_check("encoder", "pooling", "loss", "augment")
def check_config(spec: ComponentSpec) -> None:
    """Metadata, default Config, dump/JSON/TOML round trips and rejection of unknown keys."""
    import tomli_w

    cls = spec.cls
    if not (isinstance(getattr(cls, "name", None), str) and cls.name):
        _fail(spec, "the class needs a registry `name` (a non-empty string class attribute)")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, ComponentConfig)):
        _fail(spec, "Config must subclass milzoo.components.ComponentConfig")
    if not (cls.__doc__ or "").strip():
        _fail(spec, "the class needs a docstring (its first line is the summary `milzoo list` shows)")
    try:
        default = cls.Config()
    except ValidationError as exc:
        _fail(spec, f"the default Config does not validate; every option needs a working default ({exc})")
    try:
        cfg = spec.config()
    except ValidationError as exc:
        _fail(spec, f"the options {spec.options} do not validate ({exc})")
    for label, c in (("default", default), ("given", cfg)):
        again = cls.Config.model_validate(c.model_dump())
        if again != c:
            _fail(spec, f"{label} Config: model_validate(model_dump()) gives {again!r}, not {c!r}")
        as_json = c.model_dump(mode="json")
        try:
            json.dumps(as_json)
        except TypeError as exc:
            _fail(spec, f"{label} Config: model_dump(mode='json') is not JSON-able ({exc})")
        if cls.Config.model_validate(as_json) != c:
            _fail(spec, f"{label} Config does not survive a JSON round trip (checkpoint config.json)")
        # what a run directory's recipe.toml stores: JSON values without None, through TOML
        stored = c.model_dump(mode="json", exclude_none=True)
        try:
            back = tomllib.loads(tomli_w.dumps({"t": stored}))["t"]
        except Exception as exc:  # noqa: BLE001
            _fail(spec, f"{label} Config cannot be written to TOML ({type(exc).__name__}: {exc})")
        if cls.Config.model_validate(back) != c:
            _fail(
                spec,
                f"{label} Config does not survive the recipe round trip (JSON dump without None values, "
                "through TOML), so a resumed run would differ; an option whose default is not None must not "
                "accept None",
            )
    _check_none_defaults(spec)
    try:
        cls.Config.model_validate({**spec.options, _UNKNOWN_KEY: 1})
    except ValidationError:
        pass
    else:
        _fail(spec, "Config accepts unknown keys; subclass ComponentConfig (extra='forbid') without overriding it")


def _check_none_defaults(spec: ComponentSpec) -> None:
    """The documented rule: an option whose default is not None must not accept None.

    Recipes and checkpoints store options without None values, so an explicit ``None`` would silently turn
    into the default on ``--resume`` or when a checkpoint is loaded.
    """
    cls = spec.cls
    for fname, f in cls.Config.model_fields.items():
        if f.is_required():
            continue
        default = f.get_default(call_default_factory=True)
        if default is None:
            continue
        try:
            got = cls.Config.model_validate({**spec.options, fname: None})
        except ValidationError:
            continue
        if getattr(got, fname, default) is None:
            _fail(spec, f"option {fname!r} has the default {default!r} but accepts None; recipes and checkpoints "
                        f"store options without None values, so None would come back as {default!r} on --resume "
                        f"and in a loaded checkpoint. Drop `| None` from its type, or make None its default")


# --------------------------------------------------------------------------- poolings


def _pooling_model(pool: Pooling, d: int):
    from milzoo.builtin.encoders import IdentityEncoder
    from milzoo.model import MILModel

    return MILModel(IdentityEncoder(IdentityEncoder.Config(), (d,)), pool)


def _default_loss(spec: ComponentSpec, k: int) -> Loss:
    from milzoo import registry

    name = getattr(spec.cls, "default_loss", "bag_ce")
    loss_cls = registry.get_component("loss", name)
    return loss_cls(loss_cls.Config(), k)


def _pooling_train_step(spec, pool: Pooling, d: int, k: int, lengths: list[int], seed: int,
                        need_input_grad: bool = False):
    """One trainer-like step: forward (train mode), ``after_forward``, default loss.  Returns (out, total, batch)."""
    model = _pooling_model(pool, d)
    ds = _dataset(_make_bags(lengths, (d,), k, seed), k)
    batch = _batch(ds)
    if need_input_grad:
        batch.x.requires_grad_(True)
    loss = _default_loss(spec, k)
    try:
        loss.bind(model, ds)
    except ComponentError as exc:
        _fail(spec, f"its default loss {loss.name!r} refuses it in bind(): {exc}")
    model.train()
    torch.manual_seed(seed + 1)
    out = model(batch)
    with torch.no_grad():
        pool.after_forward(out, batch)
    res = loss(out, batch, TrainState(epoch=1, num_epochs=3))
    if not isinstance(res, LossResult):
        _fail(spec, f"default loss {loss.name!r} returned {type(res).__name__}, not LossResult")
    return out, res.total, batch


@_check("pooling")
def check_pooling_output(spec: ComponentSpec) -> None:
    """MILOutput fields: shapes, dtypes, finiteness, zeros at padding, normalised attention."""
    normalized = getattr(spec.cls, "attention_normalized", True)
    lengths = [5, 2, 7]
    for d, k in POOLING_SETTINGS:
        pool = _build(spec, d, k)
        pool.eval()
        h, mask = _padded(lengths, d, seed=d + k)
        B, N = mask.shape
        with torch.no_grad():
            out = pool(h, mask)
        where = f"(in_dim={d}, k={k}) "
        if not isinstance(out, MILOutput):
            _fail(spec, f"{where}forward must return a MILOutput, got {type(out).__name__}")
        bl = _floating(spec, where + "bag_logits", out.bag_logits)
        if tuple(bl.shape) != (B, k):
            _fail(spec, f"{where}bag_logits has shape {tuple(bl.shape)}, expected [B, k] = {(B, k)}")
        if not (torch.is_tensor(out.mask) and torch.equal(out.mask.bool(), mask)):
            _fail(spec, f"{where}MILOutput.mask must be the mask the pooling was given")
        pad = ~mask
        if out.attention is not None:
            a = _floating(spec, where + "attention", out.attention)
            if tuple(a.shape) not in ((B, N), (B, N, k)):
                _fail(spec, f"{where}attention has shape {tuple(a.shape)}, expected [B, N] {(B, N)} or [B, N, k]")
            a3 = a if a.dim() == 3 else a.unsqueeze(-1)
            if bool(pad.any()) and a3[pad].abs().max() > 1e-6:
                _fail(spec, f"{where}attention is not zero at padded positions")
            if normalized:
                if a3.min() < -1e-6:
                    _fail(spec, f"{where}attention has negative weights (set attention_normalized = False "
                                "on the class if it is not a normalised distribution)")
                sums = a3.sum(dim=1)
                if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
                    _fail(spec, f"{where}attention does not sum to 1 over each bag's real instances (sums "
                                f"{sums.squeeze(-1).tolist()}); normalise it, or set attention_normalized = False "
                                "on the class")
        if out.inst_logits is not None:
            il = _floating(spec, where + "inst_logits", out.inst_logits)
            if tuple(il.shape) != (B, N, k):
                _fail(spec, f"{where}inst_logits has shape {tuple(il.shape)}, expected [B, N, k] = {(B, N, k)}")
            if bool(pad.any()) and il[pad].abs().max() > 1e-6:
                _fail(spec, f"{where}inst_logits is not zero at padded positions")
        if out.probs is not None:
            p = _floating(spec, where + "probs", out.probs)
            if tuple(p.shape) != (B, k):
                _fail(spec, f"{where}probs has shape {tuple(p.shape)}, expected {(B, k)}")
            if p.min() < -1e-6 or not torch.allclose(p.sum(-1), torch.ones(B, dtype=p.dtype), atol=1e-5):
                _fail(spec, f"{where}probs must be class probabilities (non-negative, rows summing to 1)")
        if out.inst_probs_override is not None:
            ip = _floating(spec, where + "inst_probs_override", out.inst_probs_override)
            if tuple(ip.shape) != (B, N, k):
                _fail(spec, f"{where}inst_probs_override has shape {tuple(ip.shape)}, expected {(B, N, k)}")
        if not isinstance(out.extras, dict) or not all(isinstance(key, str) for key in out.extras):
            _fail(spec, f"{where}extras must be a dict with string keys")
        for key, value in out.extras.items():
            if torch.is_tensor(value) and value.is_floating_point() and bool(torch.isnan(value).any()):
                _fail(spec, f"{where}extras[{key!r}] holds NaN")
        if pool.scores_instances:
            with torch.no_grad():
                flat = pool.instance_logits(h[mask])
                full = pool.instance_logits(h)
            if tuple(flat.shape) != (int(mask.sum()), k) or tuple(full.shape) != (B, N, k):
                _fail(spec, f"{where}instance_logits must map [..., d] to [..., k]; got {tuple(flat.shape)} for "
                            f"[M, d] and {tuple(full.shape)} for [B, N, d]")
            _floating(spec, where + "instance_logits", flat)


@_check("pooling")
def check_pooling_padding(spec: ComponentSpec) -> None:
    """A padded batch gives every bag the same outputs as the bag alone (eval mode), also when every
    feature is negative (padding filled with 0 instead of -inf before a max)."""
    lengths = [5, 1, 7, 3]
    for d, k in POOLING_SETTINGS:
        pool = _build(spec, d, k)
        pool.eval()
        for negative in (True, False):
            h, mask = _padded(lengths, d, seed=10 + d + k, negative=negative)
            kind = "all-negative features, " if negative else ""
            with torch.no_grad():
                out = pool(h, mask)
                for b, n in enumerate(lengths):
                    alone = pool(h[b : b + 1, :n], mask[b : b + 1, :n])
                    _compare_bag(spec, f"(in_dim={d}, k={k}) {kind}bag {b} (n={n}) batched with padding vs alone",
                                 _bag_fields(out, b, n), _bag_fields(alone, 0, n))


@_check("pooling")
def check_pooling_permutation(spec: ComponentSpec) -> None:
    """Reordering a bag's instances leaves bag outputs unchanged and permutes instance outputs (eval mode).

    Skipped (passes) when the class declares ``permutation_invariant = False``.
    """
    if not getattr(spec.cls, "permutation_invariant", True):
        return
    lengths = [6, 4, 1]
    g = _generator(99)
    for d, k in POOLING_SETTINGS:
        pool = _build(spec, d, k)
        pool.eval()
        h, mask = _padded(lengths, d, seed=20 + d + k)
        perms = [torch.randperm(n, generator=g) for n in lengths]
        hp = h.clone()
        for b, (n, p) in enumerate(zip(lengths, perms)):
            hp[b, :n] = h[b, p]
        with torch.no_grad():
            out, outp = pool(h, mask), pool(hp, mask)
        for b, (n, p) in enumerate(zip(lengths, perms)):
            _compare_bag(spec, f"(in_dim={d}, k={k}) bag {b} with its instances permuted "
                               "(set permutation_invariant = False if the method is order-dependent)",
                         _bag_fields(outp, b, n), _bag_fields(out, b, n, perm=p))


@_check("pooling")
def check_pooling_single_instance(spec: ComponentSpec) -> None:
    """Bags of one instance: finite outputs in eval and train mode; attention 1 when normalised."""
    normalized = getattr(spec.cls, "attention_normalized", True)
    for d, k in POOLING_SETTINGS:
        pool = _build(spec, d, k)
        pool.eval()
        for lengths in ([1], [1, 1]):
            h, mask = _padded(lengths, d, seed=30 + d)
            with torch.no_grad():
                out = pool(h, mask)
            where = f"(in_dim={d}, k={k}) {len(lengths)} bag(s) of one instance: "
            _floating(spec, where + "bag_logits", out.bag_logits)
            if tuple(out.bag_logits.shape) != (len(lengths), k):
                _fail(spec, where + f"bag_logits has shape {tuple(out.bag_logits.shape)}")
            if out.attention is not None:
                a = _floating(spec, where + "attention", out.attention)
                if normalized and not torch.allclose(a, torch.ones_like(a), atol=1e-5):
                    _fail(spec, where + f"the attention of a lone instance must be 1, got {a.flatten().tolist()}")
            if out.inst_logits is not None:
                _floating(spec, where + "inst_logits", out.inst_logits)
        out, total, _ = _pooling_train_step(spec, pool, d, k, [1, 1, 1], seed=31)
        _floating(spec, f"(in_dim={d}, k={k}) training on bags of one instance: bag_logits", out.bag_logits)
        _floating(spec, f"(in_dim={d}, k={k}) training on bags of one instance: default loss", total)


@_check("pooling")
def check_pooling_gradients(spec: ComponentSpec) -> None:
    """Train mode, default loss: every trainable parameter and the instance features get a gradient.

    Only ``grad is not None`` is required, not a non-zero value (a softmax makes
    e.g. the last attention bias's gradient exactly zero).
    """
    for d, k in POOLING_SETTINGS:
        pool = _build(spec, d, k)
        out, total, batch = _pooling_train_step(spec, pool, d, k, [4, 2, 6, 1], seed=40 + k, need_input_grad=True)
        _floating(spec, f"(in_dim={d}, k={k}) default loss", total)
        if total.dim() != 0:
            _fail(spec, f"the default loss total must be a scalar, got shape {tuple(total.shape)}")
        if not total.requires_grad:
            _fail(spec, f"(in_dim={d}, k={k}) the default loss does not depend on the pooling's inputs or parameters")
        total.backward()
        _grad_report(spec, pool.named_parameters(), f"pooling (in_dim={d}, k={k})")
        gx = batch.x.grad
        if gx is None:
            _fail(spec, f"(in_dim={d}, k={k}) no gradient reaches the instance features, so an encoder "
                        "before this pooling could not be trained")
        if not bool(torch.isfinite(gx).all()):
            _fail(spec, f"(in_dim={d}, k={k}) the gradient of the instance features is not finite")


@_check("pooling")
def check_pooling_state_dict(spec: ComponentSpec) -> None:
    """state_dict (buffers included) through safetensors into a fresh instance: identical outputs."""
    d, k = POOLING_SETTINGS[-1]
    pool = _build(spec, d, k, seed=1)
    _pooling_train_step(spec, pool, d, k, [3, 5, 2], seed=50)  # let buffers (prototypes...) move
    state = _safetensors_roundtrip(spec, pool)
    fresh = _build(spec, d, k, seed=2)
    _load_fresh(spec, fresh, state)
    _compare_states(spec, "after loading", fresh.state_dict(), pool.state_dict())
    pool.eval()
    fresh.eval()
    h, mask = _padded([4, 6, 1], d, seed=51)
    with torch.no_grad():
        _compare_outputs(spec, "outputs of the reloaded instance", fresh(h, mask), pool(h, mask))


@_check("pooling")
def check_pooling_determinism(spec: ComponentSpec) -> None:
    """Same seed: same initial state and same train-mode outputs; eval mode ignores the global RNG."""
    d, k = POOLING_SETTINGS[-1]
    a, b = _build(spec, d, k, seed=7), _build(spec, d, k, seed=7)
    _compare_states(spec, "two instances built after the same torch.manual_seed", a.state_dict(), b.state_dict())
    h, mask = _padded([5, 3, 7], d, seed=60)
    outs = []
    for m in (a, b):
        m.train()
        torch.manual_seed(123)
        outs.append(m(h, mask))
    _compare_outputs(spec, "train-mode outputs under the same seed", outs[0], outs[1], atol=0.0, rtol=0.0)
    a.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        e1 = a(h, mask)
        torch.manual_seed(2)
        e2 = a(h, mask)
    _compare_outputs(spec, "eval-mode outputs under different global seeds (evaluation must be deterministic)",
                     e1, e2, atol=0.0, rtol=0.0)


# --------------------------------------------------------------------------- encoders and augments

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
                m = _build(spec, shape)
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
    _fail(spec, "no test input shape works; set `contract_in_shape = (...)` on the class. Tried "
                + "; ".join(tried))
    raise AssertionError  # unreachable


def _instances(shape: tuple[int, ...], m: int, seed: int) -> Tensor:
    g = _generator(seed)
    return torch.randn(m, *shape, generator=g) if len(shape) == 1 else torch.rand(m, *shape, generator=g)


@_check("encoder")
def check_encoder_output(spec: ComponentSpec) -> None:
    """``[M, *in_shape] -> [M, out_dim]``, floating and finite, in eval and train mode."""
    shape = _in_shape(spec)
    enc = _build(spec, shape)
    if not isinstance(getattr(enc, "out_dim", None), int) or enc.out_dim <= 0:
        _fail(spec, f"the constructor must set out_dim to a positive int, got {getattr(enc, 'out_dim', None)!r}")
    if tuple(enc.in_shape) != shape:
        _fail(spec, f"in_shape is {enc.in_shape}, expected {shape} (call Encoder.__init__)")
    x = _instances(shape, 5, seed=70)
    for mode in ("eval", "train"):
        enc.train(mode == "train")
        with torch.no_grad():
            z = enc(x)
        _floating(spec, f"{mode}-mode output", z)
        if tuple(z.shape) != (5, enc.out_dim):
            _fail(spec, f"{mode}-mode output has shape {tuple(z.shape)}, expected [M, out_dim] = {(5, enc.out_dim)}")


@_check("encoder")
def check_encoder_batch_independence(spec: ComponentSpec) -> None:
    """Eval mode: encoding instances together equals encoding them one at a time (bags share encoder calls)."""
    shape = _in_shape(spec)
    enc = _build(spec, shape)
    enc.eval()
    x = _instances(shape, 4, seed=71)
    with torch.no_grad():
        together = enc(x)
        for i in range(x.shape[0]):
            _assert_close(spec, f"instance {i} encoded with others vs alone", together[i : i + 1], enc(x[i : i + 1]))


@_check("encoder")
def check_encoder_single_instance(spec: ComponentSpec) -> None:
    """A single instance (a batch holding one bag of one instance) encodes in train and eval mode."""
    shape = _in_shape(spec)
    enc = _build(spec, shape)
    x = _instances(shape, 1, seed=72)
    for mode in ("eval", "train"):
        enc.train(mode == "train")
        try:
            z = enc(x)
        except Exception as exc:  # noqa: BLE001
            _fail(spec, f"{mode} mode fails on a single instance ({type(exc).__name__}: {exc})")
        _floating(spec, f"{mode}-mode output for one instance", z)


def _encoder_model(enc: Encoder, k: int, augment: Augment | None = None):
    from milzoo.builtin.poolings import MeanPooling
    from milzoo.model import MILModel

    torch.manual_seed(5)
    return MILModel(enc, MeanPooling(MeanPooling.Config(), enc.out_dim, k), augment)


def _bce_step(model, shape, k: int, lengths: list[int], seed: int):
    from milzoo.builtin.losses import BagCrossEntropy

    ds = _dataset(_make_bags(lengths, shape, k, seed), k)
    batch = _batch(ds)
    model.train()
    torch.manual_seed(seed + 1)
    out = model(batch)
    return out, BagCrossEntropy(BagCrossEntropy.Config(), k)(out, batch, TrainState()).total


@_check("encoder")
def check_encoder_gradients(spec: ComponentSpec) -> None:
    """Train mode, encoder + mean pooling + bag cross-entropy: every trainable parameter gets a gradient."""
    shape = _in_shape(spec)
    enc = _build(spec, shape)
    model = _encoder_model(enc, 2)
    _, total = _bce_step(model, shape, 2, [3, 1, 2], seed=73)
    _floating(spec, "the loss of a model around the encoder", total)
    if not any(p.requires_grad for p in enc.parameters()):
        return
    total.backward()
    _grad_report(spec, enc.named_parameters(), "encoder")


@_check("encoder", "augment")
def check_state_dict_roundtrip(spec: ComponentSpec) -> None:
    """state_dict through safetensors into a fresh instance: same state, same outputs."""
    shape = _in_shape(spec)
    comp = _build(spec, shape, seed=1)
    x = _instances(shape, 3, seed=74)
    comp.train()
    torch.manual_seed(0)
    with torch.no_grad():
        comp(x)  # moves running statistics (BatchNorm) if any
    state = _safetensors_roundtrip(spec, comp)
    fresh = _build(spec, shape, seed=2)
    _load_fresh(spec, fresh, state)
    _compare_states(spec, "after loading", fresh.state_dict(), comp.state_dict())
    outs = []
    for m in (comp, fresh):
        m.train(spec.kind == "augment")  # augments only act in training
        torch.manual_seed(3)
        with torch.no_grad():
            outs.append(m(x))
    _assert_close(spec, "outputs of the reloaded instance", outs[1], outs[0], atol=1e-6, rtol=1e-5)


@_check("encoder", "augment")
def check_seeded_determinism(spec: ComponentSpec) -> None:
    """Same seed: same initial state and same train-mode outputs."""
    shape = _in_shape(spec)
    a, b = _build(spec, shape, seed=7), _build(spec, shape, seed=7)
    _compare_states(spec, "two instances built after the same torch.manual_seed", a.state_dict(), b.state_dict())
    x = _instances(shape, 3, seed=75)
    outs = []
    for m in (a, b):
        m.train()
        torch.manual_seed(11)
        with torch.no_grad():
            outs.append(m(x))
    _assert_close(spec, "train-mode outputs under the same seed", outs[1], outs[0], atol=0.0, rtol=0.0)
    if spec.kind == "encoder":
        a.eval()
        with torch.no_grad():
            torch.manual_seed(1)
            e1 = a(x)
            torch.manual_seed(2)
            e2 = a(x)
        _assert_close(spec, "eval-mode outputs under different global seeds (evaluation must be deterministic)",
                      e2, e1, atol=0.0, rtol=0.0)


@_check("augment")
def check_augment_output(spec: ComponentSpec) -> None:
    """``[M, *s] -> [V, M, *s]`` with ``V = num_views``; also inside a MILModel (``view_features``)."""
    from milzoo.builtin.encoders import IdentityEncoder

    shape = _in_shape(spec)
    aug = _build(spec, shape)
    v = getattr(aug, "num_views", None)
    if not isinstance(v, int) or v < 1:
        _fail(spec, f"num_views must be a positive int set by the constructor, got {v!r}")
    x = _instances(shape, 4, seed=76)
    aug.train()
    with torch.no_grad():
        views = aug(x)
    _floating(spec, "views", views)
    if tuple(views.shape) != (v, 4, *shape):
        _fail(spec, f"views have shape {tuple(views.shape)}, expected [V, M, *in_shape] = {(v, 4, *shape)}")
    enc = IdentityEncoder(IdentityEncoder.Config(), shape)
    model = _encoder_model(enc, 2, aug)
    out, total = _bce_step(model, shape, 2, [3, 1], seed=77)
    vf = out.extras.get("view_features")
    if vf is None or tuple(vf.shape) != (v, 4, enc.out_dim):
        _fail(spec, f"inside a MILModel the view features should be [V, M, d] = {(v, 4, enc.out_dim)}, "
                    f"got {None if vf is None else tuple(vf.shape)}")
    _floating(spec, "the loss of a model using the augmentation", total)


# --------------------------------------------------------------------------- losses


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
    from milzoo import registry

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


class _LossSetup:
    """A small model (mlp encoder + the paired pooling [+ views]) and dataset, with the loss bound to them."""

    def __init__(self, spec: ComponentSpec, k: int, seed: int = 0, pad_to: int | None = None):
        from milzoo.builtin.encoders import MLPEncoder
        from milzoo.model import MILModel

        self.spec, self.k = spec, k
        self.pool_spec = _loss_pooling_spec(spec)
        views = getattr(spec.cls, "contract_needs_views", False)
        torch.manual_seed(seed)
        enc = MLPEncoder(MLPEncoder.Config(dims=[LOSS_DIM]), (LOSS_DIM,))
        pool = self.pool_spec.cls(self.pool_spec.config(), enc.out_dim, k)
        aug = None
        if views:
            n = 3 if views is True else int(views)
            aug = _ContractViews(_ContractViews.Config(num_views=n), (LOSS_DIM,))
        self.model = MILModel(enc, pool, aug)
        self.dataset = _dataset(_make_bags(LOSS_LENGTHS, (LOSS_DIM,), k, seed=80 + k, candidates=True), k)
        self.batch = _batch(self.dataset, pad_to)
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
            _fail(
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
            _fail(self.spec, f"forward must return a LossResult, got {type(res).__name__}")
        return res


@_check("loss")
def check_loss_output(spec: ComponentSpec) -> None:
    """bind, then a training forward: a finite scalar total with a graph, named detached scalar parts."""
    for k in (2, 3):
        setup = _LossSetup(spec, k)
        loss = setup.new_loss()
        res = setup.call(loss, setup.forward())
        where = f"(k={k}, pooling {setup.pool_spec.name!r}) "
        total = _floating(spec, where + "LossResult.total", res.total)
        if total.dim() != 0:
            _fail(spec, where + f"LossResult.total must be a 0-dim scalar, got shape {tuple(total.shape)}")
        if not total.requires_grad:
            _fail(spec, where + "LossResult.total has no autograd graph (it does not depend on the model)")
        if not isinstance(res.parts, dict):
            _fail(spec, where + "LossResult.parts must be a dict")
        for name, value in res.parts.items():
            if not isinstance(name, str):
                _fail(spec, where + f"part names must be strings, got {name!r}")
            t = _floating(spec, where + f"part {name!r}", value)
            if t.numel() != 1:
                _fail(spec, where + f"part {name!r} must be a scalar, got shape {tuple(t.shape)}")
            if t.requires_grad:
                _fail(spec, where + f"part {name!r} must be detached (parts are for logging)")
        loss.end_epoch(setup.state)


@_check("loss")
def check_loss_gradients(spec: ComponentSpec) -> None:
    """backward() of the total reaches the model and every trainable parameter of the loss."""
    for k in (2, 3):
        setup = _LossSetup(spec, k)
        loss = setup.new_loss()
        total = setup.call(loss, setup.forward()).total
        total.backward()
        got = [n for n, p in setup.model.named_parameters() if p.grad is not None]
        if not got:
            _fail(spec, f"(k={k}) no model parameter gets a gradient from the loss")
        _grad_report(spec, setup.model.named_parameters(), f"model (k={k})")
        _grad_report(spec, loss.named_parameters(), f"loss (k={k})")


@_check("loss")
def check_loss_padding(spec: ComponentSpec) -> None:
    """Extra padding of the batch does not change the loss (eval-mode model, fresh bound losses)."""
    for k in (2, 3):
        results = []
        for pad_to in (None, max(LOSS_LENGTHS) + 3):
            setup = _LossSetup(spec, k, pad_to=pad_to)
            loss = setup.new_loss()
            with torch.no_grad():
                results.append(setup.call(loss, setup.forward(train=False)))
        _assert_close(spec, f"(k={k}) total with 3 extra padded positions vs none", results[1].total, results[0].total)
        for name in results[0].parts:
            if name in results[1].parts:
                _assert_close(spec, f"(k={k}) part {name!r} with extra padding", results[1].parts[name],
                              results[0].parts[name])


@_check("loss")
def check_loss_state_dict(spec: ComponentSpec) -> None:
    """Loss buffers (per-bag state...) through safetensors into a fresh bound instance: same state and results."""
    k = 3
    setup = _LossSetup(spec, k)
    loss = setup.new_loss(seed=1)
    setup.call(loss, setup.forward(seed=4))
    loss.end_epoch(setup.state)
    setup.call(loss, setup.forward(seed=5))  # state recorded after an epoch end, too
    state = _safetensors_roundtrip(spec, loss)
    fresh = setup.new_loss(seed=2)
    _load_fresh(spec, fresh, state)
    _compare_states(spec, "after loading", fresh.state_dict(), loss.state_dict())
    with torch.no_grad():
        out = setup.forward(seed=6)
        a, b = setup.call(loss, out), setup.call(fresh, out)
    _assert_close(spec, "total of the reloaded loss", b.total, a.total, atol=1e-6, rtol=1e-5)


@_check("loss")
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
    _compare_states(spec, "two losses built and bound after the same seed", states[0], states[1])
    _assert_close(spec, "total under the same seed", totals[1], totals[0], atol=0.0, rtol=0.0)


# --------------------------------------------------------------------------- running checks


def check_component(component: Any, options: dict[str, Any] | None = None) -> None:
    """Run every check of one component; raise one AssertionError listing all failures."""
    spec = resolve(component, options)
    checks = checks_for(spec.kind)
    failures = []
    for check in checks:
        try:
            check(spec)
        except AssertionError as exc:
            failures.append(f"  - {check.__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a crash is a failure too
            failures.append(f"  - {check.__name__}: raised {type(exc).__name__}: {exc}")
    if failures:
        raise AssertionError(
            f"{spec.id} fails {len(failures)} of {len(checks)} contract checks:\n" + "\n".join(failures)
        )


def _check_kind(kind: str):
    def run(component: Any, options: dict[str, Any] | None = None) -> None:
        spec = resolve(component, options)
        if spec.kind != kind:
            raise TypeError(f"check_{kind} got the {spec.kind} {spec.name!r}; use check_{spec.kind}")
        check_component(spec)

    run.__name__ = f"check_{kind}"
    run.__doc__ = f"Run every contract check of a {kind}; raise one AssertionError listing all failures."
    return run


check_encoder = _check_kind("encoder")
check_pooling = _check_kind("pooling")
check_loss = _check_kind("loss")
check_augment = _check_kind("augment")


ExpectedFailures = dict[str, dict[str, str]] | Callable[[ComponentSpec, str], str | None] | None


def _expected_reason(expected: ExpectedFailures, spec: ComponentSpec, check: str) -> str | None:
    if expected is None:
        return None
    if callable(expected):
        return expected(spec, check)
    for key in (spec.id, f"{spec.kind}:{spec.name}"):
        reason = (expected.get(key) or {}).get(check)
        if reason:
            return reason
    return None


def parametrize_with_checks(components: Iterable[Any], *, expected_failures: ExpectedFailures = None):
    """A ``pytest.mark.parametrize`` over every (component, check) pair.

    The decorated test takes ``component`` and ``check`` and calls ``check(component)``.
    ``components`` holds classes, ``(class, options)`` pairs or ``"kind:name"`` strings.
    ``expected_failures`` maps a component id (``"pooling:abmil"``) to ``{check name: reason}``
    (or is a callable ``(spec, check_name) -> reason or None``); those cases are marked
    ``xfail(strict=True)`` so they stay visible and flag when fixed.
    """
    import pytest

    params = []
    for component in components:
        spec = resolve(component)
        for check in checks_for(spec.kind):
            marks = []
            reason = _expected_reason(expected_failures, spec, check.__name__)
            if reason:
                marks.append(pytest.mark.xfail(strict=True, reason=reason, raises=AssertionError))
            params.append(pytest.param(spec, check, id=f"{spec.id}-{check.__name__}", marks=marks))
    return pytest.mark.parametrize(("component", "check"), params)
