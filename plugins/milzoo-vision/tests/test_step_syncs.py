"""The MIL image pipeline's training step as a GPU runs it (images resident on the device, batches built
there, ``mil_views``, cnn2, pooling and losses, clipping, SGD) reads nothing back to the host: no host
synchronisation per step (benchmarks/step_ops.py counts them and the operators; docs/performance.md)."""

from __future__ import annotations

import numpy as np
import pytest

from milzoo.datasets import FoldData
from milzoo.recipe import load_recipe
from milzoo.testing.dispatch import count_per_step
from milzoo.train import Trainer
from milzoo_vision.datasets import ImageBagDataset, build_bags

from .test_training import toy_images

MODELS = {
    "psmil": ({"name": "psatt"}, [{"name": "bag_ce"}, {"name": "psali", "freeze_encoder_epochs": 0}], 3),
    "abmil": ({"name": "abmil", "attn_hidden": 8}, [{"name": "bag_ce"}], 1),
    "dsmil": ({"name": "dsmil", "query_dim": 8}, [{"name": "dsmil"}], 1),
    # 3-channel images: the rgb32 preset's strong views add RandAugment
    "psmil_rgb": ({"name": "psatt"}, [{"name": "bag_ce"}, {"name": "psali", "freeze_encoder_epochs": 0}], 3),
}


def bags(n_bags: int, seed: int, channels: int = 1) -> ImageBagDataset:
    images, labels = toy_images(n_per_class=12, size=10, seed=seed)
    images = images.repeat(1, channels, 1, 1)
    idx, inst, y = build_bags(labels, np.arange(len(labels)), n_bags // 3, bag_size=4, num_key=1,
                              background_class=0, rng=np.random.default_rng(seed))
    return ImageBagDataset(images, idx, inst, y, ["bg", "a", "b"], "toy-")


@pytest.mark.parametrize("model", list(MODELS))
def test_an_image_step_reads_nothing_back(tmp_path, model):
    pooling, losses, views = MODELS[model]
    recipe = load_recipe({
        "name": "syncs", "data": {"name": "fmnist_bags", "root": "/nonexistent"},  # validated only
        "encoder": {"name": "cnn2", "dim": 8, "normalize": "half"},
        "augment": {"name": "mil_views", "num_views": views, "pad": 1, "cutout_size": 3},
        "pooling": pooling, "loss": losses, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"batch_size": 2, "device": "cpu", "progress": False, "grad_clip": 5.0},
    })
    channels = 3 if model.endswith("_rgb") else 1
    data = {2: bags(6, 0, channels), 3: bags(9, 1, channels)}
    data = {n: ds.subset(range(2 * n)) for n, ds in data.items()}
    tr = Trainer(recipe, FoldData(0, data[3], None, {}), tmp_path, emit=lambda r: None)
    tr.step_reads = False  # the step a GPU runs
    assert tr._resident_split(data[3]) is not None  # batches are gathered on the device

    def run(n):
        tr.data = FoldData(0, data[n], None, {})
        tr.train_epoch(1)

    count = count_per_step(run)
    assert count.syncs == 0, count.sync_sites
    assert count.ops > 50
