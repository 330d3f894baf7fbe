"""Weight averaging (``train.average``): SWA and EMA maths, evaluation, checkpoints, resume, recipe errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from milzoo import checkpoint as ckpt
from milzoo.train.averaging import WeightAverager
from milzoo.errors import RecipeError
from milzoo.recipe import AverageConfig, load_recipe
from milzoo.runs.runner import run
from milzoo.train.trainer import Trainer


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_swa_is_the_equal_mean_of_the_epochs_from_start_on():
    model = nn.Linear(2, 1)
    avg = WeightAverager(AverageConfig(kind="swa", start=0.5), model, epochs=4)
    assert avg.start_epoch == 2
    for epoch, value in enumerate([10.0, 20.0, 1.0, 3.0]):
        _set(model, value)
        avg.after_step(model, epoch)  # no effect for swa
        avg.after_epoch(model, epoch)
    assert avg.n_averaged == 2
    assert torch.allclose(avg.module.weight, torch.full((1, 2), 2.0))  # (1 + 3) / 2; epochs 0-1 left out


def test_ema_follows_every_step_with_its_decay():
    model = nn.Linear(1, 1, bias=False)
    cfg = AverageConfig(kind="ema", decay=0.5)
    assert cfg.start == 0.0  # ema starts at once unless told otherwise
    avg = WeightAverager(cfg, model, epochs=3)
    assert not avg.active
    for value in (4.0, 0.0, 2.0):
        _set(model, value)
        avg.after_step(model, 0)
        avg.after_epoch(model, 0)  # no effect for ema
    # first update copies (4), then 0.5 * old + 0.5 * new: 2, then 2
    assert avg.n_averaged == 3 and avg.module.weight.item() == pytest.approx(2.0)


def test_buffers_follow_the_live_model():
    model = nn.BatchNorm1d(2)
    avg = WeightAverager(AverageConfig(kind="swa", start=0.0), model, epochs=2)
    model.running_mean.fill_(7.0)
    avg.after_epoch(model, 0)
    assert torch.equal(avg.module.running_mean, torch.full((2,), 7.0))


def test_averaged_weights_are_evaluated_and_saved(tmp_path, recipe_factory, monkeypatch):
    seen = []
    original = Trainer.predict

    def spy(self, ds):
        seen.append((self.data.fold, self.eval_model is self.averager.module))
        return original(self, ds)

    monkeypatch.setattr(Trainer, "predict", spy)
    recipe = recipe_factory(train={"epochs": 4, "average": {"kind": "swa", "start": 0.5}})
    out = tmp_path / "swa"
    swa = run(recipe, out=out)
    # the live model until the average exists (epochs 0-1 of 4 with start 0.5), the average after
    assert seen == [(f, e >= 2) for f in (0, 1) for e in range(4)]
    monkeypatch.setattr(Trainer, "predict", original)
    plain = run(recipe_factory(train={"epochs": 4}), out=tmp_path / "plain")
    saved = ckpt.load_model(out / "fold-00" / "last").state_dict()
    live = ckpt.load_training_state(out / "fold-00" / ckpt.STATE)
    assert live["averaged"]["n_averaged"].item() == 2
    # the saved model is the average, not the live weights of the last epoch
    assert any(not torch.equal(saved[k], live["model"][k]) for k in saved if saved[k].is_floating_point())
    for k in saved:
        assert torch.equal(saved[k], live["averaged"][f"module.{k}"])
    # the averaging is recorded in the resolved recipe, and changes what is evaluated
    assert load_recipe(out / "recipe.toml").train.average.kind == "swa"
    assert swa["last"] != plain["last"]


def test_averaged_run_resumes_exactly(tmp_path, recipe_factory, monkeypatch):
    recipe = recipe_factory(train={"epochs": 4, "average": {"kind": "ema", "decay": 0.9}})
    full = run(recipe, out=tmp_path / "full")
    original = Trainer.train_epoch

    def flaky(self, epoch):
        if self.data.fold == 1 and epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "part")
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = run(recipe, out=tmp_path / "part", resume=True)
    assert resumed["last"] == full["last"]
    a = ckpt.load_model(tmp_path / "full" / "fold-01" / "last").state_dict()
    b = ckpt.load_model(tmp_path / "part" / "fold-01" / "last").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_average_settings_are_recipe_errors(recipe_factory):
    with pytest.raises(RecipeError, match=r"train\.average\.kind"):
        load_recipe(recipe_factory(train={"average": {"kind": "polyak"}}))
    with pytest.raises(RecipeError, match=r"train\.average\.start"):
        load_recipe(recipe_factory(train={"average": {"kind": "swa", "start": 1.0}}))
    with pytest.raises(RecipeError, match=r"train\.average\.deacy.*did you mean 'decay'"):
        load_recipe(recipe_factory(train={"average": {"kind": "ema", "deacy": 0.9}}))
