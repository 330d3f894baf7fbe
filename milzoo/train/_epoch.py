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
    """Per-epoch sums of the training loss and its parts, times the bags of each step, kept on the device.

    Nothing here reads a value back per step (a host sync on a GPU); :meth:`read` does, once per epoch.  The
    sums are float64, the same arithmetic as summing Python floats, so the epoch means are unchanged.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor | float] = {}
        self._first_bad: torch.Tensor | None = None  # step of the first non-finite total, -1 while none
        # on a CPU reading a value back waits for nothing: Python floats there, one read per value instead
        # of eight small tensor operations per step (the same sums: float64 either way)
        self._host = torch.device(device).type == "cpu"
        self._host_bad: int | None = None

    def add(self, total: torch.Tensor, parts: dict[str, Any], n: int, step: int) -> None:
        if self._host:
            value = float(total.detach())
            if self._host_bad is None and not math.isfinite(value):
                self._host_bad = step
            for k, v in (("loss", value), *parts.items()):
                v = float(v) * n
                self.sums[k] = v if k not in self.sums else self.sums[k] + v
            return
        t = total.detach()
        bad = ~torch.isfinite(t)
        first = torch.full((), -1, dtype=torch.long, device=t.device) if self._first_bad is None else self._first_bad
        self._first_bad = torch.where((first < 0) & bad, step, first)
        for k, v in (("loss", t), *parts.items()):
            value = v.detach().to(torch.float64) * n if isinstance(v, torch.Tensor) else float(v) * n
            self.sums[k] = value if k not in self.sums else self.sums[k] + value

    def diverged_at(self) -> int | None:
        """The step whose loss was non-finite (a host read), or None."""
        if self._host:
            return self._host_bad
        if self._first_bad is None:
            return None
        step = int(self._first_bad)
        return None if step < 0 else step

    def read(self) -> dict[str, float]:
        """The sums as Python floats: one device-to-host copy for all of them."""
        keys = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        read = dict(zip(keys, torch.stack([self.sums[k].reshape(()) for k in keys]).tolist())) if keys else {}
        return {k: float(read.get(k, v)) for k, v in self.sums.items()}


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
    batches = _feed.batches(_feed.epoch_order(tr.seed, tr.data.fold, epoch, len(tr.data.train)), tr.batch_size)
    weights = [1.0] * len(batches)
    if tr.dist is not None:  # this rank's slice of every global batch, and its own RNG stream
        batches, weights = tr.dist.shard_batches(batches, tr.batch_size)
        tr.dist.seed_epoch(tr.seed, tr.data.fold, epoch)
    state = TrainState(epoch=epoch, num_epochs=tr.epochs, step=tr.step, fold=tr.data.fold)
    sums = LossSums(tr.device)
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
    if tr.averager is not None:
        tr.averager.after_epoch(tr.model, epoch)
    totals = sums.read()
    if tr.dist is not None:
        totals, count = tr.dist.reduce_sums(totals, count)
    return {k: v / max(count, 1) for k, v in totals.items()}


def _step(tr: Trainer, batch: MILBatch, state: TrainState, weight: float, sums: LossSums, epoch: int) -> None:
    """One optimiser step on ``batch``; its loss (times its bags) joins ``sums``."""
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
    sums.add(total, parts, batch.size, tr.step)
    # reading the flag is free on a CPU (no queue to wait for): stop before the bad update there;
    # on a GPU it would wait for the step's kernels, so the check happens once, at the epoch's end
    if tr.device.type == "cpu" and sums.diverged_at() is not None:
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
