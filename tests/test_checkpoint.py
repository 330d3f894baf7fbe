"""Checkpoints: safetensors round trip, strict loading and clear errors."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from milzoo import checkpoint as ckpt
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.model.build import build_components
from milzoo.errors import CheckpointError


def make_model(**pool):
    return build_components(
        encoder={"name": "mlp", "dims": [8]}, pooling={"name": "abmil", "attn_hidden": 4, **pool},
        in_shape=(5,), num_classes=3, class_names=["a", "b", "c"], standardize=True,
    )


def batch():
    g = torch.Generator().manual_seed(0)
    return collate_bags([Bag(torch.randn(n, 5, generator=g), y=n % 3) for n in (2, 5, 3)])


def test_round_trip_identical_predictions(tmp_path):
    torch.manual_seed(0)
    model = make_model(gated=True).eval()
    model.standardizer.fit(torch.randn(20, 5) * 3 + 1)
    ckpt.save_model(model, tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert {k: cfg["pooling"][k] for k in ("name", "attn_hidden", "gated", "dropout")} == \
        {"name": "abmil", "attn_hidden": 4, "gated": True, "dropout": 0.0}
    assert cfg["label_names"] == ["a", "b", "c"] and cfg["components"]["pooling"]["distribution"] == "milzoo-abmil"
    loaded = ckpt.load_model(tmp_path / "m")
    assert not loaded.training
    assert torch.equal(model(batch()).bag_logits, loaded(batch()).bag_logits)


def test_no_pickle_in_checkpoint(tmp_path):
    ckpt.save_model(make_model(), tmp_path / "m")
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    assert b"\x80\x04" not in raw[:16]  # not a pickle stream; safetensors header is JSON
    assert safetensors.torch.load_file(str(tmp_path / "m" / "model.safetensors"))


def test_truncated_and_corrupted_files(tmp_path):
    ckpt.save_model(make_model(), tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        ckpt.load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ckpt.load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_model(tmp_path / "nowhere")


def test_shape_mismatch_and_changed_options(tmp_path):
    ckpt.save_model(make_model(), tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["pooling"]["attn_hidden"] = 6
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong shape"):
        ckpt.load_model(tmp_path / "m")
    cfg["pooling"]["attn_hidden"] = 4
    cfg["pooling"]["renamed_option"] = 1
    cfg_path.write_text(json.dumps(cfg))
    # written by the installed version: the file was edited, the options did not change
    with pytest.raises(CheckpointError, match="pooling.renamed_option: Extra inputs.*the file was damaged or edited"):
        ckpt.load_model(tmp_path / "m")
    cfg["components"]["pooling"]["version"] = "0.0.1"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"changed incompatibly.*`pip install milzoo-abmil==0\.0\.1`"):
        ckpt.load_model(tmp_path / "m")


def test_missing_plugin_names_the_distribution(tmp_path):
    ckpt.save_model(make_model(), tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["pooling"]["name"] = "fancy"
    cfg["components"]["pooling"] = {"name": "fancy", "distribution": "milzoo-fancy", "version": "1.2"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="pip install milzoo-fancy"):
        ckpt.load_model(tmp_path / "m")


def test_training_state_is_one_atomic_file(tmp_path):
    state = {"epoch": 3, "t": torch.arange(4.0), "nested": {"a": [torch.ones(2), 5, "x"]}, "none": None}
    ckpt.save_training_state(tmp_path / "s.safetensors", state)
    back = ckpt.load_training_state(tmp_path / "s.safetensors")
    assert back["epoch"] == 3 and torch.equal(back["t"], state["t"]) and back["nested"]["a"][1:] == [5, "x"]
    assert torch.equal(back["nested"]["a"][0], torch.ones(2)) and back["none"] is None
    (tmp_path / "s.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupted"):
        ckpt.load_training_state(tmp_path / "s.safetensors")
