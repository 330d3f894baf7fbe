"""The :class:`Trainer` of one fold: set-up, the fit loop over epochs, and the state that makes a fold resumable.

Its public verbs are those of a training recipe: ``Trainer(...)`` sets up, :meth:`Trainer.fit` runs the epochs,
:meth:`Trainer.train_epoch` / :meth:`Trainer.eval_epoch` are one epoch's two halves, :meth:`Trainer.state_dict`
/ :meth:`Trainer.load_state` save and resume.  The work underneath lives in private modules: ``_epoch`` (the
step loop), ``_evaluate`` (predictions, metrics, selection, the result), ``_feed`` (batches on the device) and
``_precision`` (autocast and gradient scaling).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from milzoo.checkpoint import STATE, load_training_state, optimizer_state_from_json, save_model, save_training_state
from milzoo.checkpoint.predictions import write_predictions
from milzoo.datasets import resident
from milzoo.datasets.base import MILDataset
from milzoo.datasets.protocols import FoldData
from milzoo.errors import UserError
from milzoo.model.build import build_losses, build_model
from milzoo.train import _epoch, _evaluate
from milzoo.train._feed import Feed
from milzoo.train._precision import MixedPrecision
from milzoo.train.averaging import WeightAverager
from milzoo.train.random_stream import FoldStream
from milzoo.train.settings import make_optimizer, optimizer_kernels, resolve_batch_size, resolve_device

log = logging.getLogger(__name__)


class Trainer:
    """Trains one fold.  ``out_dir`` is the fold's folder in the run directory; ``emit`` receives each metric
    record; ``distributed`` is a :class:`~milzoo.train.distributed.Distributed` under torchrun."""

    def __init__(self, recipe, data: FoldData, out_dir: Path, emit: Callable[[dict], None],
                 distributed=None):
        self.recipe = recipe
        self.data = data
        self.out_dir = Path(out_dir)
        self.emit = emit
        self.dist = distributed
        tc = recipe.root.train
        self.device = resolve_device(tc.device) if distributed is None else distributed.device
        self.epochs = tc.epochs
        self.seed = recipe.root.seed
        ds = data.train
        self.stream = FoldStream(self.seed, data.fold)  # every draw this fold makes (random_stream.py)
        self.stream.seed_model()
        self.model = build_model(recipe, ds.instance_shape, ds.num_classes, ds.class_names)
        self.task = self.model.task
        for name, split in [("train", ds), *data.evals.items()]:
            self.task.check_labels(split.labels, f"the {name} bags of fold {data.fold}")
        self.task.fit(ds)  # per-fold state from the training labels only (kept in the checkpoint)
        # float64 everywhere (train.precision = "fp64"): weights here; MILModel casts its inputs to them
        float64 = tc.precision == "fp64"
        if float64:
            self.model.double()  # before fitting the standardiser, so its statistics stay in float64
        if self.model.standardizer is not None:
            self.model.standardizer.fit(ds.get_bag(i).x for i in range(len(ds)))
        self.model.to(self.device)
        self.losses = build_losses(recipe, self.model, ds.num_classes)
        for loss in self.losses:
            loss.bind(self.model, ds)
            loss.to(self.device)
            if float64 and isinstance(loss, torch.nn.Module):
                loss.double()
        self.freeze_epochs = _epoch.freeze_epochs(tc, self.losses)
        self.encoder_trainable = [p.requires_grad for p in self.model.encoder.parameters()]
        # DDP for training forwards (it follows the encoder's freezing by itself); self.model stays unwrapped
        self.train_model = self.model if distributed is None else distributed.wrap(self.model)
        self.optimizer = make_optimizer(recipe.root.optim, self.model.parameters(), self.device)
        self._kernels = optimizer_kernels(type(self.optimizer), self.device)
        self.batch_size = resolve_batch_size(tc.batch_size, self.device)
        if tc.batch_size == "auto":
            log.info("train.batch_size = auto: %d bags per step on %s", self.batch_size, self.device)
        _epoch.check_bags_per_step(self.losses, self.batch_size, len(ds))
        if self.device.type == "cuda" and not tc.deterministic:
            torch.backends.cudnn.benchmark = True  # fixed image shapes: let cuDNN time its algorithms once
        #: train.compile = "step" / "reduce-overhead": the step's forward and losses compiled (train/_compiled.py)
        self.compiled_step = None
        if tc.compile is True or tc.compile == "encoder":
            self.model.encoder.compile()  # in place: parameter names and checkpoints stay the same
        elif tc.compile:
            from milzoo.train._compiled import CompiledStep

            self.compiled_step = CompiledStep(self, tc.compile)
        self.averager = WeightAverager(tc.average, self.model, self.epochs) if tc.average is not None else None
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.amp = MixedPrecision(tc.precision, self.device)
        #: whether a training step may read values back: free on a CPU (a non-finite loss then stops the step it
        #: happens in); a GPU's steps never do.  benchmarks/step_ops.py turns it off to count a GPU's step.
        self.step_reads = self.device.type == "cpu"
        self.precision, self.amp_dtype = self.amp.precision, self.amp.amp_dtype  # "auto" resolved; autocast type
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.step = 0
        self.best: dict[str, Any] | None = None  # {"epoch", "value", "threshold"}
        self.bad_epochs = 0
        self.threshold: float | None = None
        self.monitor = recipe.root.protocol.monitor
        self.feed = Feed(tc, self.device)
        for split_ds in [data.train, *data.evals.values()]:
            self.feed.resident_split(split_ds)

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.rank == 0

    @property
    def eval_model(self):
        """The model that is evaluated and saved: the averaged weights once they exist, else the live ones."""
        if self.averager is not None and self.averager.active:
            return self.averager.module
        return self.model

    # ------------------------------------------------------------------ fit
    def fit(self, progress: Any = True) -> dict[str, Any]:
        """Train the fold's remaining epochs (resuming from its state file), then write the last predictions;
        returns :meth:`result`.  ``progress``: a run's :class:`~milzoo.train.progress.RunObserver`, or True for
        this fold's own display (a bar on a terminal, one line per epoch in a log file)."""
        saved = load_training_state(self.out_dir / STATE)
        if saved is not None:
            self.load_state(saved)
            log.info("fold %d: resumed after epoch %d", self.data.fold, self.start_epoch - 1)
        from milzoo.train.progress import as_observer

        watch, owned = as_observer(progress, self.epochs) if self.is_main else (None, False)
        if watch is not None:
            watch.fold_started(self.data.fold, self.start_epoch, self.epochs)
        stopped_early = False
        last_eval: dict[str, Any] = {}
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, self.epochs):
            t0 = time.perf_counter()
            train_stats = self.train_epoch(epoch)
            t_train = time.perf_counter() - t0
            results = last_eval = self.eval_epoch(epoch)
            records, entry = _evaluate.epoch_records(self.data.fold, epoch, self.optimizer.param_groups[0]["lr"],
                                                     t_train, train_stats, results, self.threshold)
            for record in records:
                self.emit(record)
            self.history.append(entry)
            self._select(epoch, results)
            self._checkpoint(epoch)
            if watch is not None:
                watch.epoch_done(self.data.fold, epoch, records)
            es = self.recipe.root.train.early_stopping
            if _evaluate.stops_early(es, epoch, self.bad_epochs, "val" in results):
                stopped_early = True
                log.info("fold %d: early stop at epoch %d (no val %s improvement for %d epochs)",
                         self.data.fold, epoch, self.monitor, es.patience)
                break
        if not last_eval:  # resumed a finished fold: re-evaluate for predictions (collective when distributed)
            last_eval = self.eval_epoch(epoch)
        if self.is_main:
            self._write_predictions("last", last_eval)
        result = self.result(stopped_early)
        if watch is not None:
            watch.fold_done(self.data.fold, result)
            if owned:
                watch.close()
        return result

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of optimiser steps; the mean training loss (and its parts) per bag."""
        return _epoch.train_epoch(self, epoch)

    def eval_epoch(self, epoch: int) -> dict[str, dict[str, Any]]:
        """Every evaluated split's predictions (through :meth:`predict`) and metrics; updates the threshold."""
        preds = _evaluate.predict_splits(self.predict, self.data.evals, self.device)
        if self.task.thresholds:
            self.threshold = _evaluate.updated_threshold(self.recipe.root.protocol, preds, self.threshold)
        return {name: {"metrics": self.evaluate(p, self.threshold, self._patients(self.data.evals[name])), "preds": p}
                for name, p in preds.items()}

    def predict(self, ds: MILDataset) -> dict[str, Any]:
        """Bag probabilities, labels and instance predictions of a whole split."""
        return _evaluate.predict(self, ds)

    def evaluate(self, preds: dict[str, Any], threshold: float | None,
                 groups: dict[str, Any] | None = None) -> dict[str, float]:
        """Metrics of one split's :meth:`predict` output at ``threshold`` (and per patient with ``groups``)."""
        return _evaluate.evaluate(self.task, preds, threshold, groups)

    def _patients(self, ds: MILDataset) -> dict[str, Any] | None:
        """Bag id -> patient of a split when ``protocol.patient_metrics`` asks for patient-level metrics."""
        if self.recipe.root.protocol.patient_metrics == "none":
            return None
        groups = ds.groups
        if groups is None:
            raise UserError("protocol.patient_metrics needs patients, but the dataset has none (no patient column; "
                            "docs/wsi.md says which columns name them); remove the option or add the column.")
        return dict(zip(ds.bag_ids, groups.tolist()))

    def result(self, stopped_early: bool) -> dict[str, Any]:
        """The fold's summary: last epoch, validation-selected epoch, and (labelled) best epoch on test."""
        return _evaluate.summary(self.data.fold, self.history, self.best, self.monitor, list(self.data.evals),
                                 stopped_early, headline=self.task.headline)

    def _select(self, epoch: int, results: dict[str, Any]) -> None:
        """Keep ``epoch`` as the best one (and save it) when validation improved on the monitored metric."""
        if "val" not in results:
            return
        val = results["val"]["metrics"]
        value, loss = val.get(self.monitor, float("nan")), val.get("loss", float("nan"))
        if not _evaluate.improved(self.best, value, self.monitor, loss):
            self.bad_epochs += 1
            return
        self.best = {"epoch": epoch, "value": value, "threshold": self.threshold, "loss": loss}
        self.bad_epochs = 0
        if self.is_main:
            save_model(self.eval_model, self.out_dir / "best", {"epoch": epoch, "threshold": self.threshold})
            self._write_predictions("best", results)

    def _write_predictions(self, which: str, results: dict[str, Any]) -> None:
        for name, r in results.items():
            write_predictions(self.out_dir / which, name, r["preds"], self.task.columns(self.data.train.class_names),
                              self.task.label_columns())

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Everything a resumed fold needs to continue after ``epoch`` exactly as if it had not stopped."""
        return {
            "epoch": epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "losses": [loss.state_dict() for loss in self.losses],
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.history,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "threshold": self.threshold,
            "scaler": self.amp.state_dict(),
            "averaged": self.averager.state_dict() if self.averager is not None else {},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (as read back by ``checkpoint.load_training_state``)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(optimizer_state_from_json(state["optimizer"]))
        for g in self.optimizer.param_groups:  # the saved groups carry the saving device's kernel choice
            g.update({"fused": None, "foreach": None, **self._kernels})
        for loss, loss_state in zip(self.losses, state["losses"]):
            loss.load_state_dict(loss_state)
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.amp.load_state_dict(state.get("scaler"))
        if self.averager is not None and state.get("averaged"):
            self.averager.load_state_dict(state["averaged"])
        self.history = state["history"]
        self.best = state["best"]
        self.bad_epochs = int(state["bad_epochs"])
        self.threshold = state["threshold"]
        self.step = int(state["step"])
        self.start_epoch = int(state["epoch"]) + 1

    def _checkpoint(self, epoch: int) -> None:
        """Rank 0 saves the evaluated model as ``last`` and the fold's training state."""
        if not self.is_main:
            return
        save_model(self.eval_model, self.out_dir / "last", {"epoch": epoch, "threshold": self.threshold})
        save_training_state(self.out_dir / STATE, self.state_dict(epoch))

    # ------------------------------------------------------------------ batches (tests and benchmarks call these)
    def _resident_split(self, ds: MILDataset) -> resident.ResidentSplit | None:
        return self.feed.resident_split(ds)

    def _iter_batches(self, ds: MILDataset, batches: list[list[int]]):
        return self.feed.iter_batches(ds, batches)

    def _loader(self, ds: MILDataset, batches: list[list[int]]) -> DataLoader:
        return self.feed.loader(ds, batches)
