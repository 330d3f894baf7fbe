"""Whether a pooling's training step can be captured (``train.compile = "step"`` / ``"reduce-overhead"``).

A captured step is one ``torch.compile`` region (the forward, the pooling's ``after_forward``, the losses) that a
GPU replays as one CUDA graph.  A pooling that reads a value back to the host, builds a shape from the data or
calls something dynamo cannot trace breaks the region; the trainer then trains that fold eagerly (with one
warning), so capture is not part of the contract every pooling must pass (:func:`milzoo.testing.check_pooling`).
A pooling that claims it, or a user who wants to know before a long GPU run, checks it here::

    from milzoo.testing.capture import check_step_capture

    check_step_capture("pooling:abmil")                      # raises AssertionError saying why not
    check_step_capture("pooling:abmil", {"gated": True})

What is checked, on a CPU in float64 (compiled with the ``aot_eager`` backend: dynamo's capture and
AOTAutograd's backward without code generation, a few seconds per pooling): the pooling with its default
loss, behind a small MLP encoder, on fixed-size bags (2 per step), trains two epochs through the
:class:`~milzoo.train.Trainer` both eagerly and with the step compiled; the compiled trainer ran compiled
steps and never fell back, each epoch's losses agree, and so do the weights and buffers afterwards; the step
is one graph without a break (``torch._dynamo.explain``).  A compiled region draws its own random numbers
(AOTAutograd decomposes dropout into other random operators), so every ``nn.Dropout`` module is set to
``p = 0`` in both runs; a pooling that draws in another way (``F.dropout`` with a rate from its options,
random sampling of instances) needs options that turn it off for this check.  :func:`check_step_capture`
resets dynamo's caches (``torch._dynamo.reset()``) before and after; both checks restore torch's random state.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from milzoo.testing._core import ComponentSpec, resolve

_DROPOUTS = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout,
             torch.nn.FeatureAlphaDropout)
#: tolerances of the compiled step against the eager one (float64; sums in another order)
CAPTURE_RTOL = 1e-9
CAPTURE_ATOL = 1e-10


def cpu_compiler() -> str | None:
    """The C++ compiler inductor would build a CPU step's kernels with (``$CXX``, else ``g++``, ``c++`` or
    ``clang++`` on the path), or None: then ``backend="inductor"`` cannot be checked on a CPU."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx) or None
    return next((path for c in ("g++", "c++", "clang++") if (path := shutil.which(c))), None)


def _registered_name(spec: ComponentSpec) -> str:
    from milzoo.registry import _table as registry

    try:
        registered = registry.get_component("pooling", spec.name)
    except Exception:  # noqa: BLE001 - any lookup failure means the same thing here
        registered = None
    if registered is not spec.cls:
        raise TypeError(
            f"check_step_capture builds a whole training run from a recipe, so the pooling must be registered "
            f"under its name ({spec.name!r} is not {spec.cls.__qualname__}); register it for the test with "
            f"milzoo.testing.registered_plugins(...)."
        )
    return spec.name


def _trainer(spec: ComponentSpec, folder: Path, compile_mode: Any, classes: int, bag_size: int, bags: int,
             padded: bool = False, device: str = "cpu", precision: str = "fp64"):
    from milzoo.datasets import FoldData
    from milzoo.datasets.base import BagListDataset
    from milzoo.datasets.batch import Bag
    from milzoo.recipe import load_recipe
    from milzoo.train import Trainer

    g = torch.Generator().manual_seed(3)
    dtype = torch.float64 if precision == "fp64" else torch.float32
    ds = BagListDataset(
        [Bag(torch.randn(bag_size - (i % 3 if padded else 0), 6, generator=g, dtype=dtype), i % classes,
             index=i) for i in range(bags)],
        [f"c{k}" for k in range(classes)],
    )
    loss = getattr(spec.cls, "default_loss", "bag_ce")
    raw = {"data": {"name": "classic", "dataset": "musk1"},  # never read: the trainer is given the bags
           "encoder": {"name": "mlp", "dims": [8], "dropout": 0.0},
           "pooling": {"name": _registered_name(spec), **spec.options}, "loss": [{"name": loss}],
           "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
           "train": {"device": device, "progress": False, "batch_size": 2, "epochs": 2, "precision": precision,
                     "grad_clip": 5.0, "compile": compile_mode}}
    torch.manual_seed(0)
    tr = Trainer(load_recipe(raw), FoldData(0, ds, None, {}), folder, emit=lambda r: None)
    for module in tr.model.modules():  # see the module: a compiled region draws its own random numbers
        if isinstance(module, _DROPOUTS):
            module.p = 0.0
    return tr, ds


def check_step_capture(component: Any, options: dict[str, Any] | None = None, *, classes: int = 3,
                       bag_size: int = 5, bags: int = 6, device: str = "cpu", draws: bool = False,
                       backend: str = "aot_eager") -> None:
    """Raise ``AssertionError`` unless the pooling's training step is captured whole and gives the eager
    step's numbers (see the module).

    ``draws``: the step draws random numbers by design (a random split, sampling of instances), which a
    compiled region draws differently: only the capture is checked (one graph, no fallback, finite losses),
    not the numbers.

    ``backend`` (on a CPU): ``"aot_eager"`` checks the capture and the backward without generating code;
    ``"inductor"``, the backend a GPU compiles with, also lowers the step to generated kernels (C++ on a CPU:
    needs a compiler, about ten seconds a pooling), the CUDA graphs excepted.

    ``device="cuda"`` checks the step as a GPU runs ``train.compile = "reduce-overhead"``: float32, inductor and
    CUDA graphs (minutes of compilation), no CUDA graph skipped, the eager numbers to relative 1e-4.
    """
    from milzoo.train._compiled import CompiledStep, _cuda_graph_skips

    spec = resolve(component, options)
    if spec.kind != "pooling":
        raise TypeError(f"check_step_capture checks poolings, not the {spec.kind} {spec.name!r}")
    cuda = torch.device(device).type == "cuda"
    if backend not in ("aot_eager", "inductor"):
        raise ValueError(f"check_step_capture: backend is 'aot_eager' or 'inductor', not {backend!r}")
    if not cuda and backend == "inductor" and cpu_compiler() is None:
        raise RuntimeError("check_step_capture(backend='inductor') builds C++ kernels on a CPU and found no "
                           "compiler: install g++ (or set CXX), or check with backend='aot_eager'")
    setting, precision = ("reduce-overhead", "fp32") if cuda else ("step", "fp64")
    rtol, atol = (1e-4, 1e-5) if cuda else (CAPTURE_RTOL, CAPTURE_ATOL)
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng():
        torch._dynamo.reset()
        eager, _ = _trainer(spec, Path(tmp, "eager"), False, classes, bag_size, bags, device=device,
                            precision=precision)
        compiled, ds = _trainer(spec, Path(tmp, "compiled"), setting, classes, bag_size, bags, device=device,
                                precision=precision)
        if not cuda:
            compiled.compiled_step = CompiledStep(compiled, "step", backend=backend)
        step = compiled.compiled_step
        skips = _cuda_graph_skips()
        for epoch in range(2):
            a, b = eager.train_epoch(epoch), compiled.train_epoch(epoch)
            if step.disabled is not None:
                raise AssertionError(f"{spec.id}: the step cannot be captured: {_breaks(compiled, ds)}")
            for key in a:
                if draws:
                    if not math.isfinite(b[key]):
                        raise AssertionError(f"{spec.id}: epoch {epoch}'s {key} is {b[key]!r} compiled")
                    continue
                if abs(b[key] - a[key]) > atol + rtol * abs(a[key]):
                    raise AssertionError(f"{spec.id}: epoch {epoch}'s {key} is {b[key]!r} compiled and {a[key]!r} "
                                         "eagerly (random draws other than nn.Dropout modules differ between the "
                                         "two: give options that turn them off)")
        if step.shape is None:  # every step ran eagerly: bags of one size, so this is the check's own fault
            raise AssertionError(f"{spec.id}: no step ran compiled ({step.calls} calls)")
        want, got = eager.model.state_dict(), compiled.model.state_dict()
        for name, x in want.items() if not draws else ():
            y = got[name]
            if x.is_floating_point():
                close = torch.allclose(y, x, rtol=rtol, atol=atol)
            else:
                close = torch.equal(y, x)
            if not close:
                raise AssertionError(f"{spec.id}: after two epochs {name} differs between the compiled and the "
                                     f"eager step (largest difference {(y.double() - x.double()).abs().max():.3g})")
        if cuda and (not step.cuda_graphs or _cuda_graph_skips() > skips):
            raise AssertionError(f"{spec.id}: inductor compiled the step but did not capture it as a CUDA graph "
                                 "(TORCH_LOGS=perf_hints says why)")
        # last: explaining runs the step once more, which moves the model's state (prototypes, statistics)
        breaks = _breaks(compiled, ds)
        if breaks:
            raise AssertionError(f"{spec.id}: the step is not one graph: {breaks}")
        torch._dynamo.reset()


def check_step_syncs(component: Any, options: dict[str, Any] | None = None, *, classes: int = 3,
                     bag_size: int = 5, padded: bool = False) -> None:
    """Raise ``AssertionError`` when the pooling's eager training step (with its default loss, on bags of one
    size, as :func:`check_step_capture` builds it; ``padded``: of ``bag_size``, ``bag_size - 1`` and
    ``bag_size - 2`` instances, so that every batch is padded) makes the host wait for a GPU: ``.item()``,
    ``nonzero``, boolean-mask indexing, tensors made from host data on the device...
    (:class:`milzoo.testing.StepCounter`), counted per step with nothing read back per step
    (``Trainer.step_reads = False``, as on a GPU)."""
    from milzoo.datasets import FoldData
    from milzoo.testing.dispatch import count_per_step

    spec = resolve(component, options)
    if spec.kind != "pooling":
        raise TypeError(f"check_step_syncs checks poolings, not the {spec.kind} {spec.name!r}")
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng():
        tr, ds = _trainer(spec, Path(tmp), False, classes, bag_size, 6, padded)
        tr.step_reads = False
        subsets = {n: ds.subset(range(2 * n)) for n in (2, 3)}

        def run(n: int) -> None:
            tr.data = FoldData(0, subsets[n], None, {})
            tr.train_epoch(1)

        count = count_per_step(run)
    if count.syncs:
        sites = "; ".join(f"{site} x{n}" for site, n in count.sync_sites.items())
        batches = "padded batches" if padded else "bags of one size"
        raise AssertionError(f"{spec.id}: {count.syncs} host synchronisations per training step ({batches}): "
                             f"{sites}")


def _breaks(tr, ds) -> str:
    """Why dynamo splits the trainer's step (empty when it is one graph), with the code that splits it."""
    from milzoo.components.output import TrainState
    from milzoo.datasets.batch import collate_bags
    from milzoo.train._epoch import forward_losses

    torch._dynamo.reset()
    batch = collate_bags([ds[i] for i in range(2)]).to(tr.device)
    explained = torch._dynamo.explain(lambda b, s: forward_losses(tr, b, s))(batch, TrainState(epoch=1))
    torch._dynamo.reset()
    if not explained.graph_break_count and explained.graph_count == 1:
        return ""
    reasons = []
    for r in explained.break_reasons:
        where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(r.user_stack or [])), "?")
        first = str(r.reason).strip().splitlines()[0]
        reasons.append(f"{where} ({first})")
    return (f"{explained.graph_count} graphs, {explained.graph_break_count} breaks: "
            + "; ".join(dict.fromkeys(reasons)))
