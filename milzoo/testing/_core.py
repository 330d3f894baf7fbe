"""Component specs, shared helpers (bags, padded batches, comparisons) and the check registry."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from milzoo.datasets.batch import Bag, MILBatch, collate_bags
from milzoo.components.base import Augment, ComponentConfig, DatasetSource, Encoder, Loss, Pooling, Task
from milzoo.components.output import MILOutput


#: the kinds the suite covers (datasets are not: they load files)
KIND_BASES: dict[str, type] = {"encoder": Encoder, "pooling": Pooling, "loss": Loss, "augment": Augment,
                               "task": Task}
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
                "losses, augments and tasks only."
            )
        for kind, base in KIND_BASES.items():
            if issubclass(cls, base):
                return kind
    raise TypeError(
        f"{cls!r} is not a milzoo component class (a subclass of milzoo.components.base.Encoder, Pooling, "
        "Loss, Augment or Task)."
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
    from milzoo.registry import _table as registry

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
    from milzoo.registry import _table as registry

    out: list[type] = []
    for kind in KIND_BASES:
        for entry in registry.entries(kind):
            if entry.obj not in out:
                out.append(entry.obj)
    return out


# --------------------------------------------------------------------------- helpers


class ContractFailure(AssertionError):
    """A contract check failed; the message names the component, the check and the problem."""


def fail(spec: ComponentSpec, message: str) -> None:
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


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build_seeded(spec: ComponentSpec, *args: Any, seed: int = 0):
    torch.manual_seed(seed)
    return spec.cls(spec.config(), *args)


def make_bags(lengths: list[int], shape: tuple[int, ...], k: int, seed: int,
               candidates: bool = False) -> list[Bag]:
    """Random bags (``randn`` for feature vectors, ``rand`` in [0, 1] for images); labels cycle over classes."""
    g = seeded_generator(seed)
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


def make_dataset(bags: list[Bag], k: int):
    from milzoo.datasets.base import BagListDataset

    return BagListDataset(bags, [f"class{c}" for c in range(k)])


def padded_batch(ds, pad_to: int | None = None) -> MILBatch:
    batch = collate_bags([ds[i] for i in range(len(ds))])
    if pad_to is not None and pad_to > batch.mask.shape[1]:
        extra = pad_to - batch.mask.shape[1]
        b = batch.size
        batch.x = torch.cat([batch.x, batch.x.new_zeros(b, extra, *batch.x.shape[2:])], dim=1)
        batch.mask = torch.cat([batch.mask, torch.zeros(b, extra, dtype=torch.bool)], dim=1)
        if batch.inst_y is not None:
            batch.inst_y = torch.cat([batch.inst_y, torch.full((b, extra), -1, dtype=torch.long)], dim=1)
    return batch


def padded_features(lengths: list[int], d: int, seed: int, negative: bool = False) -> tuple[Tensor, Tensor]:
    """``h [B, N, d]`` (zeros at padding) and ``mask [B, N]`` for bags of the given lengths.

    ``negative``: every real feature below -1, so a max over instances that fills padding with 0 instead of
    -inf picks the padding (a bug that random signs catch only by chance).
    """
    g = seeded_generator(seed)
    n_max = max(lengths)
    h = torch.zeros(len(lengths), n_max, d)
    mask = torch.zeros(len(lengths), n_max, dtype=torch.bool)
    for b, n in enumerate(lengths):
        x = torch.randn(n, d, generator=g)
        h[b, :n] = -(x.abs() + 1.0) if negative else x
        mask[b, :n] = True
    return h, mask


def assert_close(spec: ComponentSpec, what: str, got: Tensor, want: Tensor,
                  atol: float = ATOL, rtol: float = RTOL) -> None:
    if tuple(got.shape) != tuple(want.shape):
        fail(spec, f"{what}: shape {tuple(got.shape)} differs from {tuple(want.shape)}")
    g, w = got.detach().double(), want.detach().double()
    if g.numel() == 0:
        return
    if not torch.equal(torch.isnan(g), torch.isnan(w)):
        fail(spec, f"{what}: NaN in one result but not the other")
    ok = torch.isclose(g, w, atol=atol, rtol=rtol, equal_nan=True)
    if not bool(ok.all()):
        diff = (g - w).abs().nan_to_num(0.0).max().item()
        fail(spec, f"{what}: max abs difference {diff:.3g} exceeds the tolerance (atol {atol:g}, rtol {rtol:g})")


def bag_fields(out: MILOutput, b: int, n: int, perm: Tensor | None = None) -> dict[str, Tensor]:
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


def compare_bag(spec, what: str, got: dict[str, Tensor], want: dict[str, Tensor], atol=ATOL, rtol=RTOL) -> None:
    if set(got) != set(want):
        fail(spec, f"{what}: the outputs set differ ({sorted(got)} vs {sorted(want)})")
    for name in want:
        assert_close(spec, f"{what}: {name}", got[name], want[name], atol, rtol)


def all_output_tensors(out: MILOutput) -> dict[str, Tensor]:
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


def compare_outputs(spec, what: str, a: MILOutput, b: MILOutput, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    ta, tb = all_output_tensors(a), all_output_tensors(b)
    if set(ta) != set(tb):
        fail(spec, f"{what}: different output fields ({sorted(ta)} vs {sorted(tb)})")
    for name in ta:
        if ta[name].is_floating_point():
            assert_close(spec, f"{what}: {name}", ta[name], tb[name], atol, rtol)
        elif not torch.equal(ta[name], tb[name]):
            fail(spec, f"{what}: {name} differs")


def compare_states(spec, what: str, a: dict[str, Any], b: dict[str, Any]) -> None:
    if set(a) != set(b):
        fail(spec, f"{what}: state_dict keys differ: {sorted(set(a) ^ set(b))[:6]}")
    for key in a:
        va, vb = a[key], b[key]
        if torch.is_tensor(va) and torch.is_tensor(vb):
            if va.shape != vb.shape or va.dtype != vb.dtype or not torch.equal(va, vb):
                fail(spec, f"{what}: state_dict entry {key!r} differs")


def safetensors_roundtrip(spec: ComponentSpec, module: torch.nn.Module) -> dict[str, Tensor]:
    import safetensors.torch

    sd = module.state_dict()
    not_tensors = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if not_tensors:
        fail(spec, f"state_dict holds non-tensor entries {not_tensors[:5]}; checkpoints are safetensors only")
    try:
        blob = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in sd.items()})
    except Exception as exc:  # noqa: BLE001
        fail(
            spec,
            f"state_dict cannot be saved with safetensors ({type(exc).__name__}: {exc}). Do not tie or share "
            "tensors between parameters/buffers (keep a plain attribute, or register only one of them).",
        )
    return safetensors.torch.load(blob)


def load_fresh(spec, fresh: torch.nn.Module, state: dict[str, Tensor]) -> None:
    try:
        fresh.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        fail(spec, f"a fresh instance cannot load the saved state_dict strictly ({type(exc).__name__}: {exc})")


def floating(spec, what: str, t: Any) -> Tensor:
    if not torch.is_tensor(t):
        fail(spec, f"{what} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        fail(spec, f"{what} must be a floating-point tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        fail(spec, f"{what} holds non-finite values")
    return t


def grad_report(spec, named_params: Iterable[tuple[str, torch.nn.Parameter]], where: str) -> None:
    missing, bad = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
        elif not bool(torch.isfinite(p.grad).all()):
            bad.append(name)
    if missing:
        fail(
            spec,
            f"trainable parameters of the {where} got no gradient: {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}. Every trainable parameter must be used in the training "
            "forward (or created with requires_grad=False).",
        )
    if bad:
        fail(spec, f"non-finite gradients in the {where}: {', '.join(bad[:8])}")


# --------------------------------------------------------------------------- check registry

_CHECKS: dict[str, list[Callable]] = {kind: [] for kind in KIND_BASES}


def register_check(*kinds: str):
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
