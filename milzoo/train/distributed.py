"""torch.distributed support for ``torchrun ... -m milzoo run``.

Single-process runs never touch this module's process group.  Under torchrun
(``WORLD_SIZE > 1``) :func:`maybe_distributed` initialises the default process
group from torchrun's environment (NCCL when CUDA is visible, each rank on
``cuda:LOCAL_RANK``; gloo on CPU otherwise) and yields a :class:`Distributed`
that the runner and trainer use for:

- **data**: ``train.batch_size`` is the *global* number of bags per optimiser
  step.  Every rank builds the same seeded epoch order and takes its contiguous
  slice of each global batch (:meth:`Distributed.shard_batches`), so every bag is
  seen once per epoch and every rank runs the same number of steps;
- **gradients**: DistributedDataParallel averages them over ranks; each rank's
  loss is weighted by its share of the global batch so that the result is the
  gradient of the mean over the whole global batch (exactly what one process
  computes), also for a last, uneven batch;
- **evaluation**: each rank predicts an exact contiguous part of a split and
  :meth:`Distributed.gather_predictions` reassembles it in order on every rank;
- **files**: only rank 0 writes (the runner and trainer check ``rank``).

See docs/distributed.md for what is exact and what is approximate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from milzoo.errors import UserError
from milzoo.components.output import MILOutput

#: "1" forces DistributedDataParallel even with a single process (for measuring its overhead)
ENV_FORCE = "MILZOO_DISTRIBUTED"
#: "1" makes DDP look for parameters a step did not use (any loss/pooling combination
#: that leaves a trainable parameter out of a training step needs it)
ENV_FIND_UNUSED = "MILZOO_DDP_FIND_UNUSED"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer; torchrun sets it for you.") from None


def requested() -> bool:
    """True when this process was launched for distributed training."""
    return _env_int("WORLD_SIZE", 1) > 1 or os.environ.get(ENV_FORCE, "") == "1"


def split_bounds(n: int, parts: int, part: int) -> tuple[int, int]:
    """``[lo, hi)`` of the ``part``-th of ``parts`` contiguous, near-equal pieces of ``range(n)``."""
    return n * part // parts, n * (part + 1) // parts


class _DictForward(nn.Module):
    """Returns the model's :class:`MILOutput` as a plain dict so DDP finds every output tensor
    (needed for ``find_unused_parameters``; a dataclass is opaque to DDP's output pass-through)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        out = self.model(batch)
        return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}


class TrainForward:
    """The callable the trainer uses for training forwards: DDP around the model, MILOutput out.

    The unwrapped model stays the trainer's ``self.model`` (checkpoints, evaluation,
    ``pooling.after_forward``); its parameters are the ones DDP synchronises.  DDP
    covers the parameters that require gradients when it is built, so when that set
    changes (an encoder frozen for the first epochs, then released) the DDP wrapper
    is rebuilt at the next forward -- on every rank at the same step, since all ranks
    freeze and release together -- instead of searching for unused parameters at
    every step.
    """

    def __init__(self, model: nn.Module, device: torch.device, find_unused: bool = False):
        self.model = model
        self.device = device
        self.find_unused = find_unused
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self._trainable: tuple[bool, ...] | None = None
        self.builds = 0

    def _build(self) -> None:
        if self.ddp is not None:  # drop the old reducer and its gradient hooks first
            self.ddp = None
            gc.collect()
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(
            _DictForward(self.model), device_ids=ids, output_device=ids[0] if ids else None,
            find_unused_parameters=self.find_unused,
        )
        self.builds += 1

    def __call__(self, batch) -> MILOutput:
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if self.ddp is None or trainable != self._trainable:
            self._trainable = trainable
            self._build()
        return MILOutput(**self.ddp(batch))


class Distributed:
    """This process's place in the process group, and the collectives milzoo needs."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device, backend: str):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device
        self.backend = backend

    # ------------------------------------------------------------------ setup
    @classmethod
    def from_env(cls) -> "Distributed":
        """Initialise the default process group from torchrun's environment variables."""
        import torch.distributed as dist

        if not dist.is_available():
            raise UserError("this PyTorch build has no torch.distributed; run without torchrun.")
        world = _env_int("WORLD_SIZE", 1)
        local_rank = _env_int("LOCAL_RANK", 0)
        if torch.cuda.is_available():
            n_gpu = torch.cuda.device_count()
            if local_rank >= n_gpu:
                raise UserError(
                    f"this rank has LOCAL_RANK={local_rank} but only {n_gpu} GPU(s) are visible on its machine; "
                    f"launch at most {n_gpu} processes per node (torchrun --nproc_per_node={n_gpu})."
                )
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            backend = "nccl"
        else:
            device = torch.device("cpu")
            backend = "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if "MASTER_ADDR" not in os.environ:  # forced single process without torchrun
            if world != 1:
                raise UserError("WORLD_SIZE > 1 but MASTER_ADDR is not set; launch with torchrun.")
            kwargs.update(init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        if backend == "nccl" and "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = device  # binds the NCCL communicator to this rank's GPU (torch >= 2.3)
        if not dist.is_initialized():
            dist.init_process_group(**kwargs)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ model
    def wrap(self, model: nn.Module) -> TrainForward:
        """DistributedDataParallel around ``model`` for the training forward (see :class:`TrainForward`).

        ``MILZOO_DDP_FIND_UNUSED=1`` turns on DDP's search for parameters a step left
        unused, for component combinations that leave a trainable parameter out of
        the loss.  Frozen parameters need no search (the wrapper follows
        ``requires_grad``).
        Buffers (PSAtt prototypes, BatchNorm statistics) are broadcast from rank 0 at
        each forward, DDP's default; components still keep their own updates in step
        (PSAtt gathers its statistics) so every rank holds the same values.
        """
        return TrainForward(model, self.device, os.environ.get(ENV_FIND_UNUSED, "") == "1")

    # ------------------------------------------------------------------ data
    def shard(self, indices: list[int], pad: bool = False) -> list[int]:
        """This rank's contiguous part of ``indices`` (an exact partition in rank order).

        With ``pad`` every part has the same length (the shorter ones repeat their
        first items); evaluation uses ``pad=False``.
        """
        lo, hi = split_bounds(len(indices), self.world_size, self.rank)
        part = list(indices[lo:hi])
        if pad:
            size = -(-len(indices) // self.world_size)
            while part and len(part) < size:
                part.append(part[len(part) % max(1, hi - lo)])
        return part

    def shard_batches(self, batches: list[list[int]], batch_size: int) -> tuple[list[list[int]], list[float]]:
        """This rank's part of every *global* batch, and the weight of its loss at each step.

        Each global batch of ``B`` bags is cut into ``world_size`` contiguous slices in
        rank order.  DDP averages gradients over ranks, so a rank holding ``n_r`` of
        ``B`` bags scales its (mean-over-bags) loss by ``n_r * world_size / B``: the
        average is then the gradient of the mean over all ``B`` bags.  A last global
        batch with fewer bags than ranks joins the batch before it, so no rank ever
        has an empty step (every rank must run forward and backward at every step).
        """
        n = self.world_size
        if batch_size % n:
            lo, hi = (batch_size // n) * n, (batch_size // n + 1) * n
            hint = f"{hi}" if lo == 0 else f"{lo} or {hi}"
            raise UserError(
                f"train.batch_size = {batch_size} is the global number of bags per step and must be a multiple "
                f"of the {n} ranks (each rank takes batch_size / {n} bags). Set --set train.batch_size={hint} "
                "(and scale optim.lr with it, see docs/distributed.md)."
            )
        batches = [list(b) for b in batches]
        total = sum(len(b) for b in batches)
        if total < n:
            raise UserError(
                f"the training split has {total} bag(s), fewer than the {n} ranks; run with fewer processes."
            )
        if len(batches) > 1 and len(batches[-1]) < n:
            last = batches.pop()
            batches[-1].extend(last)
        mine, weights = [], []
        for b in batches:
            lo, hi = split_bounds(len(b), n, self.rank)
            mine.append(b[lo:hi])
            weights.append((hi - lo) * n / len(b))
        return mine, weights

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def reduce_sums(self, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
        """Sum the per-rank training loss sums and bag counts (keys merged across ranks)."""
        merged: dict[str, float] = {}
        total = 0
        for s, c in self.all_gather_object((sums, count)):
            total += int(c)
            for k, v in s.items():
                merged[k] = merged.get(k, 0.0) + float(v)
        return merged, total

    def gather_predictions(self, res: dict[str, Any]) -> dict[str, Any]:
        """Concatenate every rank's predictions in rank order (= the split's order, see :meth:`shard`)."""
        parts = self.all_gather_object(res)

        def cat(key):
            arrays = [p[key] for p in parts if p[key] is not None and len(p[key])]
            if not arrays:
                present = [p[key] for p in parts if p[key] is not None]
                return present[0] if present else None
            return np.concatenate(arrays)

        return {
            "probs": cat("probs"),
            "y": cat("y"),
            "bag_ids": [i for p in parts for i in p["bag_ids"]],
            "inst_true": cat("inst_true"),
            "inst_probs": cat("inst_probs"),
        }

    def on_main(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on rank 0 only; the other ranks wait for it.

        When ``fn`` fails, rank 0 raises its error and the other ranks exit quietly
        with the same exit code, so the message is printed once and no rank is left
        waiting in a collective.
        """
        import torch.distributed as dist

        error: BaseException | None = None
        status: list[Any] = [None]
        if self.rank == 0:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the others
                error = exc
                status[0] = int(getattr(exc, "exit_code", 1))
        dist.broadcast_object_list(status, src=0)
        if error is not None:
            raise error
        if status[0] is not None:
            raise SystemExit(status[0])

    def require_shared(self, path: Path, seconds: float = 30.0) -> None:
        """Check that every rank sees ``path``, which rank 0 has just written.

        Ranks read the run directory (``--resume`` loads the checkpoint on every rank;
        the summary reads every fold's result), so on several machines it must be on a
        filesystem they share.  A network filesystem may show a new file late, hence
        the wait.
        """
        deadline = time.monotonic() + seconds
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        seen = self.all_gather_object((socket.gethostname(), path.exists()))
        blind = sorted({host for host, ok in seen if not ok})
        if not blind:
            return
        if self.rank != 0:
            raise SystemExit(UserError.exit_code)
        raise UserError(
            f"the ranks on {', '.join(blind)} cannot see {path}, which rank 0 wrote: the run directory must be on "
            "a filesystem shared by all machines of the job (every rank reads checkpoints and results). Put --out "
            "on the shared filesystem."
        )


def free_port() -> int:
    """A TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def maybe_distributed() -> Iterator[Distributed | None]:
    """Yield None for a plain run; a :class:`Distributed` when launched by torchrun.

    The process group is destroyed on exit, also when the run fails.
    """
    if not requested():
        yield None
        return
    d = Distributed.from_env()
    try:
        yield d
    finally:
        d.close()
