"""How big a model is, found before anything is allocated.

A typo in a recipe (``dims = [1000000000000]``) or a hostile ``config.json`` (``attn_hidden = 10**30``) would
make torch try to allocate terabytes, or fail deep inside ``torch.empty`` with a C++ overflow message and its
stack trace.  So a model is built under a :class:`SizeGuard`: every tensor the build asks for (``torch.empty``,
``zeros``, ``full``, ``arange``, ``Tensor.new_*``, ...) is sized first with Python integers, which cannot
overflow, and a request beyond the limit is refused before torch sees it; every tensor a build creates is
counted, in bytes and in number.  The build runs on the meta device (no memory), then the model's parameters and
buffers are counted exactly, again with Python integers.

Recipes are compared with the machine's memory (:func:`check_model_size`); a model rebuilt from a folder from
anyone is compared with :data:`MAX_LOAD_BYTES` unless the caller allows more (:mod:`milzoo.checkpoint`).
"""

from __future__ import annotations

import logging
import math
import operator
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from milzoo._untrusted import shown
from milzoo.errors import UserError

log = logging.getLogger(__name__)

#: parameters + gradients + two Adam moments: the float32 copies training holds per parameter
TRAINING_COPIES = 4
#: the most bytes of tensors a model rebuilt from a folder (checkpoint, Hub folder) may hold unless the caller
#: passes a larger ``max_bytes``: a billion float32 parameters (every milzoo model is far below it)
MAX_LOAD_BYTES = 4 * 2**30
#: the most tensors one build may create (the largest milzoo models create a few hundred)
MAX_TENSORS = 100_000
#: what a size beyond any memory is compared with when no limit applies: torch's sizes are 64-bit integers
_REPRESENTABLE_BYTES = 2**62

#: factories whose size is given as ``*sizes`` or one sequence (``torch.empty(3, 4)``, ``torch.empty((3, 4))``)
_SIZED = {torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn}
#: factories whose first argument is the size
_SIZE_FIRST = {torch.full, torch.empty_strided}
#: ``tensor.new_*(size)``: the size follows the tensor
_NEW = {torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full,
        torch.Tensor.new_empty_strided}
_NEW_VARARGS = {torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones}
#: factories whose elements are 64-bit integers unless a dtype is given
_INTEGER = {torch.randint, torch.randperm}
#: other factories whose size follows from their arguments
_OTHER = {torch.eye, torch.linspace, torch.logspace, torch.arange}


def machine_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def count_text(n: int) -> str:
    """``1,011,010``, or ``about 10^30`` for a count too long to read."""
    return f"{n:,}" if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def bytes_text(n: int) -> str:
    """``3.2 GiB``, ``12.5 MiB``, ``740 bytes``, or ``about 10^30 bytes``."""
    if n >= 2**70:
        return f"about 10^{len(str(n)) - 1} bytes"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} bytes"


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**70 else bytes_text(n)


def _ints(values: Any) -> tuple[int, ...] | None:
    """A size as Python integers, or None when it is not one (torch then says what is wrong)."""
    if isinstance(values, (list, tuple, torch.Size)):
        try:
            return tuple(operator.index(v) for v in values)
        except TypeError:
            return None
    return None


def _arange_count(args: tuple, kwargs: dict) -> int | None:
    """How many elements ``torch.arange(...)`` makes, or None when its bounds are not plain numbers."""
    if len(args) >= 2:
        start, end, step = args[0], args[1], args[2] if len(args) > 2 else kwargs.get("step", 1)
    else:
        start, end, step = kwargs.get("start", 0), args[0] if args else kwargs.get("end"), kwargs.get("step", 1)
    if not all(isinstance(v, (int, float)) for v in (start, end, step)) or not step:
        return None
    if all(isinstance(v, int) for v in (start, end, step)):
        return max(0, -((start - end) // step))  # ceiling division of Python integers
    try:
        return max(0, math.ceil((end - start) / step))
    except (ValueError, OverflowError):  # inf or nan bounds: torch refuses them itself
        return None


def _size_args(values: tuple) -> tuple[int, ...] | None:
    """``(3, 4)`` from ``f(3, 4)`` or ``f((3, 4))``."""
    if len(values) == 1 and isinstance(values[0], (list, tuple, torch.Size)):
        return _ints(values[0])
    return _ints(values)


def requested_shape(func: Any, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """The shape a tensor factory is asked for, as Python integers (None for anything else)."""
    if func in _SIZED or func in _SIZE_FIRST or func in _NEW or func in _INTEGER or func in _OTHER:
        if "size" in kwargs:
            return _ints(kwargs["size"])
    else:
        return None
    if func in _SIZED:
        return _size_args(args)
    if func in _SIZE_FIRST:
        return _ints(args[0]) if args else None
    if func in _NEW:  # new_empty(3, 4) or new_empty((3, 4)); new_full((3, 4), value)
        rest = args[1:]
        if rest and isinstance(rest[0], (list, tuple, torch.Size)):
            return _ints(rest[0])
        return _ints(rest) if func in _NEW_VARARGS else None
    if func is torch.randint:
        return next((_ints(a) for a in reversed(args) if isinstance(a, (list, tuple, torch.Size))), None)
    if func is torch.randperm:
        return _ints(args[:1]) if args else _ints([kwargs.get("n")])
    if func is torch.eye:
        n = args[0] if args else kwargs.get("n")
        return _ints([n, args[1] if len(args) > 1 else kwargs.get("m", n)])
    if func in (torch.linspace, torch.logspace):
        return _ints([args[2] if len(args) > 2 else kwargs.get("steps")])
    n = _arange_count(args, kwargs)  # torch.arange
    return (n,) if n is not None else None


def _itemsize(func: Any, args: tuple, kwargs: dict) -> int:
    dtype = kwargs.get("dtype")
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    if func in _NEW and args and isinstance(args[0], torch.Tensor):
        return args[0].element_size()
    if func in _INTEGER or (func is torch.arange and all(isinstance(a, int) for a in args)):
        return 8
    return torch.get_default_dtype().itemsize


def is_size_overflow(exc: BaseException) -> bool:
    """Whether torch refused a size it cannot represent (a 64-bit overflow somewhere in its C++)."""
    text = str(exc).lower()
    return isinstance(exc, OverflowError) or "overflow" in text or "too large" in text


def first_line(exc: BaseException) -> str:
    """An exception's first line, cut short: torch's C++ errors carry a stack trace after it."""
    lines = str(exc).strip().splitlines()
    return shown(lines[0], 200)[1:-1] if lines else type(exc).__name__


class SizeGuard(TorchFunctionMode):
    """Sizes every tensor a build asks for with Python integers before torch sees the request.

    A request larger than what is left of ``limit_bytes``, more than ``max_tensors`` tensors, or a size torch
    cannot represent raise ``refuse(what)`` (``what`` describes the request in words).  ``total`` and ``tensors``
    count what the build created (every new storage, freed temporaries included).
    """

    def __init__(self, limit_bytes: int, refuse: Callable[[str], Exception], max_tensors: int = MAX_TENSORS):
        super().__init__()
        self.limit = int(limit_bytes)
        self.refuse = refuse
        self.max_tensors = int(max_tensors)
        self.total = 0
        self.tensors = 0
        self._seen: set[int] = set()

    def _request(self, func: Any, args: tuple, kwargs: dict) -> None:
        shape = requested_shape(func, args, kwargs)
        if shape is None or any(s < 0 for s in shape):
            return  # not a factory, or a size torch refuses itself with a plain message
        elements = math.prod(shape)
        need = elements * _itemsize(func, args, kwargs)
        if need > self.limit - self.total:
            raise self.refuse(f"a tensor of shape {shown(list(shape), 80)} ({count_text(elements)} elements, "
                              f"{bytes_text(need)})")

    def _count(self, out: Any) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # a sparse or nested tensor: no storage of its own
                continue
            if storage._cdata in self._seen:
                continue
            self._seen.add(storage._cdata)
            self.total += storage.nbytes()
            self.tensors += 1
            if self.total > self.limit:
                raise self.refuse(f"tensors of {bytes_text(self.total)} or more")
            if self.tensors > self.max_tensors:
                raise self.refuse(f"more than {self.max_tensors:,} tensors")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._request(func, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
            if is_size_overflow(exc):
                raise self.refuse(f"a size too large to represent ({first_line(exc)})") from None
            raise
        self._count(out)
        return out


def guarded_build(build: Callable[[], nn.Module], limit_bytes: int, refuse: Callable[[str], Exception], *,
                  meta: bool = True, max_tensors: int = MAX_TENSORS) -> nn.Module:
    """``build()`` under a :class:`SizeGuard`, on the meta device unless ``meta`` is False.

    On the meta device the caller's random number streams are left untouched.  Anything else ``build()``
    raises goes through (a component that cannot be built on the meta device raises here).
    """
    guard = SizeGuard(limit_bytes, refuse, max_tensors)
    if not meta:
        with guard:
            return build()
    with torch.random.fork_rng(devices=[]), guard, torch.device("meta"):
        model = build()
    log.debug("sized a model on the meta device: %d tensors created, %d bytes", guard.tensors, guard.total)
    return model


def state_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The parameters and buffers of ``model``, each storage once (a tied weight counts once)."""
    seen: set[int] = set()
    out = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        key = t.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            out.append((name, t))
    return out


def tensors_bytes(tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Exact bytes of ``tensors`` (Python integers: shape products never overflow)."""
    return sum(math.prod(t.shape) * t.element_size() for _, t in tensors)


def check_model_size(build: Callable[[], nn.Module], source: str, memory_bytes: int | None = None) -> None:
    """Size the model ``build()`` makes and refuse one that cannot be trained in this machine's memory.

    It is built on the meta device under a :class:`SizeGuard`; a component that cannot be built there is built
    for real under the same guard, so no tensor beyond the machine's memory is ever allocated.  User errors the
    build raises propagate.
    """
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes

    def refusal(where: str) -> Callable[[str], UserError]:
        return lambda what: UserError(
            f"the model of {source} cannot be built: it asks for {what}, {where} (every size is computed "
            "before anything is allocated). Check the size options of the encoder and pooling in the recipe (e.g. "
            "encoder.dims, pooling.attn_hidden)."
        )

    try:  # on the meta device nothing is allocated: only sizes torch cannot represent are refused while building
        model = guarded_build(build, _REPRESENTABLE_BYTES, refusal("too large for torch to represent"))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - data-dependent code in a constructor: build it for real, guarded
        log.debug("the model of %s cannot be built on the meta device (%s); building it under the size guard",
                  source, first_line(exc))
        limit = memory if memory is not None else _REPRESENTABLE_BYTES
        where = (f"more than this machine's {_gib(memory)} of memory" if memory is not None
                 else "too large for torch to represent")
        model = guarded_build(build, limit, refusal(where), meta=False)
    tensors = state_tensors(model)
    total_bytes = tensors_bytes(tensors)
    need = total_bytes * TRAINING_COPIES
    if memory is None or need <= memory:
        return
    largest = sorted(tensors, key=lambda nt: math.prod(nt[1].shape), reverse=True)[:3]
    listed = ", ".join(f"{n} {list(t.shape)}" for n, t in largest)
    n_params = sum(math.prod(t.shape) for _, t in tensors)
    raise UserError(
        f"the model of {source} has {count_text(n_params)} parameters ({_gib(total_bytes)}; training needs "
        f"about {_gib(need)} with gradients and optimiser state), more than this machine's "
        f"{_gib(memory)} of memory. The largest tensors: {listed}. Check the size options of the "
        "encoder and pooling in the recipe."
    )
