"""The MIL image pipeline's training step as a GPU runs it (images resident on the device, batches built
there, ``mil_views``, cnn2, pooling and losses, clipping, SGD) reads nothing back to the host: no host
synchronisation per step (benchmarks/step_ops.py counts them and the operators; docs/performance.md)."""

from __future__ import annotations

import numpy as np
import pytest

from milzoo.datasets import FoldData
from milzoo.recipe import load_recipe
from milzoo.testing.capture import cpu_compiler
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


def recipe(model: str, encoder: dict | None = None, augment: dict | None = None, **train):
    """The image step's recipe for one of ``MODELS`` (the data are given to the trainer directly)."""
    pooling, losses, views = MODELS[model]
    return load_recipe({
        "name": "syncs", "data": {"name": "fmnist_bags", "root": "/nonexistent"},  # validated only
        "encoder": {"name": "cnn2", "dim": 8, "normalize": "half", **(encoder or {})},
        "augment": {"name": "mil_views", "num_views": views, "pad": 1, "cutout_size": 3, **(augment or {})},
        "pooling": pooling, "loss": losses, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"batch_size": 2, "device": "cpu", "progress": False, "grad_clip": 5.0, **train},
    })


@pytest.mark.parametrize("model", list(MODELS))
def test_an_image_step_reads_nothing_back(tmp_path, model):
    channels = 3 if model.endswith("_rgb") else 1
    data = {2: bags(6, 0, channels), 3: bags(9, 1, channels)}
    data = {n: ds.subset(range(2 * n)) for n, ds in data.items()}
    tr = Trainer(recipe(model), FoldData(0, data[3], None, {}), tmp_path, emit=lambda r: None)
    tr.step_reads = False  # the step a GPU runs
    assert tr._resident_split(data[3]) is not None  # batches are gathered on the device

    def run(n):
        tr.data = FoldData(0, data[n], None, {})
        tr.train_epoch(1)

    count = count_per_step(run)
    assert count.syncs == 0, count.sync_sites
    assert count.ops > 50


@pytest.mark.skipif(cpu_compiler() is None, reason="inductor builds C++ kernels on a CPU: no compiler found")
@pytest.mark.parametrize("model", ["abmil", "psmil"])
def test_the_image_step_compiles_with_inductor(tmp_path, model):
    """``train.compile = "step"`` with inductor, the backend a GPU's ``"reduce-overhead"`` compiles with (less
    the CUDA graphs): the image step, batch views included, is lowered and run as one graph with no fallback.
    ABMIL's step (one view without draws, no dropout, float64) gives the eager step's numbers; PSMIL's views
    draw their flips, crops and holes inside the compiled region, which draws other numbers than the eager
    step, so only its losses' finiteness is compared.  About 20 s of compilation each on a 2-core CPU (cold
    cache); the other tests of the captured step use the lighter aot_eager backend."""
    import math

    import torch
    from milzoo.train._compiled import CompiledStep

    augment = {"flip": False, "pad": 0} if MODELS[model][2] == 1 else {}  # one view: no draws
    runs = {}
    for mode in (False, "step"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        tr = Trainer(recipe(model, {"dropout": 0.0}, augment, precision="fp64", compile=mode),
                     FoldData(0, bags(6, 0).subset(range(6)), None, {}), tmp_path / str(mode), emit=lambda r: None)
        if mode:
            compiled_fn = tr.compiled_step.compiled

            def counted(*args, _fn=compiled_fn):
                calls.append(1)
                return _fn(*args)

            calls, tr.compiled_step.compiled = [], counted
        runs[mode] = (tr, [tr.train_epoch(e) for e in range(2)])
    (eager, a), (compiled, b) = runs[False], runs["step"]
    step = compiled.compiled_step
    assert isinstance(step, CompiledStep) and step.disabled is None
    assert step.calls == 6 and len(calls) == 5  # the fold's first step eager, then every step compiled
    for ea, eb in zip(a, b):
        for key in ea:
            if model == "psmil":
                assert math.isfinite(eb[key]), (key, eb[key])
            else:
                assert eb[key] == pytest.approx(ea[key], rel=1e-9, abs=1e-12), key
    if model == "abmil":
        for (name, x), y in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
            torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-12, msg=name)
