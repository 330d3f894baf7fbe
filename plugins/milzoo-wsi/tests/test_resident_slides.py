"""Cached slides on the training device (train.data_on_device): the same batches as the DataLoader path.

Run with ``device = "cpu"`` in CI; the pinned-memory path for slides that stay on the host needs CUDA.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from milzoo import registry
from milzoo.datasets import resident
from milzoo.datasets.batch import collate_bags


def _slides(wr, root, n=6, d=5, **kw):
    rows = []
    for i in range(n):
        f, c = wr.feats(200 + i, 3 + 2 * i, d)  # bags of different lengths: padding
        wr.slide(f"{root}/feats/s{i}.h5", f, c)
        rows.append({"slide_id": f"s{i}", "label": ["normal", "tumor"][i % 2], "split": "train"})
    wr.table(f"{root}/slides.csv", rows)
    cls = registry.get_component("dataset", "slides")
    return cls(cls.Config(features=f"{root}/feats", table=f"{root}/slides.csv", **kw)).load()["train"]


def _same(a, b):
    for f in dataclasses.fields(a):
        u, v = getattr(a, f.name), getattr(b, f.name)
        if isinstance(u, torch.Tensor):
            assert u.dtype == v.dtype and u.device == v.device and torch.equal(u, v), f.name
        else:
            assert u == v, f.name


@pytest.mark.parametrize("bag_dtype", ["float32", "float16"])
def test_resident_slides_give_the_dataloader_batches(wr, tmp_path, bag_dtype):
    ds = _slides(wr, tmp_path, dtype="float16" if bag_dtype == "float16" else "float32", bag_dtype=bag_dtype)
    fold = ds.subset([5, 1, 2, 0, 4])
    assert resident.nbytes(fold, set()) > 0
    moved = resident.Moved(torch.device("cpu"))
    split = resident.make_resident(fold, moved)
    batches = [[0, 3], [4], [2, 1]]
    got = list(resident.iterate(split, batches, torch.device("cpu")))
    want = [collate_bags([fold[i] for i in b]) for b in batches]
    for a, b in zip(got, want):
        _same(a, b)
    assert got[0].unpadded is False and got[1].unpadded is True


def test_slides_read_on_access_stay_on_the_host(wr, tmp_path):
    ds = _slides(wr, tmp_path, cache="none")
    assert resident.supports(ds) and resident.nbytes(ds, set()) is None


@pytest.mark.cuda
def test_slides_on_the_gpu_and_pinned(wr, tmp_path):
    ds = _slides(wr, tmp_path)
    split = resident.make_resident(ds, resident.Moved(torch.device("cuda")))
    b = next(resident.iterate(split, [[0, 1]], torch.device("cuda")))
    assert b.x.is_cuda and b.mask.is_cuda and b.y.is_cuda and b.coords.is_cuda
    _same(b.to("cpu"), collate_bags([ds[0], ds[1]]))
    resident.pin_host_memory(ds)
    assert ds.slide(0).features.is_pinned()
    assert ds[0].x.is_pinned()  # float32 bags of a float32 cache are views: the DMA copy needs no staging
