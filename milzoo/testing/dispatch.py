"""What a training step dispatches, counted on any device: every aten operator, and the operations that make
the host wait for a GPU (host synchronisations).

A GPU runs a step asynchronously: Python queues kernels and moves on, until something needs a value on the
host.  When the images are small, a step costs about what its kernel launches cost, and every synchronisation
drains the queue.  Both can be counted on a CPU, where the same Python runs the same operators:

- **operators**: every aten operator that reaches the dispatcher (a :class:`TorchDispatchMode`), in the
  forward, the backward (autograd calls them on this thread) and the optimiser step.  ``kernels`` leaves
  out views (``view``, ``t``, ``detach``, ... launch nothing on a GPU);
- **synchronisations**: ``_local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, Python
  branching on a tensor), operators whose output shape depends on the data (``nonzero``, ``masked_select``,
  ``unique``, boolean-mask indexing ``x[mask]`` and ``x[mask] = v``, ``repeat_interleave`` without
  ``output_size``, ``bincount``), comparisons answered on the host (``equal``, ``allclose``), device-to-host
  copies (``.cpu()``, ``.numpy()``, ``.tolist()``) and tensors made from host data on the step's device
  (``torch.tensor(x, device=...)``: a copy that waits for the stream; not in ``collate_bags``, which works on
  host tensors on a GPU too).

What a CPU cannot show: ``t.to("cuda")``/``t.to("cpu")`` between devices (on a CPU both ends are the same
device; the step's code is reviewed for them), and checks that only a CPU kernel makes: ``F.one_hot``
reads its input's range on a CPU, not on a GPU, so reads inside it are not counted.  Reads of tensors that
stay on the host on a GPU too (a non-capturable Adam's step counters) are left out through ``host_ids``.

Use :func:`count_per_step` for one step's counts: it runs ``run(n)`` for two step counts and takes the
difference, so whatever happens once per epoch (reading the loss sums, for instance) cancels out.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from contextlib import contextmanager
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger(__name__)

_aten = torch.ops.aten
#: operators whose output shape is read from the data (the host waits for the device to know it)
_DATA_SHAPED = {"aten.nonzero", "aten.masked_select", "aten._unique", "aten._unique2", "aten.unique_dim",
                "aten.unique_consecutive", "aten.bincount", "aten.argwhere"}
#: operators that answer a Python bool
_HOST_ANSWER = {"aten.equal", "aten.allclose", "aten.is_nonzero"}
_INDEX = {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_", "aten._unsafe_index_put"}
#: Tensor methods that copy to the host
_TO_HOST = {"cpu", "numpy", "tolist"}
_FACTORIES = {"tensor", "as_tensor", "asarray"}
_HERE = str(Path(__file__).resolve())
#: code that runs on the host on a GPU too: collating bags read from a dataset (their tensors are on the
#: host; the batch then moves with ``MILBatch.to(device, non_blocking=True)`` from pinned memory)
_HOST_CODE = (str(Path(__file__).resolve().parents[1] / "datasets" / "batch.py"),)
_ACTIVE: list[StepCounter] = []


def _packet(func) -> str:
    return f"aten.{func._schema.name.split('::', 1)[-1]}"


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def sync_reason(func, args, kwargs) -> str | None:
    """Why dispatching ``func`` on these arguments waits for a GPU, or None."""
    name = _packet(func)
    if torch.Tag.data_dependent_output in func.tags:
        return "value read on the host"
    if name in _DATA_SHAPED:
        return "output shape depends on the data"
    if name in _HOST_ANSWER:
        return "answer read on the host"
    if name in _INDEX and len(args) > 1 and _bool_index(args[1]):
        return "boolean-mask indexing"
    if name == "aten.repeat_interleave" and func is _aten.repeat_interleave.Tensor \
            and (kwargs or {}).get("output_size") is None:
        return "repeat_interleave without output_size"
    return None


def _is_view(func) -> bool:
    return bool(getattr(func, "is_view", False))


def _site(full: bool = False) -> str:
    """The innermost frame outside torch and this module: where the step's code asked for the operation
    (``full``: its file's whole path)."""
    for frame in reversed(traceback.extract_stack()):
        f = frame.filename
        if f == _HERE or "/torch/" in f or f.startswith("<"):
            continue
        return f if full else f"{Path(f).name}:{frame.lineno} ({frame.name})"
    return "autograd"


class _Dispatch(TorchDispatchMode):
    def __init__(self, counter: StepCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        c = self.counter
        c.ops[_packet(func)] += 1
        if not _is_view(func):
            c.kernels += 1
        if c.by_site is not None:
            c.by_site[_site()] += 1
        if c._cpu_check_depth == 0:
            reason = sync_reason(func, args, kwargs)
            if reason is not None and not (args and isinstance(args[0], torch.Tensor) and id(args[0]) in c.host_ids):
                c.syncs[(reason, _packet(func), _site())] += 1
        return func(*args, **(kwargs or {}))


class _Functions(TorchFunctionMode):
    def __init__(self, counter: StepCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        c = self.counter
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "one_hot":  # a CPU kernel reads the input's range; a GPU's does not (num_classes given)
            given = (args[1] if len(args) > 1 else kwargs.get("num_classes", -1)) >= 0
            if not given:
                c.syncs[("one_hot without num_classes", "one_hot", _site())] += 1
            c._cpu_check_depth += 1
            try:
                return func(*args, **kwargs)
            finally:
                c._cpu_check_depth -= 1
        if name in _TO_HOST and args and isinstance(args[0], torch.Tensor):
            c.syncs[("copy to the host", f"Tensor.{name}", _site())] += 1
        elif name in _FACTORIES and c.device is not None and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == c.device.type \
                and not (args and isinstance(args[0], torch.Tensor)):
            site = _site(full=True)
            if not any(site.startswith(host) for host in _HOST_CODE):
                c.syncs[("host data copied to the device", f"torch.{name}", _site())] += 1
        return func(*args, **kwargs)


class StepCounter:
    """Counts the operators dispatched and the host synchronisations while it is active (a context manager).

    ``device`` is the device the counted step trains on: a tensor made from host data there
    (``torch.tensor(x, device=device)``) counts as a synchronisation, as it is one on a GPU.  ``host_ids``:
    ids of tensors that live on the host even on a GPU (their reads are free).  ``sites``: also count the
    operators per line of code (``by_site``).
    """

    def __init__(self, device: torch.device | str | None = "cpu", host_ids: Iterable[int] = (), sites: bool = False):
        self.device = None if device is None else torch.device(device)
        self.host_ids = set(host_ids)
        self.ops: Counter[str] = Counter()
        #: operators per line of code that asked for them (with ``sites``; slower)
        self.by_site: Counter[str] | None = Counter() if sites else None
        self.kernels = 0
        self.syncs: Counter[tuple[str, str, str]] = Counter()
        self._cpu_check_depth = 0
        self._modes = (_Functions(self), _Dispatch(self))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def __enter__(self) -> StepCounter:
        for mode in self._modes:
            mode.__enter__()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @staticmethod
    def active() -> StepCounter | None:
        """The innermost counter now counting, or None."""
        return _ACTIVE[-1] if _ACTIVE else None

    @contextmanager
    def replayed(self, graphs: int = 1, input_copies: int = 0):
        """Code that a GPU replays as ``graphs`` captured CUDA graph(s): not counted operator by operator
        (torch.compile cannot even run under a dispatch mode), but as ``graphs`` launches (operator
        ``"cuda_graph_replay"``), plus ``input_copies`` launches (``"cuda_graph_input_copy"``): torch.compile's
        CUDA graphs copy the inputs that are not kept at a fixed address (a step's batch, the backward's
        gradient seed) into the graph's own buffers before each replay, one ``_foreach_copy_``."""
        for mode in reversed(self._modes):
            mode.__exit__(None, None, None)
        try:
            yield
        finally:
            for mode in self._modes:
                mode.__enter__()
            self.ops["cuda_graph_replay"] += graphs
            if input_copies:
                self.ops["cuda_graph_input_copy"] += input_copies
            self.kernels += graphs + input_copies


@dataclass
class StepCount:
    """One step's counts: ``ops`` (every dispatched operator), ``kernels`` (those that are not views),
    ``syncs`` (host synchronisations) and where each synchronisation was asked for (``sync_sites``);
    ``by_site``: operators per line of code, when counted."""

    ops: int
    kernels: int
    syncs: int
    by_op: dict[str, int] = field(default_factory=dict)
    sync_sites: dict[str, int] = field(default_factory=dict)
    by_site: dict[str, int] = field(default_factory=dict)


def _difference(a: Counter, b: Counter) -> dict:
    d = Counter(b)
    d.subtract(a)
    return {k: v for k, v in d.items() if v}


def count_per_step(run: Callable[[int], object], device: torch.device | str | None = "cpu",
                   steps: tuple[int, int] = (2, 3), host_ids: Callable[[], Iterable[int]] | None = None,
                   warmup: bool = True, sites: bool = False) -> StepCount:
    """The counts of one step: ``run(n)`` must run ``n`` steps (and whatever it does once per call); the
    counts of ``run(steps[1])`` minus those of ``run(steps[0])``, divided by the steps between them.

    ``warmup`` runs both once first, uncounted (lazy state: optimiser buffers, prototypes, data moved).
    ``host_ids`` is called after the warm-up for the ids of tensors that stay on the host on a GPU.
    """
    short, long = steps
    if long <= short:
        raise ValueError(f"steps must be (fewer, more), not {steps}")
    if warmup:
        run(short)
        run(long)
    ids = set(host_ids()) if host_ids is not None else set()
    counted = []
    for n in (short, long):
        with StepCounter(device, ids, sites=sites) as c:
            run(n)
        counted.append(c)
    a, b = counted
    per = long - short
    sync_sites: Counter[str] = Counter()
    for (reason, op, site), v in _difference(a.syncs, b.syncs).items():
        sync_sites[f"{site}: {op} ({reason})"] += v
    by_op = _difference(a.ops, b.ops)
    by_site = _difference(a.by_site, b.by_site) if sites else {}
    return StepCount(
        ops=(b.total - a.total) // per, kernels=(b.kernels - a.kernels) // per,
        syncs=sum(sync_sites.values()) // per,
        by_op={k: v // per for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        sync_sites={k: v // per for k, v in sorted(sync_sites.items(), key=lambda kv: -kv[1])},
        by_site={k: v // per for k, v in sorted(by_site.items(), key=lambda kv: -kv[1])},
    )
