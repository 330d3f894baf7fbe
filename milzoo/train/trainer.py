"""The training loop of one fold: epochs, evaluation, selection, checkpoints, resume."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from milzoo.checkpoint import _model as ckpt
from milzoo.checkpoint.predictions import write_predictions
from milzoo.datasets import resident
from milzoo.train.averaging import WeightAverager
from milzoo.datasets.batch import collate_bags
from milzoo.model.build import build_losses, build_model
from milzoo.datasets.base import MILDataset
from milzoo.errors import TrainingDiverged
from milzoo.datasets.protocols import FoldData
from milzoo.metrics import bag_metrics, higher_is_better, instance_accuracy, youden_threshold
from milzoo.components.output import TrainState
from milzoo.layers.precision import at_least_float32
from milzoo.train.settings import lr_at, make_optimizer, optimizer_kernels, resolve_batch_size, resolve_device, \
    resolve_precision

log = logging.getLogger("milzoo")


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


def _batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


class Trainer:
    """Trains one fold.  ``out_dir`` is the fold's folder in the run directory."""

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
        torch.manual_seed(self.seed * 1000 + data.fold)
        self.model = build_model(recipe, ds.instance_shape, ds.num_classes, ds.class_names)
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
        self.freeze_epochs = max([tc.freeze_encoder_epochs] + [int(getattr(l, "freeze_encoder_epochs", 0) or 0)
                                                                 for l in self.losses])
        self._encoder_trainable = [p.requires_grad for p in self.model.encoder.parameters()]
        # DDP for training forwards (it follows the encoder's freezing by itself); self.model stays unwrapped
        self.train_model = self.model if distributed is None else distributed.wrap(self.model)
        self.optimizer = make_optimizer(recipe.root.optim, self.model.parameters(), self.device)
        self._kernels = optimizer_kernels(type(self.optimizer), self.device)
        self.batch_size = resolve_batch_size(tc.batch_size, self.device)
        if tc.batch_size == "auto":
            log.info("train.batch_size = auto: %d bags per step on %s", self.batch_size, self.device)
        if self.device.type == "cuda" and not tc.deterministic:
            torch.backends.cudnn.benchmark = True  # fixed image shapes: let cuDNN time its algorithms once
        if tc.compile:
            self.model.encoder.compile()  # in place: parameter names and checkpoints stay the same
        self.averager = WeightAverager(tc.average, self.model, self.epochs) if tc.average is not None else None
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.precision = resolve_precision(tc.precision, self.device)
        if tc.precision == "auto":
            log.info("train.precision = auto: %s on %s", self.precision, self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler("cuda") if (self.precision == "fp16" and self.device.type == "cuda") else None
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.step = 0
        self.best: dict[str, Any] | None = None  # {"epoch", "value"}
        self.bad_epochs = 0
        self.threshold: float | None = None
        self.monitor = recipe.root.protocol.monitor
        self._moved = resident.Moved(self.device)
        self._resident: dict[int, resident.ResidentSplit | None] = {}
        for split_ds in [data.train, *data.evals.values()]:
            self._resident_split(split_ds)

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.rank == 0

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def eval_model(self):
        """The model that is evaluated and saved: the averaged weights once they exist, else the live ones."""
        if self.averager is not None and self.averager.active:
            return self.averager.module
        return self.model

    def _set_encoder_frozen(self, frozen: bool) -> None:
        for p, trainable in zip(self.model.encoder.parameters(), self._encoder_trainable):
            p.requires_grad_(trainable and not frozen)

    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.data.fold * 1009 + epoch)
        return torch.randperm(len(self.data.train), generator=g).tolist()

    def _loader(self, ds: MILDataset, batches: list[list[int]]) -> DataLoader:
        nw = self.recipe.root.train.num_workers
        return DataLoader(ds, batch_sampler=batches, collate_fn=collate_bags, num_workers=nw,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _resident_split(self, ds: MILDataset) -> resident.ResidentSplit | None:
        """``ds`` on the training device (milzoo.resident) when ``train.data_on_device`` allows it, else None."""
        key = id(ds)
        if key in self._resident:
            return self._resident[key]
        tc = self.recipe.root.train
        mode = tc.data_on_device
        split = None
        need = resident.nbytes(ds, self._moved.host_ids()) if resident.supports(ds) else None
        if mode is not False and need is not None:
            fits = True
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                fits = need <= free // 2
            elif mode == "auto" and tc.num_workers > 0:
                fits = False  # on a CPU the data is in memory already; the workers asked for run in parallel
            if fits or mode is True:
                split = resident.make_resident(ds, self._moved)
                if self.device.type != "cpu":
                    log.info("data on %s: %.1f MB more", self.device, need / 1e6)
            else:
                log.info("data_on_device = auto: DataLoader path for %.1f MB of data on %s", need / 1e6, self.device)
        if split is None and self.device.type == "cuda":
            resident.pin_host_memory(ds)  # non-blocking copies of each batch
        self._resident[key] = split
        return split

    def _iter_batches(self, ds: MILDataset, batches: list[list[int]]):
        """The batches of ``ds`` on the training device, from its resident copy or a DataLoader."""
        split = self._resident_split(ds)
        if split is None and self.device.type == "cpu" and self.recipe.root.train.num_workers == 0 \
                and not hasattr(ds, "__getitems__"):
            # what a DataLoader without workers does (dataset[i] for each bag, collate_bags), without its
            # iterator machinery per step; the same batches and random draws (tests/test_trainer_steps.py)
            torch.empty((), dtype=torch.int64).random_()
            for rows in batches:
                yield collate_bags([ds[i] for i in rows])
            return
        if split is None:
            for batch in self._loader(ds, batches):
                yield batch.to(self.device, non_blocking=True)
            return
        # a DataLoader iterator draws its base seed from torch's global RNG; draw it too, so that the
        # augmentations and dropout that follow see the same random stream on both paths
        torch.empty((), dtype=torch.int64).random_()
        yield from resident.iterate(split, batches, self.device)

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "losses": [l.state_dict() for l in self.losses],
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.history,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "threshold": self.threshold,
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "averaged": self.averager.state_dict() if self.averager is not None else {},
        }

    def load_state(self, st: dict[str, Any]) -> None:
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(ckpt.optimizer_state_from_json(st["optimizer"]))
        for g in self.optimizer.param_groups:  # the saved groups carry the saving device's kernel choice
            g.update({"fused": None, "foreach": None, **self._kernels})
        for loss, sd in zip(self.losses, st["losses"]):
            loss.load_state_dict(sd)
        torch.set_rng_state(st["rng"])
        if st.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        if self.averager is not None and st.get("averaged"):
            self.averager.load_state_dict(st["averaged"])
        self.history = st["history"]
        self.best = st["best"]
        self.bad_epochs = int(st["bad_epochs"])
        self.threshold = st["threshold"]
        self.step = int(st["step"])
        self.start_epoch = int(st["epoch"]) + 1

    def _checkpoint(self, epoch: int) -> None:
        if not self.is_main:
            return
        ckpt.save_model(self.eval_model, self.out_dir / "last", {"epoch": epoch, "threshold": self.threshold})
        ckpt.save_training_state(self.out_dir / ckpt.STATE, self.state_dict(epoch))

    # ------------------------------------------------------------------ train
    def train_epoch(self, epoch: int) -> dict[str, float]:
        tc = self.recipe.root.train
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr_at(self.recipe.root.schedule, base, epoch, self.epochs)
        self._set_encoder_frozen(epoch < self.freeze_epochs)
        self.model.train()
        order = self._epoch_order(epoch)
        batches = _batches(order, self.batch_size)
        weights = [1.0] * len(batches)
        if self.dist is not None:  # this rank's slice of every global batch, and its own RNG stream
            batches, weights = self.dist.shard_batches(batches, self.batch_size)
            self.dist.seed_epoch(self.seed, self.data.fold, epoch)
        state = TrainState(epoch=epoch, num_epochs=self.epochs, step=self.step, fold=self.data.fold)
        sums = LossSums(self.device)
        count = 0
        for b_i, batch in enumerate(self._iter_batches(self.data.train, batches)):
            state.step = self.step
            with self._autocast():
                out = self.train_model(batch)
            with torch.no_grad():
                self.model.pooling.after_forward(out, batch)
            total = None
            parts: dict[str, Any] = {}
            for loss in self.losses:
                res = loss(out, batch, state)
                total = res.total if total is None else total + res.total
                for k, v in res.parts.items():
                    parts[k] = v
            n = batch.size
            sums.add(total, parts, n, self.step)
            # reading the flag is free on a CPU (no queue to wait for): stop before the bad update there;
            # on a GPU it would wait for the step's kernels, so the check happens once, at the epoch's end
            if self.device.type == "cpu" and sums.diverged_at() is not None:
                self._diverged(epoch, self.step, float(total.detach()),
                               {k: float(v) for k, v in parts.items()})
            # distributed: weight by this rank's share of the global batch (DDP averages over ranks)
            scaled = total if weights[b_i] == 1.0 else total * weights[b_i]
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                scaled.backward()
            if tc.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.step += 1
            if self.averager is not None:
                self.averager.after_step(self.model, epoch)
            count += n
        bad = sums.diverged_at()
        if bad is not None:
            self._diverged(epoch, bad, math.nan, {})
        for loss in self.losses:
            loss.end_epoch(state)
        if self.averager is not None:
            self.averager.after_epoch(self.model, epoch)
        totals = sums.read()
        if self.dist is not None:
            totals, count = self.dist.reduce_sums(totals, count)
        return {k: v / max(count, 1) for k, v in totals.items()}

    def _diverged(self, epoch: int, step: int, value: float, parts: dict[str, float]):
        shown = f" ({value})" if not math.isnan(value) or parts else ""
        if epoch > 0 and (self.out_dir / ckpt.STATE).exists():
            kept = f"the last good checkpoint (end of epoch {epoch - 1}) is kept in {self.out_dir}"
        else:  # the first epoch: there is no checkpoint to point at
            kept = "it diverged in the first epoch, so no checkpoint was written"
        raise TrainingDiverged(
            f"the loss became non-finite{shown} at fold {self.data.fold}, epoch {epoch}, step {step}"
            f"{f' (parts: {parts})' if parts else ''}. Training stopped; {kept}. Lower optim.lr, set "
            "train.grad_clip, or check the data for NaN/inf values."
        )

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def predict(self, ds: MILDataset) -> dict[str, Any]:
        """Bag probabilities, labels and instance predictions of a whole split."""
        model = self.eval_model
        model.eval()
        bs = self.recipe.root.train.eval_batch_size or self.batch_size
        indices = list(range(len(ds)))
        if self.dist is not None:
            indices = self.dist.shard(indices, pad=False)
        probs, ys, ids = [], [], []
        inst_true, inst_probs = [], []
        for batch in self._iter_batches(ds, _batches(indices, bs)):
            with self._autocast():
                out = model(batch)
            probs.append(at_least_float32(out.bag_probs).cpu())
            ys.append(batch.y.cpu())
            ids.extend(batch.bag_ids)
            if batch.inst_y is not None and out.inst_probs is not None:
                inst_true.append(batch.inst_y[batch.mask].cpu())
                inst_probs.append(at_least_float32(out.inst_probs)[batch.mask].cpu())
        res = {
            "probs": torch.cat(probs).numpy() if probs else np.zeros((0, ds.num_classes)),
            "y": torch.cat(ys).numpy() if ys else np.zeros(0, dtype=int),
            "bag_ids": ids,
            "inst_true": torch.cat(inst_true).numpy() if inst_true else None,
            "inst_probs": torch.cat(inst_probs).numpy() if inst_probs else None,
        }
        if self.dist is not None:
            res = self.dist.gather_predictions(res)
        return res

    def evaluate(self, preds: dict[str, Any], threshold: float | None) -> dict[str, float]:
        probs, y = preds["probs"], preds["y"]
        m = bag_metrics(y, probs, threshold)
        eps = 1e-7
        m["loss"] = float(-np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)).mean()) if len(y) else math.nan
        if preds["inst_true"] is not None:
            m["inst_acc"] = instance_accuracy(preds["inst_true"], preds["inst_probs"])
        return m

    def eval_epoch(self, epoch: int) -> dict[str, dict[str, Any]]:
        # on a fork of torch's random streams: a DataLoader's iterator (and so each evaluated split) draws from
        # the global RNG, which would make the training that follows depend on which splits are evaluated
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            preds = {name: self.predict(ds) for name, ds in self.data.evals.items()}
        proto = self.recipe.root.protocol
        if proto.threshold == "youden" and "val" in preds and preds["val"]["probs"].shape[1] == 2:
            self.threshold = youden_threshold(preds["val"]["y"], preds["val"]["probs"][:, 1])
        return {name: {"metrics": self.evaluate(p, self.threshold), "preds": p} for name, p in preds.items()}

    # ------------------------------------------------------------------ fit
    def _improved(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best["value"]):
            return not math.isnan(value)
        if math.isnan(value):
            return False
        return value > self.best["value"] if higher_is_better(self.monitor) else value < self.best["value"]

    def fit(self, progress: bool = True) -> dict[str, Any]:
        tc = self.recipe.root.train
        st = ckpt.load_training_state(self.out_dir / ckpt.STATE)
        if st is not None:
            self.load_state(st)
            log.info("fold %d: resumed after epoch %d", self.data.fold, self.start_epoch - 1)
        bar = None
        if progress and self.is_main:  # a bar on a terminal, one line per epoch in a log file
            from milzoo.train.progress import EpochProgress

            bar = EpochProgress(self.epochs, self.start_epoch, f"fold {self.data.fold}")
        stopped_early = False
        last_eval: dict[str, Any] = {}
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, self.epochs):
            t0 = time.perf_counter()
            train_stats = self.train_epoch(epoch)
            t_train = time.perf_counter() - t0
            results = self.eval_epoch(epoch)
            last_eval = results
            record_train = {"fold": self.data.fold, "epoch": epoch, "split": "train",
                            "lr": self.optimizer.param_groups[0]["lr"], "time_s": round(t_train, 4), **train_stats}
            self.emit(record_train)
            epoch_rec = {"epoch": epoch, "train": train_stats, "splits": {}}
            for name, r in results.items():
                rec = {"fold": self.data.fold, "epoch": epoch, "split": name, **r["metrics"]}
                if self.threshold is not None:
                    rec["threshold"] = self.threshold
                self.emit(rec)
                epoch_rec["splits"][name] = r["metrics"]
            self.history.append(epoch_rec)
            if "val" in results:
                value = results["val"]["metrics"].get(self.monitor, math.nan)
                if self._improved(value):
                    self.best = {"epoch": epoch, "value": value, "threshold": self.threshold}
                    self.bad_epochs = 0
                    if self.is_main:
                        ckpt.save_model(self.eval_model, self.out_dir / "best", {"epoch": epoch, "threshold": self.threshold})
                        self._write_predictions("best", results)
                else:
                    self.bad_epochs += 1
            self._checkpoint(epoch)
            if bar is not None:
                shown = {k: f"{v:.3f}" for k, v in (results.get("test") or results.get("val") or {"metrics": {}})["metrics"].items()
                         if k in ("acc", "auc", "inst_acc")}
                bar.update({"loss": f"{train_stats.get('loss', float('nan')):.3f}", **shown})
            es = tc.early_stopping
            if es is not None and "val" in results and epoch + 1 >= es.min_epochs and self.bad_epochs >= es.patience:
                stopped_early = True
                log.info("fold %d: early stop at epoch %d (no val %s improvement for %d epochs)",
                         self.data.fold, epoch, self.monitor, es.patience)
                break
        if bar is not None:
            bar.close()
        if not last_eval:  # resumed a finished fold: re-evaluate for predictions (collective when distributed)
            last_eval = self.eval_epoch(epoch)
        if self.is_main:
            self._write_predictions("last", last_eval)
        return self.result(stopped_early)

    def _write_predictions(self, which: str, results: dict[str, Any]) -> None:
        for name, r in results.items():
            write_predictions(self.out_dir / which, name, r["preds"], self.data.train.class_names)

    def result(self, stopped_early: bool) -> dict[str, Any]:
        """The fold's summary: last epoch, validation-selected epoch, and (labelled) best epoch on test."""
        if not self.history:
            return {}
        last = self.history[-1]
        res: dict[str, Any] = {
            "fold": self.data.fold,
            "epochs_run": len(self.history),
            "stopped_early": stopped_early,
            "last": {"epoch": last["epoch"], **last["splits"]},
        }
        if self.best is not None:
            sel = next(h for h in self.history if h["epoch"] == self.best["epoch"])
            res["selected"] = {"epoch": sel["epoch"], "monitor": f"val/{self.monitor}",
                               "threshold": self.best.get("threshold"), **sel["splits"]}
        test_names = [n for n in self.data.evals if n != "val"]
        if test_names:
            primary = test_names[0]
            key = "acc"
            best_h = max(self.history, key=lambda h: h["splits"][primary].get(key, -1))
            res["best_epoch_on_test"] = {
                "note": "OPTIMISTIC: epoch chosen on the test split itself (as some papers report); not a fair estimate",
                "split": primary, "epoch": best_h["epoch"], **best_h["splits"][primary],
            }
        return res
