"""`milzoo convert` and `milzoo.convert`: the converter kind, safe reading, key and shape checks, the Hub folder.

A toy converter registered by hand (a foreign one-hidden-layer MLP -> the ``mlp`` encoder and the ``mean``
pooling) exercises the machinery every format shares; the plugins' tests check their own formats against
references of the official code.
"""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import milzoo
from milzoo import hookimpl, registry
from milzoo.checkpoint import read_config
from milzoo.components import ComponentConfig, ConversionPlan, Converter
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.errors import CheckpointWarning, ConversionError, UnknownComponentError
from milzoo.testing import registered_plugins


class ToyConverter(Converter):
    """A toy format: one hidden layer and a head (tests only)."""

    name = "toy-mlp"
    source = "tests/test_convert.py"
    wrappers = ("state_dict",)
    extract_hint = "save toy.state_dict() with the toy's own code"

    class Config(ComponentConfig):
        fresh_head: bool = False
        forget_a_key: bool = False

    def plan(self, state, num_classes):
        if "embed.weight" not in state:
            raise ConversionError("no 'embed.weight': not a toy model")
        hidden, in_dim = state["embed.weight"].shape
        keys = {"embed.weight": "encoder.net.0.weight", "embed.bias": "encoder.net.0.bias",
                "head.weight": "pooling.classifier.weight", "head.bias": "pooling.classifier.bias"}
        k = int(state["head.weight"].shape[0]) if "head.weight" in state else num_classes
        new, dropped = {}, []
        if self.config.fresh_head:
            k = num_classes
            dropped = [key for key in ("head.weight", "head.bias") if key in state]
            del keys["head.weight"], keys["head.bias"]
            new = {"pooling.classifier.weight": torch.zeros(k, hidden), "pooling.classifier.bias": torch.zeros(k)}
        if self.config.forget_a_key:  # a broken converter: the model's encoder.net.0.bias stays unset
            keys["embed.bias"] = "encoder.net.0.weight"
        return ConversionPlan(encoder={"name": "mlp", "dims": [int(hidden)]}, pooling={"name": "mean"},
                              in_shape=(int(in_dim),), num_classes=k, keys=keys, architecture="toy MLP",
                              new=new, dropped=dropped, notes=["A toy note."])


class NotAConverter:
    name = "not-a-converter"


class _Plugin:
    @hookimpl
    def milzoo_register_converters(self, register):
        register(ToyConverter)


class _BrokenPlugin:
    @hookimpl
    def milzoo_register_converters(self, register):
        register(NotAConverter)


@pytest.fixture(scope="module", autouse=True)
def toy_plugin():
    with registered_plugins({"converttest": _Plugin(), "convertbroken": _BrokenPlugin()}):
        yield  # afterwards the failure recorded against the broken plugin is forgotten too


def toy_state(in_dim=5, hidden=4, k=3, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"embed.weight": torch.randn(hidden, in_dim, generator=gen, dtype=dtype),
            "embed.bias": torch.randn(hidden, generator=gen, dtype=dtype),
            "head.weight": torch.randn(k, hidden, generator=gen, dtype=dtype),
            "head.bias": torch.randn(k, generator=gen, dtype=dtype)}


def toy_forward(state, x):
    h = torch.relu(x @ state["embed.weight"].T + state["embed.bias"])
    return h.mean(0) @ state["head.weight"].T + state["head.bias"]


def cli(*args):
    from milzoo.cli import add_all_commands, cli as group

    add_all_commands()
    return CliRunner().invoke(group, [str(a) for a in args])


# =========================================================================== the kind


def test_converters_are_a_registry_kind():
    assert "converter" in registry.ALL_KINDS
    assert registry.get_component("converter", "toy-mlp") is ToyConverter
    assert ToyConverter.provenance["plugin"] == "converttest"
    broken = next(r for r in registry.plugin_records() if r.name == "convertbroken" or r.key.endswith(
        "convertbroken"))
    assert broken.status == "failed" and "subclass of milzoo.components.Converter" in broken.error
    with pytest.raises(UnknownComponentError, match="toy-mlp"):
        registry.get_component("converter", "toy-mpl")


def test_list_and_help_show_the_formats():
    result = cli("list", "converters")
    assert result.exit_code == 0, result.output
    assert "toy-mlp" in result.output and "A toy format" in result.output
    for first_party in ("clam", "mil-lab-abmil", "transmil"):
        assert first_party in result.output
    result = cli("convert", "--help")
    assert result.exit_code == 0, result.output
    assert "Formats" in result.output and "--option fresh_head=..." in result.output


# =========================================================================== a conversion


@pytest.mark.parametrize("form", ["pt", "safetensors", "folder", "wrapped", "dataparallel"])
def test_converts_into_a_hub_folder_that_gives_the_source_model_s_outputs(tmp_path, form):
    state = toy_state()
    if form == "pt":
        src = tmp_path / "toy.pt"
        torch.save(state, src)
    elif form == "safetensors":
        src = tmp_path / "toy.safetensors"
        save_file(state, str(src))
    elif form == "folder":
        src = tmp_path / "snapshot"
        src.mkdir()
        torch.save(state, src / "pytorch_model.bin")
    elif form == "wrapped":
        src = tmp_path / "toy.ckpt"
        torch.save({"epoch": 2, "state_dict": state, "optimizer_states": [{"lr": 0.1}]}, src)
    else:
        src = tmp_path / "toy.pt"
        torch.save({f"module.{k}": v for k, v in state.items()}, src)
    out = milzoo.convert("toy-mlp", src, tmp_path / "hub", class_names=["a", "b", "c"], license="mit")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = milzoo.load_pretrained(str(out))
    xs = [torch.randn(n, 5, dtype=torch.float64) for n in (4, 9)]
    got = model.predict(collate_bags([Bag(x, 0) for x in xs])).bag_logits
    torch.testing.assert_close(got, torch.stack([toy_forward(state, x) for x in xs]), rtol=1e-13, atol=1e-13)
    cfg = read_config(out)
    conv = cfg["converted_from"]
    file = src / "pytorch_model.bin" if form == "folder" else src
    assert conv["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest() and conv["file"] == file.name
    assert conv["wrapper"] == ("state_dict" if form == "wrapped" else None)
    assert conv["prefixes_removed"] == (["module."] if form == "dataparallel" else [])
    assert conv["format"] == "toy-mlp" and conv["source"] == "tests/test_convert.py"
    assert conv["notes"] == ["A toy note."] and cfg["head"] == "trained" and cfg["dtype"] == "float64"
    assert cfg["label_names"] == ["a", "b", "c"] and cfg["metrics"] == {}
    card = (out / "README.md").read_text()
    assert "Not trained with milzoo" in card and "A toy note." in card and "untrained" not in card
    assert "license: mit" in card


def test_float32_and_half_sources_give_float32_models(tmp_path):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        torch.save(toy_state(dtype=dtype), tmp_path / "t.pt")
        out = milzoo.convert("toy-mlp", tmp_path / "t.pt", tmp_path / str(dtype), num_classes=3)
        assert "dtype" not in read_config(out)
        assert milzoo.load_pretrained(str(out)).pooling.classifier.weight.dtype == torch.float32


def test_a_new_head_is_marked_untrained_and_warned_about(tmp_path):
    torch.save(toy_state(), tmp_path / "t.pt")
    out = milzoo.convert("toy-mlp", tmp_path / "t.pt", tmp_path / "hub", num_classes=2,
                         options={"fresh_head": True})
    cfg = read_config(out)
    assert cfg["head"] == "untrained" and cfg["converted_from"]["dropped"] == ["head.bias", "head.weight"]
    assert "The classification head is untrained" in (out / "README.md").read_text()
    with pytest.warns(CheckpointWarning, match="toy-mlp.*untrained"):
        milzoo.load_pretrained(str(out))


# =========================================================================== refusals


def _refused(tmp_path, obj, match, name="bad.pt", **kwargs):
    path = tmp_path / name
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        torch.save(obj, path)
    with pytest.raises(ConversionError, match=match):
        milzoo.convert("toy-mlp", path, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_anything_but_a_plain_tensor_dict_is_refused(tmp_path):
    _refused(tmp_path, torch.nn.Linear(2, 2), r"weights_only=True.*save toy.state_dict\(\)")  # a pickled module
    _refused(tmp_path, pickle.dumps(torch.nn.Linear(2, 2)), r"not a plain state dict of tensors", name="raw.pkl")
    _refused(tmp_path, [torch.zeros(2)], "holds a list, not a plain state dict")
    _refused(tmp_path, {}, "holds an empty dict")
    _refused(tmp_path, {"model": toy_state()}, r"entries 'model' are not tensors.*under 'state_dict'")
    _refused(tmp_path, {"state_dict": {**toy_state(), "step": 3}}, "not a plain state dict")
    _refused(tmp_path, b"not a safetensors file", "not a readable safetensors file", name="bad.safetensors")
    with pytest.raises(ConversionError, match="does not exist"):
        milzoo.convert("toy-mlp", tmp_path / "nowhere.pt", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="folder without model.safetensors or pytorch_model.bin"):
        milzoo.convert("toy-mlp", tmp_path / "empty", tmp_path / "out")


def test_keys_shapes_and_values_are_checked_by_name(tmp_path):
    state = toy_state()
    _refused(tmp_path, {k: v for k, v in state.items() if k != "embed.bias"}, r"missing 'embed.bias'")
    _refused(tmp_path, {**state, "extra.weight": torch.zeros(1)}, r"unexpected 'extra.weight'")
    partly = {("module." + k if k == "embed.bias" else k): v for k, v in state.items()}  # not every key: kept
    _refused(tmp_path, partly, r"missing 'embed.bias'; unexpected 'module.embed.bias'")
    _refused(tmp_path, {**state, "embed.bias": torch.zeros(7, dtype=torch.float64)},
             r"'embed.bias' is \(7,\), needs \(4,\)")
    _refused(tmp_path, {**state, "head.bias": torch.zeros(3, dtype=torch.int64)}, r"not dense floating-point.*head.bias")
    _refused(tmp_path, {**state, "head.bias": torch.tensor([0.0, float("nan"), 1.0])}, r"NaN.*'head.bias'")
    _refused(tmp_path, state, "bug of that converter", options={"forget_a_key": True})
    _refused(tmp_path, state, r"options for the 'toy-mlp' converter: fresh_hed.*fresh_head \(default False\)",
             options={"fresh_hed": True})
    _refused(tmp_path, state, "trained 3-class head, but 2 classes were asked for", num_classes=2)
    _refused(tmp_path, state, "3 classes were asked for but 2 class names", num_classes=3, class_names=["a", "b"])
    _refused(tmp_path, state, "at least two, distinct", class_names=["a", "a", "b"])


# =========================================================================== the command


def test_the_command_converts_and_reports_user_errors_in_one_paragraph(tmp_path):
    torch.save(toy_state(), tmp_path / "t.pt")
    result = cli("convert", "toy-mlp", tmp_path / "t.pt", tmp_path / "hub", "--class-names", "x,y,z",
                 "--repo-id", "me/toy")
    assert result.exit_code == 0, result.output
    assert "toy MLP (toy-mlp), 3 classes (x, y, z)" in result.output and "note: A toy note." in result.output
    assert "me/toy" in (tmp_path / "hub" / "README.md").read_text()
    again = cli("convert", "toy-mlp", tmp_path / "t.pt", tmp_path / "hub")
    assert again.exit_code == 2 and "--overwrite" in again.output and "Traceback" not in again.output
    fresh = cli("convert", "toy-mlp", tmp_path / "t.pt", tmp_path / "hub", "--overwrite", "--num-classes", "2",
                "-o", "fresh_head=true")
    assert fresh.exit_code == 0 and "warning: the classification head is newly initialised" in fresh.output
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["head"] == "untrained"
    for args, words in [(("toy-mpl",), "Did you mean 'toy-mlp'"), (("toy-mlp", "-o", "oops"), "not KEY=VALUE"),
                        (("toy-mlp", "-o", "fresh_head=maybe"), "fresh_head")]:
        result = cli("convert", args[0], tmp_path / "t.pt", tmp_path / "other", *args[1:])
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, result.output


def test_the_mlp_encoder_can_leave_out_dropout_after_its_last_layer():
    from milzoo.builtin.encoders import MLPEncoder

    default = MLPEncoder(MLPEncoder.Config(dims=[4, 4], dropout=0.5), (3,))
    inner = MLPEncoder(MLPEncoder.Config(dims=[4, 4], dropout=0.5, last_dropout=False), (3,))
    assert [type(m).__name__ for m in default.net] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout"]
    assert [type(m).__name__ for m in inner.net] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU"]
    assert list(default.state_dict()) == list(inner.state_dict())


def test_tensor_shape_names_the_key_and_the_format():
    from milzoo.components import tensor_shape

    state = {"a.weight": torch.zeros(3, 4), "b": torch.zeros(2)}
    assert tensor_shape(state, "a.weight", 2, "toy (toy.py)") == (3, 4)
    with pytest.raises(ConversionError, match=r"no 'c.weight', which every toy \(toy.py\) state dict holds"):
        tensor_shape(state, "c.weight", 2, "toy (toy.py)")
    with pytest.raises(ConversionError, match=r"'b' has shape \(2,\), not the 2-d tensor of the toy"):
        tensor_shape(state, "b", 2, "toy")
