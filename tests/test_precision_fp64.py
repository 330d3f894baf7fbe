"""train.precision = "fp64": float64 weights, inputs and losses end to end (the numerical-comparison mode)."""

from __future__ import annotations

import json

import torch

from milzoo import checkpoint as ckpt
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.runs.runner import run


def _train_losses(run_dir):
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [l["loss"] for l in lines if l["split"] == "train"]


def test_fp64_trains_saves_and_reloads_in_float64(tmp_path, recipe_factory):
    out64 = tmp_path / "fp64"
    run(recipe_factory(train={"precision": "fp64"}), out=out64)
    model = ckpt.load_model(out64 / "fold-00" / "last")
    assert json.loads((out64 / "fold-00" / "last" / "config.json").read_text())["dtype"] == "float64"
    assert {v.dtype for v in model.state_dict().values() if v.is_floating_point()} == {torch.float64}
    # float32 features in: cast to the weights' type, the same probabilities the run wrote
    out = model.predict(collate_bags([Bag(x=torch.randn(5, 6), y=0)]))
    assert out.bag_probs.dtype == torch.float64 and torch.isfinite(out.bag_probs).all()


def test_fp64_follows_the_fp32_run_to_rounding(tmp_path, recipe_factory):
    """The same random stream and steps: the two precisions differ by float32 rounding only at the start."""
    run(recipe_factory(train={"precision": "fp64"}), out=tmp_path / "fp64")
    run(recipe_factory(), out=tmp_path / "fp32")
    l64, l32 = _train_losses(tmp_path / "fp64"), _train_losses(tmp_path / "fp32")
    assert len(l64) == len(l32)
    assert abs(l64[0] - l32[0]) < 1e-5 and l64[0] != l32[0]  # same first epoch, not the same arithmetic


def test_fp32_checkpoints_say_nothing_of_dtype_and_load_as_float32(tmp_path, recipe_factory):
    run(recipe_factory(), out=tmp_path / "fp32")
    cfg = json.loads((tmp_path / "fp32" / "fold-00" / "last" / "config.json").read_text())
    assert "dtype" not in cfg  # older checkpoints and float32 ones read the same way
    model = ckpt.load_model(tmp_path / "fp32" / "fold-00" / "last")
    assert next(model.parameters()).dtype == torch.float32


def test_a_config_claiming_float64_for_float32_weights_is_refused(tmp_path, recipe_factory):
    import pytest

    from milzoo.errors import CheckpointError

    run(recipe_factory(), out=tmp_path / "fp32")
    last = tmp_path / "fp32" / "fold-00" / "last"
    cfg = json.loads((last / "config.json").read_text())
    (last / "config.json").write_text(json.dumps({**cfg, "dtype": "float64"}))
    with pytest.raises(CheckpointError, match="wrong shape or dtype"):
        ckpt.load_model(last)
    (last / "config.json").write_text(json.dumps({**cfg, "dtype": "float16"}))
    with pytest.raises(CheckpointError, match="dtype"):
        ckpt.load_model(last)
