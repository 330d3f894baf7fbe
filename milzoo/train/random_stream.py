"""The random stream of a run, described once: every draw a run makes from torch's random generators, in order.

A run is repeatable because everything random follows from its ``seed``.  The trainer, the fold builder and
the replays that check milzoo's models against other implementations through whole trainings
(``milzoo.testing.replay``, ``benchmarks/vs_torchmil.py``) all draw through this module and nothing else, so
a change to the stream is made here and moves all of them together.  What it holds, in the order a run uses it:

1. :func:`seed_folds`: torch is seeded with ``seed`` before the dataset is loaded and split into folds (a source
   may draw from torch).
2. :meth:`FoldStream.seed_model`: each fold seeds torch with ``seed * 1000 + fold`` and then builds its model, so
   its initial weights do not depend on the folds before it.
3. :meth:`FoldStream.epoch_order`: each epoch's bag order comes from its own generator, seeded by (seed, fold,
   epoch); it draws nothing from the global stream.
4. :func:`draw_loader_seed`: each pass over a split's batches draws one 64-bit number from the global stream
   first, the base seed a DataLoader iterator draws; the paths that feed batches without a DataLoader draw it
   too, so which path a run takes changes no number.
5. Then the training steps draw what the model draws (dropout, augmentations, losses), in step order.
6. :func:`evaluation`: evaluating the splits runs on a fork of the random state, so it draws nothing from the
   training's stream (adding or removing an evaluated split changes no training step).

Under torchrun each rank re-seeds at every epoch (:meth:`FoldStream.seed_rank_epoch`), so ranks draw different
numbers and a resumed run continues exactly.  A fold resumed from its state file restores the global state
saved after its last finished epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["FoldStream", "draw_loader_seed", "evaluation", "seed_folds"]


def seed_folds(seed: int) -> None:
    """Step 1: seed torch before the dataset is loaded and split into folds."""
    torch.manual_seed(seed)


def draw_loader_seed() -> None:
    """Step 4: the draw that starts every pass over a split's batches (a DataLoader iterator's base seed)."""
    torch.empty((), dtype=torch.int64).random_()


@contextlib.contextmanager
def evaluation(device: torch.device | str = "cpu") -> Iterator[None]:
    """Step 6: evaluation on a fork of torch's random state (and of ``device``'s, on a GPU)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


@dataclass(frozen=True)
class FoldStream:
    """The random stream of training fold ``fold`` of a run seeded ``seed``."""

    seed: int
    fold: int

    def seed_model(self) -> None:
        """Step 2: seed torch for this fold; its model is built right after."""
        torch.manual_seed(self.seed * 1000 + self.fold)

    def epoch_order(self, epoch: int, n: int) -> list[int]:
        """Step 3: the order of the fold's ``n`` training bags in ``epoch``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.fold * 1009 + epoch)
        return torch.randperm(n, generator=g).tolist()

    def seed_rank_epoch(self, epoch: int, rank: int) -> None:
        """Under torchrun, before each training epoch: this rank's own stream.  Ranks draw different numbers
        (dropout, augmentations), and the stream depends only on (seed, fold, epoch, rank), so a resumed run
        continues exactly as an uninterrupted one without saving every rank's random state."""
        torch.manual_seed(((self.seed * 1_000_003 + self.fold) * 10_007 + epoch) * 65_537 + rank)
