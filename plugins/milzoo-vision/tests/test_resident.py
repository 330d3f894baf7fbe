"""Device-resident image bags (milzoo.resident): same batches and same training as the DataLoader path.

Run on ``device = "cpu"``, which is how CI exercises the code that a GPU runs with the images on the GPU.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from milzoo.datasets import resident
from milzoo.recipe import load_recipe
from milzoo.datasets import FoldData
from milzoo.train import Trainer
from milzoo_vision.datasets import ImageBagDataset, build_bags

from .test_training import toy_images


def toy_dataset(seed=0) -> ImageBagDataset:
    images, labels = toy_images(n_per_class=20, size=12, seed=seed)
    idx, inst, y = build_bags(labels, np.arange(len(labels)), 3, bag_size=6, num_key=2, background_class=0,
                              rng=np.random.default_rng(seed))
    return ImageBagDataset(images, idx, inst, y, ["bg", "a", "b"], "toy-")


def recipe(data_on_device, batch_size=3, **train):
    return load_recipe({
        "name": "resident",
        "seed": 3,
        "data": {"name": "fmnist_bags", "root": "/nonexistent"},  # validated only; the bags are the toy ones
        "encoder": {"name": "cnn2", "dim": 16, "normalize": "half"},
        "augment": {"name": "mil_views", "num_views": 3, "pad": 1, "cutout_size": 3},
        "pooling": {"name": "psatt"},
        "loss": [{"name": "bag_ce"}, {"name": "psali", "freeze_encoder_epochs": 0}],
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "batch_size": batch_size, "device": "cpu", "progress": False,
                  "data_on_device": data_on_device, "grad_clip": 5.0, **train},
    })


def fields(batch) -> dict:
    return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        fx, fy = fields(x), fields(y)
        assert fx.keys() == fy.keys()
        for k in fx:
            u, v = fx[k], fy[k]
            if isinstance(u, torch.Tensor):
                assert isinstance(v, torch.Tensor) and u.dtype == v.dtype and u.shape == v.shape, k
                assert torch.equal(u, v), k
            else:
                assert u == v, k


@pytest.mark.parametrize("subset", [False, True])
def test_resident_batches_equal_dataloader_batches(subset):
    ds = toy_dataset()
    if subset:  # a fold: nested subsets keep the root's Bag.index and bag ids
        ds = ds.subset(np.arange(len(ds))[::-1][:25]).subset([3, 0, 7, 1, 20, 11, 9, 5])
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [order[i : i + 3] for i in range(0, len(order), 3)]  # a short last batch too
    assert resident.supports(ds)
    with tempfile.TemporaryDirectory() as tmp:
        on = Trainer(recipe(True), FoldData(0, ds, None, {}), Path(tmp), emit=lambda r: None)
        off = Trainer(recipe(False), FoldData(0, ds, None, {}), Path(tmp), emit=lambda r: None)
        assert on._resident_split(ds) is not None and off._resident_split(ds) is None
        rng = torch.get_rng_state()
        got = list(on._iter_batches(ds, batches))
        rng_on = torch.get_rng_state()
        torch.set_rng_state(rng)
        want = list(off._iter_batches(ds, batches))
        # the resident path draws what a DataLoader iterator draws from the global RNG
        assert torch.equal(rng_on, torch.get_rng_state())
    assert_same_batches(got, want)
    assert got[0].unpadded is True and got[-1].size == len(batches[-1])


def test_images_shared_by_splits_move_once():
    ds = toy_dataset()
    other = ImageBagDataset(ds.images, ds.index[:4], ds.inst_labels[:4], ds.labels[:4], ds.class_names, "o-")
    moved = resident.Moved(torch.device("cpu"))
    first = resident.nbytes(ds, moved.host_ids())
    resident.make_resident(ds, moved)
    assert first >= ds.images.numel()
    assert resident.nbytes(other, moved.host_ids()) < ds.images.numel()  # only its index arrays
    assert resident.make_resident(other, moved).images is resident.make_resident(ds, moved).images


def _train(data_on_device, evals=True):
    ds = toy_dataset()
    test = toy_dataset(seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        records = []
        tr = Trainer(recipe(data_on_device), FoldData(0, ds, None, {"test": test} if evals else {}), Path(tmp),
                     emit=records.append)
        tr.fit(progress=False)
        return {k: v.clone() for k, v in tr.model.state_dict().items()}, records


def test_training_is_identical_on_both_paths():
    """A fixed seed gives bit-identical weights and metrics with the images resident or through a DataLoader
    (mil_views and dropout draw from the global RNG, so a missed or extra draw would show)."""
    w_on, rec_on = _train(True)
    w_off, rec_off = _train(False)
    assert w_on.keys() == w_off.keys()
    for k in w_on:
        assert torch.equal(w_on[k], w_off[k]), k
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in rec_on]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in rec_off]
    assert [r["split"] for r in rec_on] == ["train", "test", "train", "test"]


def test_auto_is_resident_on_cpu():
    ds = toy_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(recipe("auto"), FoldData(0, ds, None, {}), Path(tmp), emit=lambda r: None)
        assert tr._resident_split(ds) is not None
