"""Trainer and runner: determinism, resume, divergence, run directories, protocols."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from milzoo import checkpoint as ckpt
from milzoo.errors import RunDirError, TrainingDiverged
from milzoo.runs.runner import run, summarize
from milzoo.train.trainer import Trainer


def metrics_lines(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_layout_and_summary(tmp_path, recipe_factory):
    out = tmp_path / "run"
    s = run(recipe_factory(), out=out)
    for name in ("recipe.toml", "run.json", "metrics.jsonl", "summary.json", "log.txt"):
        assert (out / name).exists(), name
    for f in (0, 1):
        fd = out / f"fold-{f:02d}"
        assert (fd / "last" / "model.safetensors").exists() and (fd / "last" / "config.json").exists()
        assert (fd / ckpt.STATE).exists() and (fd / "result.json").exists()
        assert (fd / "last" / "predictions-test.csv").exists()
    lines = metrics_lines(out)
    # one train + one test record per epoch per fold
    assert len(lines) == 2 * 3 * 2
    assert {l["split"] for l in lines} == {"train", "test"}
    accs = [l["acc"] for l in lines if l["split"] == "test" and l["epoch"] == 2]
    assert s["last"]["test"]["acc"]["values"] == accs
    assert math.isclose(s["last"]["test"]["acc"]["mean"], float(np.mean(accs)))
    assert "OPTIMISTIC" in s["best_epoch_on_test"]["note"]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["libraries"]["torch"] and any(p["name"] == "abmil" for p in run_info["plugins"])
    # the hardware too (fp32 numbers differ between CPU types), for the run and for each start
    hw = run_info["machine"]
    assert hw["cpu"] and hw["cores"] >= 1 and hw["torch_threads"] >= 1 and isinstance(hw["gpus"], list)
    assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert run_info["history"][-1]["machine"] == hw


def test_run_json_names_the_cpu_features_and_gpus(monkeypatch, tmp_path):
    """From /proc/cpuinfo and the NVIDIA driver's files, without initialising CUDA."""
    from milzoo.runs import environment

    monkeypatch.setattr(environment, "_cpuinfo", lambda: "model name\t: Some CPU 9000\nflags\t\t: fpu avx2 avx512f "
                                                        "avx512_bf16 sse\n")
    gpus = tmp_path / "gpus"
    (gpus / "0000:01:00.0").mkdir(parents=True)
    (gpus / "0000:01:00.0" / "information").write_text("Model: \t\t NVIDIA H100 80GB HBM3\nIRQ: 1\n")
    real = environment.Path
    monkeypatch.setattr(environment, "Path", lambda p="": gpus if p == "/proc/driver/nvidia/gpus" else real(p))
    hw = environment.machine()
    assert hw["cpu"] == "Some CPU 9000" and hw["cpu_flags"] == ["avx2", "avx512f", "avx512_bf16"]
    assert hw["gpus"] == ["NVIDIA H100 80GB HBM3"]
    assert not torch.cuda.is_initialized()


def test_seeded_runs_repeat_exactly(tmp_path, recipe_factory):
    a = run(recipe_factory(), out=tmp_path / "a")
    b = run(recipe_factory(), out=tmp_path / "b")
    assert a["last"] == b["last"]
    wa = ckpt.load_model(tmp_path / "a" / "fold-01" / "last").state_dict()
    wb = ckpt.load_model(tmp_path / "b" / "fold-01" / "last").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    run(recipe_factory(seed=1), out=tmp_path / "c")
    wc = ckpt.load_model(tmp_path / "c" / "fold-01" / "last").state_dict()
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_refuses_to_overwrite(tmp_path, recipe_factory):
    out = tmp_path / "run"
    run(recipe_factory(), out=out)
    before = (out / "summary.json").read_text()
    with pytest.raises(RunDirError, match="exists already"):
        run(recipe_factory(), out=out)
    assert (out / "summary.json").read_text() == before  # nothing lost
    run(recipe_factory(), out=out, overwrite=True)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "precious.txt").write_text("x")
    with pytest.raises(RunDirError, match="not a milzoo run directory"):
        run(recipe_factory(), out=tmp_path / "foreign", overwrite=True)
    assert (tmp_path / "foreign" / "precious.txt").exists()


def test_resume_after_interruption_matches_uninterrupted(tmp_path, recipe_factory, monkeypatch):
    recipe = recipe_factory(train={"epochs": 4})
    full = run(recipe, out=tmp_path / "full")

    original = Trainer.train_epoch
    calls = {"n": 0}

    def flaky(self, epoch):
        if self.data.fold == 1 and epoch == 2:
            raise KeyboardInterrupt  # killed mid-fold
        calls["n"] += 1
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "part")
    assert not (tmp_path / "part" / "summary.json").exists()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    with pytest.raises(RunDirError, match="--resume"):
        run(recipe, out=tmp_path / "part")
    resumed = run(recipe, out=tmp_path / "part", resume=True)
    assert resumed["last"] == full["last"]
    assert metrics_lines(tmp_path / "part") == [
        {k: v for k, v in l.items() if k != "time_s"} | ({"time_s": l["time_s"]} if "time_s" in l else {})
        for l in metrics_lines(tmp_path / "part")
    ]
    strip = lambda ls: [{k: v for k, v in l.items() if k != "time_s"} for l in ls]  # noqa: E731
    assert strip(metrics_lines(tmp_path / "part")) == strip(metrics_lines(tmp_path / "full"))


def test_resume_refuses_a_changed_recipe(tmp_path, recipe_factory):
    run(recipe_factory(), out=tmp_path / "r")
    with pytest.raises(RunDirError, match="differs"):
        run(recipe_factory(optim={"lr": 0.5}), out=tmp_path / "r", resume=True)
    with pytest.raises(RunDirError, match="nothing to resume"):
        run(recipe_factory(), out=tmp_path / "nothing", resume=True)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, recipe_factory, monkeypatch):
    from milzoo.builtin.losses import BagCrossEntropy

    original = BagCrossEntropy.forward

    def poisoned(self, out, batch, state):
        res = original(self, out, batch, state)
        if state.epoch == 1:
            res.total = res.total * float("nan")
        return res

    monkeypatch.setattr(BagCrossEntropy, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite") as info:
        run(recipe_factory(), out=out)
    assert "epoch 0" in str(info.value)
    good = ckpt.load_training_state(out / "fold-00" / ckpt.STATE)
    assert good["epoch"] == 0
    model = ckpt.load_model(out / "fold-00" / "last")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    # the run directory says why it stopped, without its log
    info = json.loads((out / "run.json").read_text())
    assert info["outcome"] == "diverged" and "non-finite" in info["error"] and "epoch 1" in info["error"]
    assert info["history"][-1]["outcome"] == "diverged"
    # resumed with a healthy loss, the new start is recorded beside the old one
    monkeypatch.setattr(BagCrossEntropy, "forward", original)
    run(recipe_factory(), out=out, resume=True)
    info = json.loads((out / "run.json").read_text())
    assert info["outcome"] == "finished" and "error" not in info
    assert [h["outcome"] for h in info["history"]] == ["diverged", "finished"]


def test_run_json_records_how_a_start_ended(tmp_path, recipe_factory, monkeypatch):
    from milzoo.builtin.losses import BagCrossEntropy
    from milzoo.report.html import versions_table
    from milzoo.report.common import load_run

    out = tmp_path / "ok"
    run(recipe_factory(), out=out)
    info = json.loads((out / "run.json").read_text())
    assert info["outcome"] == "finished" and info["ended"] >= info["started"]

    def interrupted(self, out, batch, state):
        raise KeyboardInterrupt

    monkeypatch.setattr(BagCrossEntropy, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(recipe_factory(), out=tmp_path / "ctrl-c")
    assert json.loads((tmp_path / "ctrl-c" / "run.json").read_text())["outcome"] == "interrupted"

    def broken(self, out, batch, state):
        raise RuntimeError("a bug in a loss")

    monkeypatch.setattr(BagCrossEntropy, "forward", broken)
    with pytest.raises(RuntimeError):
        run(recipe_factory(), out=tmp_path / "bug")
    info = json.loads((tmp_path / "bug" / "run.json").read_text())
    assert info["outcome"] == "failed" and info["error"] == "RuntimeError: a bug in a loss"
    assert "failed - RuntimeError: a bug in a loss" in versions_table(load_run(tmp_path / "bug"))


def test_validation_selection_and_early_stopping(tmp_path, recipe_factory):
    recipe = recipe_factory(
        train={"epochs": 30, "early_stopping": {"patience": 2}},
        protocol={"kind": "holdout", "val_fraction": 0.25, "monitor": "acc"},
        data={"name": "classic"},
    )
    # holdout on the "all" pool: train/val carved from it; no test split in a classic CSV
    s = run(recipe, out=tmp_path / "r")
    fold = s["folds"][0]
    assert "selected" in fold and fold["selected"]["monitor"] == "val/acc"
    assert (tmp_path / "r" / "fold-00" / "best" / "model.safetensors").exists()
    assert fold["epochs_run"] < 30 and fold["stopped_early"]


def test_standardisation_is_fitted_on_training_bags_only(tmp_path, recipe_factory):
    from milzoo.datasets.protocols import make_folds
    from milzoo.recipe import load_recipe
    from milzoo.model.build import build_dataset

    recipe = load_recipe(recipe_factory())
    out = tmp_path / "r"
    run(recipe, out=out)
    folds = make_folds(recipe.root.protocol, build_dataset(recipe), recipe.root.seed)
    for fd in folds:
        model = ckpt.load_model(out / f"fold-{fd.fold:02d}" / "last")
        train_x = fd.train.instance_matrix().double()
        assert torch.allclose(model.standardizer.mean.double(), train_x.mean(0), atol=1e-5)
        all_x = torch.cat([fd.train.instance_matrix(), fd.evals["test"].instance_matrix()]).double()
        assert not torch.allclose(model.standardizer.mean.double(), all_x.mean(0), atol=1e-5)


def test_cv_folds_partition_and_never_select_on_test(tmp_path, recipe_factory):
    from milzoo.datasets.protocols import make_folds
    from milzoo.recipe import load_recipe
    from milzoo.model.build import build_dataset

    recipe = load_recipe(recipe_factory(protocol={"folds": 4, "val_fraction": 0.2}))
    folds = make_folds(recipe.root.protocol, build_dataset(recipe), 0)
    tests = np.concatenate([f.evals["test"].indices for f in folds])
    assert sorted(tests.tolist()) == list(range(40))
    for f in folds:
        tr, va, te = set(f.train.indices), set(f.val.indices), set(f.evals["test"].indices)
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert np.bincount(f.evals["test"].labels).min() >= 4  # stratified
    s = run(recipe, out=tmp_path / "r")
    assert s["selected"]["test"]["acc"]["values"]  # test metrics at the val-chosen epoch


def test_summarize_requires_all_folds(tmp_path, recipe_factory):
    out = tmp_path / "r"
    partial = run(recipe_factory(), out=out, fold=0)
    assert partial["complete"] is False
    with pytest.raises(RunDirError, match="missing the results of folds \\[1\\]"):
        summarize(out)
    full = run(recipe_factory(), out=out, fold=1)
    assert full["num_folds"] == 2 and summarize(out)["last"] == full["last"]


def test_batch_of_one_equals_padded_batches(tmp_path, recipe_factory):
    """Training with batch_size 1 and evaluation with padded batches agree with bag-at-a-time predictions."""
    from milzoo.datasets.batch import collate_bags
    from milzoo.model.build import build_dataset
    from milzoo.recipe import load_recipe

    run(recipe_factory(train={"eval_batch_size": 7}), out=tmp_path / "r")
    model = ckpt.load_model(tmp_path / "r" / "fold-00" / "last")
    ds = build_dataset(load_recipe(recipe_factory()))["all"]
    bags = [ds[i] for i in range(10)]
    batched = model.predict(collate_bags(bags)).bag_probs
    single = torch.cat([model.predict(collate_bags([b])).bag_probs for b in bags])
    assert torch.allclose(batched, single, atol=1e-6)


def test_schedules():
    from milzoo.recipe import ScheduleConfig
    from milzoo.train.settings import lr_at

    step = ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1)
    assert [round(lr_at(step, 1.0, e, 6), 6) for e in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    cos = ScheduleConfig(name="cosine", min_lr=0.1)
    assert lr_at(cos, 1.0, 0, 10) == 1.0 and abs(lr_at(cos, 1.0, 10, 10) - 0.1) < 1e-12
    assert abs(lr_at(cos, 1.0, 5, 10) - 0.55) < 1e-12


def test_precision_auto_picks_bf16_only_where_it_is_native(monkeypatch, tmp_path, recipe_factory):
    import torch

    import milzoo
    from milzoo.train import settings as train_settings
    from milzoo.train import trainer

    cpu = torch.device("cpu")
    resolve = train_settings.resolve_precision
    assert resolve("fp16", cpu) == "fp16" and resolve("fp32", cpu) == "fp32"
    monkeypatch.setattr(train_settings, "has_native_bf16", lambda device: True)
    assert resolve("auto", cpu) == "bf16"
    monkeypatch.setattr(train_settings, "has_native_bf16", lambda device: False)
    assert resolve("auto", cpu) == "fp32"
    seen = []
    real = trainer.Trainer.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        seen.append((self.precision, self.amp_dtype))

    monkeypatch.setattr(trainer.Trainer, "__init__", spy)
    recipe = recipe_factory(train={"epochs": 1, "precision": "auto", "device": "cpu"}, protocol={"kind": "holdout"})
    milzoo.run(recipe, out=str(tmp_path / "run"))
    assert seen == [("fp32", None)]


def test_atomic_files_respect_the_umask(tmp_path):
    import os
    import stat

    from milzoo.checkpoint import atomic_write_text

    old = os.umask(0o002)  # a group-shared run directory
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o664
