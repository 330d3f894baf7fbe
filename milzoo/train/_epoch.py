"""One training epoch of a fold: the epoch's learning rate and encoder freezing, the step loop (forward, losses,
backward, optimiser step, weight averaging), the per-epoch loss sums (:class:`LossSums`) and divergence.

A step reads nothing back from the device (no host synchronisation on a GPU); the sums are read once, at the
epoch's end.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from milzoo.checkpoint import STATE
from milzoo.components.output import TrainState
from milzoo.errors import TrainingDiverged, UserError
from milzoo.train import _feed
from milzoo.train.settings import lr_at

if TYPE_CHECKING:
    from milzoo.datasets.batch import MILBatch
    from milzoo.train.trainer import Trainer

log = logging.getLogger(__name__)


class LossSums:
    """Per-epoch sums of the training loss and its parts, times the bags of each step.

    Nothing here reads a value back per step (a host sync on a GPU): each step's values are stacked into one
    small tensor where they are (one operator; a copy, so a captured step's outputs may be overwritten by the
    next replay), and :meth:`read` copies all of them to the host at once, at the epoch's end, where they are
    summed as Python floats, step by step -- the same arithmetic as on a CPU, so the epoch means are the
    same.  The first step with a non-finite loss is found there too.

    ``host``: read and sum each step's values at once instead (reading a value back costs nothing on a CPU,
    where a non-finite loss then stops the step it happens in); default: on a CPU.
    """

    def __init__(self, device: torch.device, host: bool | None = None):
        self.device = device
        self.sums: dict[str, float] = {}
        self._host = torch.device(device).type == "cpu" if host is None else bool(host)
        self._bad: int | None = None  # the first step whose loss was non-finite
        # device path: per step (step, bags, names of its tensor values, its Python-number parts); the values
        self._steps: list[tuple[int, int, list[str], dict[str, float]]] = []
        self._values: list[torch.Tensor] = []
        self._read = False

    def add(self, total: torch.Tensor, parts: dict[str, Any], n: int, step: int) -> None:
        if self._host:
            value = float(total.detach())
            if self._bad is None and not math.isfinite(value):
                self._bad = step
            for k, v in (("loss", value), *parts.items()):
                v = float(v) * n
                self.sums[k] = v if k not in self.sums else self.sums[k] + v
            return
        names, numbers, values = ["loss"], {}, [_scalar(total)]
        for k, v in parts.items():
            if isinstance(v, torch.Tensor):
                names.append(k)
                values.append(_scalar(v))
            else:
                numbers[k] = float(v)
        self._values.append(torch.stack(values))  # promotes to the widest type: exact, as each value's own cast
        self._steps.append((step, n, names, numbers))
        self._read = False

    def _collect(self) -> None:
        """The device path's values, summed in step order on the host (one copy for the epoch)."""
        if self._host or self._read:
            return
        flat = iter(torch.cat(self._values).tolist() if self._values else [])
        sums: dict[str, float] = {}
        bad = None
        for step, n, names, numbers in self._steps:
            for k, value in (*zip(names, flat), *numbers.items()):
                if k == "loss" and bad is None and not math.isfinite(value):
                    bad = step
                v = value * n
                sums[k] = v if k not in sums else sums[k] + v
        self.sums, self._bad, self._read = sums, bad, True

    def diverged_at(self) -> int | None:
        """The step whose loss was non-finite (on the device path: a host read of the epoch's values), or None."""
        self._collect()
        return self._bad

    def read(self) -> dict[str, float]:
        """The sums as Python floats."""
        self._collect()
        return dict(self.sums)


def _scalar(v: torch.Tensor) -> torch.Tensor:
    """``v`` as a detached 0-d tensor, without an operator when it is one already (the parts usually are)."""
    if v.requires_grad:
        v = v.detach()
    return v if v.dim() == 0 else v.reshape(())


def freeze_epochs(train_config, losses) -> int:
    """Epochs the encoder stays frozen: the longest of ``train.freeze_encoder_epochs`` and any loss's own."""
    return max([train_config.freeze_encoder_epochs]
               + [int(getattr(loss, "freeze_encoder_epochs", 0) or 0) for loss in losses])


def check_bags_per_step(losses, batch_size: int, train_bags: int) -> None:
    """Refuse a step too small for a loss that compares bags within a step (``min_bags_per_step``, e.g. the Cox
    partial likelihood, whose risk set is the step's bags)."""
    for loss in losses:
        need = int(getattr(loss, "min_bags_per_step", 1) or 1)
        if batch_size < need:
            raise UserError(
                f"the {loss.name!r} loss compares the bags of a training step with each other and needs at least "
                f"{need} bags per step, but train.batch_size is {batch_size}. Set train.batch_size = {need} or more "
                "(--set train.batch_size=...), or choose a loss that works on single bags."
            )
        if train_bags < need:
            raise UserError(f"the {loss.name!r} loss needs at least {need} bags per step, but the fold has only "
                            f"{train_bags} training bags; use more data or another loss.")


def set_encoder_frozen(encoder: torch.nn.Module, trainable: list[bool], frozen: bool) -> None:
    """Freeze the encoder, or give back each parameter's own ``requires_grad`` (``trainable``, from the start)."""
    for p, can_train in zip(encoder.parameters(), trainable):
        p.requires_grad_(can_train and not frozen)


def train_epoch(tr: Trainer, epoch: int) -> dict[str, float]:
    """Train ``tr`` for one epoch; the mean loss and loss parts per bag (over all ranks when distributed)."""
    for g, base in zip(tr.optimizer.param_groups, tr.base_lrs):
        g["lr"] = lr_at(tr.recipe.root.schedule, base, epoch, tr.epochs)
    set_encoder_frozen(tr.model.encoder, tr.encoder_trainable, epoch < tr.freeze_epochs)
    tr.model.train()
    batches = _feed.batches(tr.stream.epoch_order(epoch, len(tr.data.train)), tr.batch_size)
    weights = [1.0] * len(batches)
    if tr.dist is not None:  # this rank's slice of every global batch, and its own RNG stream
        batches, weights = tr.dist.shard_batches(batches, tr.batch_size)
        tr.stream.seed_rank_epoch(epoch, tr.dist.rank)
    state = TrainState(epoch=epoch, num_epochs=tr.epochs, step=tr.step, fold=tr.data.fold)
    sums = LossSums(tr.device, host=tr.step_reads)
    count = 0
    for batch, weight in zip(tr.feed.iter_batches(tr.data.train, batches), weights):
        state.step = tr.step
        _step(tr, batch, state, weight, sums, epoch)
        count += batch.size
    bad = sums.diverged_at()
    if bad is not None:
        diverged(tr.out_dir, tr.data.fold, epoch, bad, math.nan, {})
    for loss in tr.losses:
        loss.end_epoch(state)
    if tr.compiled_step is not None:
        tr.compiled_step.end_epoch(epoch)
    if tr.averager is not None:
        tr.averager.after_epoch(tr.model, epoch)
    totals = sums.read()
    if tr.dist is not None:
        totals, count = tr.dist.reduce_sums(totals, count)
    return {k: v / max(count, 1) for k, v in totals.items()}


def forward_losses(tr: Trainer, batch: MILBatch, state: TrainState) -> tuple[torch.Tensor, dict[str, Any]]:
    """The part of a step that ``train.compile = "step"`` captures: the forward, the pooling's
    ``after_forward`` and the losses; the total loss and its parts."""
    with tr.amp.autocast():
        out = tr.train_model(batch)
    with torch.no_grad():
        tr.model.pooling.after_forward(out, batch)
    total = None
    parts: dict[str, Any] = {}
    for loss in tr.losses:
        res = loss(out, batch, state)
        total = res.total if total is None else total + res.total
        for k, v in res.parts.items():
            parts[k] = v
    return total, parts


def _step(tr: Trainer, batch: MILBatch, state: TrainState, weight: float, sums: LossSums, epoch: int) -> None:
    """One optimiser step on ``batch``; its loss (times its bags) joins ``sums``."""
    if tr.compiled_step is not None:
        total, parts = tr.compiled_step(batch, state)
    else:
        total, parts = forward_losses(tr, batch, state)
    sums.add(total, parts, batch.size, tr.step)
    # reading the flag is free on a CPU (no queue to wait for): stop before the bad update there;
    # on a GPU it would wait for the step's kernels, so the check happens once, at the epoch's end
    if tr.step_reads and sums.diverged_at() is not None:
        diverged(tr.out_dir, tr.data.fold, epoch, tr.step, float(total.detach()),
                 {k: float(v) for k, v in parts.items()})
    # distributed: weight by this rank's share of the global batch (DDP averages over ranks)
    scaled = total if weight == 1.0 else total * weight
    tr.optimizer.zero_grad(set_to_none=True)
    tr.amp.backward(scaled, tr.optimizer)
    grad_clip = tr.recipe.root.train.grad_clip
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(tr.model.parameters(), grad_clip)
    tr.amp.step(tr.optimizer)
    tr.step += 1
    if tr.averager is not None:
        tr.averager.after_step(tr.model, epoch)


def diverged(out_dir: Path, fold: int, epoch: int, step: int, value: float, parts: dict[str, float]):
    """Raise :class:`TrainingDiverged`, saying where it happened and which checkpoint is left."""
    value_text = f" ({value})" if not math.isnan(value) or parts else ""
    if epoch > 0 and (out_dir / STATE).exists():
        kept = f"the last good checkpoint (end of epoch {epoch - 1}) is kept in {out_dir}"
    else:  # the first epoch: there is no checkpoint to point at
        kept = "it diverged in the first epoch, so no checkpoint was written"
    raise TrainingDiverged(
        f"the loss became non-finite{value_text} at fold {fold}, epoch {epoch}, step {step}"
        f"{f' (parts: {parts})' if parts else ''}. Training stopped; {kept}. Lower optim.lr, set "
        "train.grad_clip, or check the data for NaN/inf values."
    )
