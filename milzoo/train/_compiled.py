"""``train.compile = "step"`` / ``"reduce-overhead"``: the training step's forward, the pooling's
``after_forward`` and the losses as one ``torch.compile`` region (its backward follows through AOTAutograd).

``"step"`` fuses the region's many small operators into few kernels; ``"reduce-overhead"`` also replays it
as a CUDA graph on a GPU (torch.compile's CUDA-graph mode), so a step costs a few launches instead of
hundreds.  A CUDA graph needs static shapes: the region is compiled for the shape of the fold's first full
batch of unpadded bags (fixed bags per step and bag size, as the image benchmarks have) and used for every
batch of that shape; any other batch (the shorter last batch of an epoch, padded bags of different sizes)
runs eagerly, and the fold's log says how many did.  A region that cannot be captured whole (a graph break:
a host read in some component, an unsupported operation) is reported once and the fold trains eagerly.

The first step of a fold runs eagerly too: components initialise lazy state there (PSAtt's first-bag
prototypes), which would otherwise cost a second compilation.  The compiled kernels draw their own random
numbers (dropout, augmentations): the same distributions, other numbers than the eager step's.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from milzoo.components.output import TrainState
    from milzoo.datasets.batch import MILBatch
    from milzoo.train.trainer import Trainer

log = logging.getLogger(__name__)

#: ``train.compile`` values that compile the step (``True``/``"encoder"`` compile the encoder only)
STEP_MODES = {"step": "default", "reduce-overhead": "reduce-overhead"}
_SERIAL = itertools.count()


def _cuda_graph_skips() -> int:
    """How many compiled graphs inductor has refused to capture as CUDA graphs in this process."""
    from torch._dynamo.utils import counters

    return sum(v for k, v in counters["inductor"].items() if k.startswith("cudagraph_skips"))


class CompiledStep:
    """The compiled forward-and-losses of a trainer's steps (see the module), with its eager fallback.

    ``backend`` is torch.compile's (default: inductor); tests pass a lighter one.
    """

    def __init__(self, tr: Trainer, setting: str, backend: Any = None):
        from milzoo.train._epoch import forward_losses

        self.setting = setting
        self.mode = STEP_MODES[setting]

        def step(batch, state):
            return forward_losses(tr, batch, state)

        # a code object of its own: dynamo keeps its compiled graphs, and its limit on recompilations (8), per
        # code object; shared by the folds (trainers) of a process, a fold whose guards fail would recompile into
        # the others' cache, and once the limit is reached dynamo runs the step eagerly without an error
        step.__code__ = step.__code__.replace(co_name=f"compiled_step_{next(_SERIAL)}")
        self._eager = step
        self.cuda_graphs = setting == "reduce-overhead" and tr.device.type == "cuda"
        self.disabled: str | None = None
        if tr.dist is not None:
            self._disable("distributed training (DDP) is not captured")
        if self.cuda_graphs:
            # buffers the step updates in place (PSAtt's prototypes, BatchNorm's running statistics, a loss's
            # per-bag state such as DEMIL's soft labels) keep their address across replays: a CUDA graph may then
            # mutate them instead of being skipped
            for buf in itertools.chain(tr.model.buffers(), *(loss.buffers() for loss in tr.losses)):
                torch._dynamo.mark_static_address(buf)
        kwargs: dict[str, Any] = {"fullgraph": True}
        if backend is not None:
            kwargs["backend"] = backend
        else:
            kwargs["mode"] = self.mode
        #: the torch.compile'd forward-and-losses (benchmarks/step_ops.py wraps it to count a captured step)
        self.compiled = torch.compile(self._eager, **kwargs)
        self._skips_before = _cuda_graph_skips()
        self._graphs_checked = False
        self.shape: tuple | None = None  # (x shape, dtype) of the captured batches
        self.calls = 0
        self.compiled_steps = 0
        self.eager_steps = 0
        if setting == "reduce-overhead" and tr.device.type != "cuda":
            log.info("train.compile = 'reduce-overhead': CUDA graphs need a GPU; on %s the step is compiled "
                     "without them (as 'step')", tr.device)

    def _key(self, batch: MILBatch) -> tuple:
        return tuple(batch.x.shape), batch.x.dtype, batch.x.device

    def __call__(self, batch: MILBatch, state: TrainState) -> tuple[torch.Tensor, dict[str, Any]]:
        self.calls += 1
        if self.disabled is not None or self.calls == 1 or not batch.unpadded:
            if self.disabled is None and batch.unpadded is not True and self.shape is None and self.calls > 1:
                self._disable("the batches are padded (bags of different sizes): a captured step needs fixed "
                              "bags per step and bag size")
            self.eager_steps += 1
            return self._eager(batch, state)
        key = self._key(batch)
        if self.shape is None:
            self.shape = key
        elif key != self.shape:
            self.eager_steps += 1
            return self._eager(batch, state)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are not read again
        try:
            out = self.compiled(batch, state)
        except torch._dynamo.exc.TorchDynamoException as exc:  # a graph break, or a backend that failed
            self._disable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            self.eager_steps += 1
            return self._eager(batch, state)
        self.compiled_steps += 1
        if self.cuda_graphs and not self._graphs_checked:
            self._graphs_checked = True
            self._check_graphs()
        return out

    def _check_graphs(self) -> None:
        """Say once when inductor compiled the step but would not make it a CUDA graph (CPU work in the region,
        such as DTFD's random split; an input it cannot keep at one address): the step then runs compiled,
        one launch per fused kernel, not one replay."""
        skips = _cuda_graph_skips()
        if skips > self._skips_before:
            log.warning("train.compile = 'reduce-overhead': the step is compiled, but inductor did not capture it "
                        "as a CUDA graph (%d skip(s)); set TORCH_LOGS=perf_hints to see why. The step runs "
                        "compiled without CUDA graphs.", skips - self._skips_before)

    def _disable(self, why: str) -> None:
        self.disabled = why
        log.warning("train.compile = %r: the step cannot be captured (%s); training continues eagerly. "
                    "Set train.compile = false to silence this, or use fixed bag sizes.", self.setting, why)

    def end_epoch(self, epoch: int) -> None:
        """Say in the log how many of the epoch's steps ran compiled (and why the others did not)."""
        if self.eager_steps and self.compiled_steps:
            log.info("train.compile = %r, epoch %d: %d steps captured for batches of shape %s, %d eager (another "
                     "shape, or the fold's first step)", self.setting, epoch, self.compiled_steps,
                     list(self.shape[0]) if self.shape else None, self.eager_steps)
        self.compiled_steps = self.eager_steps = 0
