"""Feeding bags to the training device: an epoch's batches, and each split either resident on the device (:mod:`milzoo.datasets.resident`, batches built there) or read through a DataLoader.

Both paths give the same batches and the same draws from torch's global RNG, so which one a run takes never
changes its numbers (tests/test_trainer_steps.py, plugins/milzoo-vision/tests/test_resident.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from milzoo.datasets import resident
from milzoo.datasets.base import MILDataset
from milzoo.datasets.batch import MILBatch, collate_bags
from milzoo.train.random_stream import draw_loader_seed

log = logging.getLogger(__name__)


def batches(indices: list[int], size: int) -> list[list[int]]:
    """``indices`` cut into batches of ``size`` (the last one may be shorter)."""
    return [indices[i : i + size] for i in range(0, len(indices), size)]


class Feed:
    """The batches of any split on ``device``; remembers which splits are resident (one copy per dataset)."""

    def __init__(self, train_config, device: torch.device):
        self.train_config = train_config  # the recipe's ``train`` section
        self.device = device
        self._moved = resident.Moved(device)
        self._resident: dict[int, resident.ResidentSplit | None] = {}

    def loader(self, ds: MILDataset, batches: list[list[int]]) -> DataLoader:
        return DataLoader(ds, batch_sampler=batches, collate_fn=collate_bags, num_workers=self.train_config.num_workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def resident_split(self, ds: MILDataset) -> resident.ResidentSplit | None:
        """``ds`` on the training device when ``train.data_on_device`` allows it, else None."""
        key = id(ds)
        if key in self._resident:
            return self._resident[key]
        tc = self.train_config
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

    def iter_batches(self, ds: MILDataset, batches: list[list[int]]) -> Iterator[MILBatch]:
        """The batches of ``ds`` on the training device, from its resident copy or a DataLoader."""
        split = self.resident_split(ds)
        if split is None and self.device.type == "cpu" and self.train_config.num_workers == 0 \
                and not hasattr(ds, "__getitems__"):
            # what a DataLoader without workers does (dataset[i] for each bag, collate_bags), without its
            # iterator machinery per step; the same batches and random draws (tests/test_trainer_steps.py)
            draw_loader_seed()
            for rows in batches:
                yield collate_bags([ds[i] for i in rows])
            return
        if split is None:
            for batch in self.loader(ds, batches):
                yield batch.to(self.device, non_blocking=True)
            return
        # a DataLoader iterator draws its base seed from torch's global RNG; draw it too, so that the
        # augmentations and dropout that follow see the same random stream on both paths
        draw_loader_seed()
        yield from resident.iterate(split, batches, self.device)
