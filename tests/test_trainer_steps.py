"""The trainer's step machinery: loss sums kept on the device, kernel choice, bags per step, compile."""

from __future__ import annotations

import math

import pytest
import torch

from milzoo.recipe import load_recipe
from milzoo.train.settings import DEFAULT_BAGS_PER_STEP, make_optimizer, optimizer_kernels, resolve_batch_size
from milzoo.train import LossSums


def test_loss_sums_match_python_float_sums_exactly():
    g = torch.Generator().manual_seed(0)
    sums = LossSums(torch.device("cpu"))
    want: dict[str, float] = {}
    for step, n in enumerate([1, 3, 2, 3]):
        total = torch.rand((), generator=g) * 3
        parts = {"ce": torch.rand((), generator=g, dtype=torch.float32).to(torch.bfloat16), "lam": 0.25 * step}
        sums.add(total, parts, n, step)
        want["loss"] = want.get("loss", 0.0) + float(total) * n  # what the trainer summed before
        for k, v in parts.items():
            want[k] = want.get(k, 0.0) + float(v) * n
    got = sums.read()
    assert list(got) == ["loss", "ce", "lam"]
    assert got == want  # exact: float64 on the device is the same arithmetic as Python floats
    assert sums.diverged_at() is None


def test_loss_sums_remember_the_first_non_finite_step():
    sums = LossSums(torch.device("cpu"))
    sums.add(torch.tensor(1.0), {}, 1, 10)
    sums.add(torch.tensor(float("nan")), {}, 1, 11)
    sums.add(torch.tensor(float("inf")), {}, 1, 12)
    assert sums.diverged_at() == 11
    assert math.isnan(sums.read()["loss"])


def test_bags_per_step_auto_is_per_device():
    assert resolve_batch_size("auto", torch.device("cpu")) == DEFAULT_BAGS_PER_STEP["cpu"] == 1
    assert resolve_batch_size("auto", torch.device("cuda", 0)) == DEFAULT_BAGS_PER_STEP["cuda"] == 4
    assert resolve_batch_size(3, torch.device("cuda", 0)) == 3
    rec = load_recipe({"data": {"name": "classic", "dataset": "musk1"}, "pooling": {"name": "mean"},
                       "train": {"batch_size": "auto"}})
    assert rec.root.train.batch_size == "auto"


def test_optimizer_kernels_cpu_keeps_foreach_gpu_fuses_adam_only():
    from milzoo.train import optim

    for cls in (torch.optim.SGD, torch.optim.Adam, optim.SGD, optim.AdamW):
        assert optimizer_kernels(cls, torch.device("cpu")) == {"foreach": True}
    for cls in (torch.optim.Adam, torch.optim.AdamW, optim.Adam, optim.AdamW):
        assert optimizer_kernels(cls, torch.device("cuda")) == {"fused": True, "foreach": False}
    for cls in (torch.optim.SGD, optim.SGD):  # fused SGD breaks on late gradients (next test)
        assert optimizer_kernels(cls, torch.device("cuda")) == {"foreach": True}
    cfg = load_recipe({"data": {"name": "classic", "dataset": "musk1"}, "pooling": {"name": "mean"},
                       "optim": {"name": "sgd"}}).root.optim
    opt = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    assert opt.param_groups[0]["foreach"] is True and not opt.param_groups[0]["fused"]


def test_sgd_kernels_survive_a_parameter_that_gets_its_first_gradient_late():
    """PSAli freezes the encoder in epoch 0: its parameters get momentum buffers one epoch after the rest.
    torch's fused SGD (CPU kernel here; the same Python path broke the first GPU run) raises on that;
    the kernels milzoo picks for a GPU must not, and must give the for-loop reference's numbers."""
    from milzoo.train import optim

    def train(**kernels):
        torch.manual_seed(0)
        a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5))
        opt = optim.SGD([a, b], lr=0.1, momentum=0.9, weight_decay=1e-4, **kernels)
        for step in range(4):
            opt.zero_grad()
            loss = (a ** 2).sum() + ((b ** 3).sum() if step >= 2 else 0.0)  # b frozen for two steps
            loss.backward()
            opt.step()
        return torch.cat([a.detach(), b.detach()])

    reference = train(foreach=False)
    chosen = train(**optimizer_kernels(optim.SGD, torch.device("cuda")))
    torch.testing.assert_close(chosen, reference)
    try:
        fused = train(fused=True)
    except TypeError:
        pass  # the torch behaviour this choice avoids
    except RuntimeError:
        pytest.skip("this torch has no CPU fused SGD")
    else:  # a torch that handles it: then fused must at least agree
        torch.testing.assert_close(fused, reference)


def test_evaluation_does_not_change_the_training(tmp_path):
    """Which splits are evaluated, and how many, must not move the training's random stream (dropout here,
    augmentations in the image recipes): a DataLoader's iterator draws its base seed from torch's global RNG,
    and so did every evaluated split before evaluation ran on a fork of the random streams."""
    from milzoo.datasets.batch import Bag
    from milzoo.datasets.base import BagListDataset
    from milzoo.datasets import FoldData
    from milzoo.train import Trainer

    g = torch.Generator().manual_seed(1)
    ds = BagListDataset([Bag(torch.randn(5, 3, generator=g), i % 2) for i in range(8)], ["a", "b"])
    raw = {"data": {"name": "classic", "dataset": "musk1"}, "encoder": {"name": "mlp", "dims": [4]},
           "pooling": {"name": "abmil", "dropout": 0.5}, "loss": [{"name": "bag_ce"}],
           "train": {"device": "cpu", "progress": False, "epochs": 3, "batch_size": 2}}

    def train_losses(evals, out):
        records = []
        torch.manual_seed(0)
        tr = Trainer(load_recipe(raw), FoldData(0, ds, None, evals), tmp_path / out, emit=records.append)
        tr.fit(progress=False)
        return [r["loss"] for r in records if r["split"] == "train"]

    none = train_losses({}, "none")
    assert len(none) == 3 and len(set(none)) == 3
    assert train_losses({"test": ds}, "one") == none
    assert train_losses({"val": ds, "test": ds, "other": ds}, "three") == none


def test_compile_is_in_place(tmp_path):
    """train.compile wraps the encoder's call; parameter names (and so checkpoints) do not change."""
    from milzoo.datasets.batch import Bag
    from milzoo.datasets.base import BagListDataset
    from milzoo.datasets import FoldData
    from milzoo.train import Trainer

    ds = BagListDataset([Bag(torch.randn(4, 3), i % 2) for i in range(4)], ["a", "b"])
    raw = {"data": {"name": "classic", "dataset": "musk1"}, "encoder": {"name": "mlp", "dims": [4]},
           "pooling": {"name": "mean"}, "loss": [{"name": "bag_ce"}],
           "train": {"device": "cpu", "progress": False}}
    plain = Trainer(load_recipe(raw), FoldData(0, ds, None, {}), tmp_path, emit=lambda r: None)
    raw["train"]["compile"] = True
    compiled = Trainer(load_recipe(raw), FoldData(0, ds, None, {}), tmp_path, emit=lambda r: None)
    assert compiled.model.encoder._compiled_call_impl is not None
    assert plain.model.encoder._compiled_call_impl is None
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())


@pytest.mark.cuda
def test_gpu_trainer_uses_fused_optimizer_and_cudnn_benchmark(tmp_path):
    from milzoo.datasets.batch import Bag
    from milzoo.datasets.base import BagListDataset
    from milzoo.datasets import FoldData
    from milzoo.train import Trainer

    ds = BagListDataset([Bag(torch.randn(4, 3), i % 2) for i in range(4)], ["a", "b"])
    raw = {"data": {"name": "classic", "dataset": "musk1"}, "encoder": {"name": "mlp", "dims": [4]},
           "pooling": {"name": "mean"}, "loss": [{"name": "bag_ce"}],
           "train": {"device": "cuda", "progress": False, "batch_size": "auto", "epochs": 2}}
    tr = Trainer(load_recipe(raw), FoldData(0, ds, None, {"test": ds}), tmp_path, emit=lambda r: None)
    assert tr.optimizer.param_groups[0]["fused"] is True
    assert torch.backends.cudnn.benchmark is True
    assert tr.batch_size == 4
    res = tr.fit(progress=False)
    assert res["epochs_run"] == 2


@pytest.mark.cuda
def test_gpu_sgd_trains_an_encoder_frozen_in_epoch_0(tmp_path):
    """The first full-scale PSMIL run on a GPU failed here: fused SGD and an encoder that joins in epoch 1."""
    from milzoo.datasets.batch import Bag
    from milzoo.datasets.base import BagListDataset
    from milzoo.datasets import FoldData
    from milzoo.train import Trainer

    ds = BagListDataset([Bag(torch.randn(4, 3), i % 2) for i in range(8)], ["a", "b"])
    raw = {"data": {"name": "classic", "dataset": "musk1"}, "encoder": {"name": "mlp", "dims": [4]},
           "pooling": {"name": "mean"}, "loss": [{"name": "bag_ce"}],
           "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
           "train": {"device": "cuda", "progress": False, "batch_size": 4, "epochs": 2,
                     "freeze_encoder_epochs": 1}}
    tr = Trainer(load_recipe(raw), FoldData(0, ds, None, {"test": ds}), tmp_path, emit=lambda r: None)
    assert tr.optimizer.param_groups[0]["foreach"] is True and not tr.optimizer.param_groups[0]["fused"]
    assert tr.fit(progress=False)["epochs_run"] == 2


def test_cpu_batches_without_a_dataloader_equal_a_dataloaders(tmp_path):
    """On a CPU without workers the trainer collates bags itself: the same batches and the same draw from
    torch's global RNG as a DataLoader iterator (so dropout sees the same stream)."""
    from milzoo.model.build import build_dataset
    from milzoo.datasets.protocols import make_folds
    from milzoo.train.trainer import Trainer

    from pathlib import Path

    quickstart = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml"
    recipe = load_recipe(str(quickstart), ["protocol.folds=2", "train.batch_size=3"])
    fold = make_folds(recipe.root.protocol, build_dataset(recipe), 0)[0]
    trainer = Trainer(recipe, fold, tmp_path, emit=lambda r: None)
    ds = fold.train
    assert trainer._resident_split(ds) is None
    batches = [list(range(i, min(i + 3, len(ds)))) for i in range(0, len(ds), 3)][::-1]
    state = torch.get_rng_state()
    got = list(trainer._iter_batches(ds, batches))
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    want = list(trainer._loader(ds, batches))
    assert torch.equal(after, torch.get_rng_state())
    assert len(got) == len(want) == len(batches)
    for a, b in zip(got, want):
        for name in ("x", "mask", "y", "index"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert a.bag_ids == b.bag_ids and a.unpadded == b.unpadded and a.meta == b.meta
        assert (a.inst_y is None) == (b.inst_y is None)
        if a.inst_y is not None:
            assert torch.equal(a.inst_y, b.inst_y)
