"""Folders and configs from anyone are sized exactly before anything is built (docs/security.md).

Every size a config asks for is computed with Python integers before torch sees it (no overflow, no C++ stack
trace), nothing is built for real that was not sized first, ensembles are bounded and free of duplicates,
loading never downloads, and install hints name only a distribution that a file recorded and that is missing.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

import milzoo
import milzoo.checkpoint._model as ckpt_model
from milzoo import checkpoint as ckpt
from milzoo.builtin.encoders import MLPEncoder
from milzoo.cli import add_all_commands, cli
from milzoo.errors import CheckpointError, CheckpointWarning, UnknownComponentError, UserError
from milzoo.hub import load_folder, save_pretrained
from milzoo.model import Ensemble
from milzoo.model.build import build_components
from milzoo.model.sizing import SizeGuard, bytes_text, check_model_size, guarded_build
from milzoo.registry import get_component


def _model(**pooling):
    return build_components({"name": "mlp", "dims": [4]}, {"name": "abmil", "attn_hidden": 3, **pooling}, (5,), 2)


@pytest.fixture
def saved(tmp_path):
    return ckpt.save_model(_model(), tmp_path / "m")


def _edit(directory, change):
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


def _refused(directory, match, **kwargs) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        ckpt.load_model(directory, **kwargs)
    msg = str(info.value)
    assert "Exception raised from" not in msg and "frame #" not in msg, msg  # no C++ stack trace
    return msg


# ------------------------------------------------------------------ num_classes and the hub folder commands


@pytest.mark.parametrize("num_classes", [2**31 - 1, 10**8])
def test_huge_num_classes_in_a_hub_folder_is_refused_before_anything_is_built(tmp_path, saved, num_classes):
    folder = save_pretrained(saved, tmp_path / "hub")
    _edit(folder, lambda c: c.update(num_classes=num_classes, class_names=None, label_names=None))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"num_classes: .*less than or equal to 100000"):
        milzoo.load_pretrained(folder)
    assert time.perf_counter() - start < 1  # was: 5 GB of class names and a MemoryError
    add_all_commands()
    res = CliRunner().invoke(cli, ["export", str(folder), str(tmp_path / "out")])
    assert res.exit_code == 2 and "num_classes" in res.output and "Traceback" not in res.output, res.output


# ------------------------------------------------------------------ sizes computed before any build


@pytest.fixture
def builds(monkeypatch):
    """The device of every build of the checkpoint's model: a real build shows up as 'cpu'."""
    devices: list[str] = []
    original = ckpt_model.build_components

    def spy(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return original(*args, **kwargs)

    monkeypatch.setattr(ckpt_model, "build_components", spy)
    return devices


@pytest.mark.parametrize("dims, shape", [
    ([4000000, 2**31 - 1, 2**31 - 1, 16], r"\[2147483647, 4000000\]"),  # passed the meta build; 3.4 GB for real
    ([2**40, 2**40], r"\[1099511627776, 5\]"),  # overflowed the meta build, then a real build of 730 TB
])
def test_overflowing_dims_are_sized_with_python_integers(saved, builds, dims, shape):
    _edit(saved, lambda c: c["encoder"].update(dims=dims))
    msg = _refused(saved, shape + r".*nothing was allocated")
    assert "does not describe these weights" in msg and "max_bytes" in msg
    assert builds == ["meta"]  # never built for real


def test_a_component_that_cannot_be_built_on_meta_is_refused_not_built_for_real(saved, builds, monkeypatch):
    original = MLPEncoder.__init__

    def data_dependent(self, config, in_shape):
        if torch.get_default_device().type == "meta":
            raise NotImplementedError("this constructor reads real values")
        original(self, config, in_shape)

    monkeypatch.setattr(MLPEncoder, "__init__", data_dependent)
    _refused(saved, r"cannot be built on PyTorch's meta device.*NotImplementedError: this constructor reads")
    assert builds == ["meta"]


def test_a_huge_option_or_instance_shape_is_a_clear_paragraph(saved):
    _edit(saved, lambda c: c["pooling"].update(attn_hidden=10**30))
    _refused(saved, r"shape \[1000000000000000000000000000000, 4\] \(about 10\^30 elements")
    _edit(saved, lambda c: c["pooling"].update(attn_hidden=3))
    _edit(saved, lambda c: c.update(in_shape=[2**31 - 1] * 3))
    _refused(saved, r"in_shape: .*one instance of this shape has 9,903,520,300,447,984,150,353,281,023 values")
    _edit(saved, lambda c: c.update(in_shape=[5]))
    ckpt.load_model(saved)  # the same folder, repaired, loads


def test_a_config_building_thousands_of_layers_is_stopped_early(saved):
    _edit(saved, lambda c: c["encoder"].update(dims=[1] * 200_000))  # 1.2 MB of JSON, minutes to build
    start = time.perf_counter()
    _refused(saved, r"more than 1,056 tensors")  # four per tensor of the file (8) and 1024 more
    assert time.perf_counter() - start < 2


def test_weights_are_sized_from_the_file_before_any_tensor_is_read(saved, monkeypatch):
    size = (saved / "model.safetensors").stat().st_size
    read = []
    monkeypatch.setattr(ckpt_model, "read_weights", lambda w: read.append(w))
    msg = _refused(saved, r"model.safetensors is .* more than the 100 bytes of weights", max_bytes=100)
    assert "max_bytes=" in msg and read == []
    # the meta build is held to the same limit, with the weights' own size beside it
    _edit(saved, lambda c: c["encoder"].update(dims=[4000]))
    _refused(saved, rf"a tensor of shape \[4000, 5\].*holds 8 tensors of {bytes_text(size)}", max_bytes=size + 1)
    monkeypatch.undo()
    _edit(saved, lambda c: c["encoder"].update(dims=[4]))
    assert isinstance(milzoo.load_pretrained(saved, max_bytes=size), torch.nn.Module)  # an explicit, larger limit


def test_the_size_guard_refuses_requests_before_torch_sees_them():
    refuse = lambda what: UserError(what)  # noqa: E731
    for request in (lambda: torch.empty(2**40, 2**40), lambda: torch.zeros((2**62, 4)),
                    lambda: torch.arange(10**20), lambda: torch.eye(2**33), lambda: torch.full((2**31, 2**31), 1.0),
                    lambda: torch.ones(4).new_empty((2**40, 2**40)), lambda: torch.ones(4).new_zeros(2**40, 2**40),
                    lambda: torch.ones(4).new_full((2**40, 2**40), 1.0), lambda: torch.randint(0, 9, (2**40, 2**40)),
                    lambda: torch.linspace(0, 1, 2**40), lambda: torch.randperm(2**40)):
        with pytest.raises(UserError, match="a tensor of shape"):
            guarded_build(request, 2**30, refuse)
    with pytest.raises(UserError, match="tensors of .* or more"):  # what a call returns is counted too
        guarded_build(lambda: torch.zeros(2**20, 1) @ torch.zeros(1, 2**20), 2**30, refuse)
    with SizeGuard(2**20, refuse) as guard:
        torch.zeros(1000)
    assert guard.total == 4000 and guard.tensors == 1


def test_a_recipe_component_that_cannot_be_built_on_meta_is_built_under_the_guard():
    def build():
        if torch.get_default_device().type == "meta":
            raise NotImplementedError("data-dependent")
        return torch.nn.Linear(2**20, 2**12)  # 16 GiB of weights

    with pytest.raises(UserError, match=r"shape \[4096, 1048576\].*more than this machine's 1.0 GiB of memory"):
        check_model_size(build, "test", memory_bytes=2**30)  # was: built for real without any check


# ------------------------------------------------------------------ ensembles


def _ensemble(tmp_path, n_distinct=2):
    members = [_model() for _ in range(n_distinct)]
    return save_pretrained(Ensemble(members), tmp_path / "ens")


def test_twenty_thousand_copies_of_one_member_are_refused_at_once(tmp_path):
    folder = _ensemble(tmp_path)
    _edit(folder, lambda c: c["ensemble"].update(members=["members/member-0"] * 20_000, folds=None,
                                                  thresholds=None))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="lists 20,000 ensemble members, more than the 64"):
        load_folder(folder)
    assert time.perf_counter() - start < 1  # was: 114 s and 2.3 GB


@pytest.mark.parametrize("second", ["members/member-0", "members/./member-0", "members//member-0", "link", "copy"])
def test_an_ensemble_member_listed_twice_is_refused(tmp_path, second):
    folder = _ensemble(tmp_path)
    if second == "link":
        (folder / "link").symlink_to(folder / "members" / "member-0", target_is_directory=True)
    if second == "copy":
        shutil.copytree(folder / "members" / "member-0", folder / "copy")
    _edit(folder, lambda c: c["ensemble"].update(members=["members/member-0", second]))
    with pytest.raises(CheckpointError, match="twice|are the same file"):
        load_folder(folder)


def test_ensemble_members_share_one_size_limit(tmp_path):
    folder = _ensemble(tmp_path)
    one = (folder / "members" / "member-0" / "model.safetensors").stat().st_size
    with pytest.raises(CheckpointError, match="members .* hold .* of weights together"):
        load_folder(folder, max_bytes=one + 1)  # each member fits, both together do not
    assert len(load_folder(folder, max_bytes=2 * one).members) == 2


# ------------------------------------------------------------------ loading never downloads


@pytest.mark.parametrize("option", [{"pretrained": True}, {"weights_path": "elsewhere.pt"}])
def test_loading_a_checkpoint_never_fetches_its_encoder_weights(tmp_path, monkeypatch, option):
    try:
        get_component("encoder", "resnet18")
    except UnknownComponentError:
        pytest.skip("the milzoo-vision plugin is not installed")
    model = build_components({"name": "resnet18", "small_input": True}, {"name": "mean"}, (3, 8, 8), 2)
    d = ckpt.save_model(model, tmp_path / "r")
    _edit(d, lambda c: c["encoder"].update(option))

    def offline(*args, **kwargs):
        raise AssertionError("loading a checkpoint tried to fetch weights")

    import torchvision.models._api as weights_api

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(weights_api.WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(torch, "load", offline)  # weights_path is not read either
    loaded = ckpt.load_model(d)
    for (name, want), got in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(want, got), name  # the weights come from model.safetensors


# ------------------------------------------------------------------ install hints


def test_a_look_alike_distribution_in_the_file_gets_no_install_hint(saved):
    _edit(saved, lambda c: c["components"]["pooling"].update(distribution="milzoo-abmil-cuda"))
    msg = _refused(saved, r"provided by milzoo-abmil-cuda 0.1.0 \(a name read from the file\)")
    assert "pip install" not in msg and "installed pooling of that name comes from milzoo-abmil" in msg


def test_a_distribution_typed_in_a_recipe_gets_no_install_hint():
    with pytest.raises(UnknownComponentError) as info:
        get_component("pooling", "os:system")
    msg = str(info.value)
    assert "pip install" not in msg and "No distribution 'os' is installed" in msg


def test_no_install_hint_for_an_installed_distribution(saved):
    def gone(c):
        c["pooling"]["name"] = "gone_pool"
        c["components"]["pooling"]["name"] = "gone_pool"

    _edit(saved, gone)  # recorded: milzoo-abmil at the installed version
    msg = _refused(saved, r"registers no pooling 'gone_pool'.*damaged or was edited")
    assert "pip install" not in msg
    _edit(saved, lambda c: c["components"]["pooling"].update(version="0.0.1"))
    _refused(saved, r"`pip install milzoo-abmil==0\.0\.1`; the version comes from the file")
    _edit(saved, lambda c: c["components"]["pooling"].update(distribution="milzoo-not-installed"))
    _refused(saved, r"`pip install milzoo-not-installed==0\.0\.1`.*the name comes from the file")


def test_a_core_component_of_another_milzoo_version_suggests_that_version(saved):
    def older(c):
        c["encoder"]["name"] = "retired_encoder"
        c["components"]["encoder"] = {"name": "retired_encoder", "distribution": "milzoo", "version": "0.0.1"}

    _edit(saved, older)
    _refused(saved, r"built into milzoo 0\.0\.1.*`pip install milzoo==0\.0\.1`")


# ------------------------------------------------------------------ exact types, unknown keys, options


@pytest.mark.parametrize("key, value, match", [
    ("num_classes", "2", "num_classes: Input should be a valid integer"),
    ("num_classes", 2.0, "num_classes: Input should be a valid integer"),
    ("num_classes", True, "num_classes: Input should be a valid integer"),
    ("in_shape", ["5"], r"in_shape.0: Input should be a valid integer"),
    ("standardize", "yes", "standardize: Input should be a valid boolean"),
    ("format_version", 1.0, "format_version: Input should be a valid integer"),
])
def test_config_values_must_have_exactly_their_type(saved, key, value, match):
    _edit(saved, lambda c: c.update({key: value}))
    _refused(saved, match)


def test_unknown_top_level_keys_are_named(saved):
    _edit(saved, lambda c: c.update(standardise=True))  # a typo that would silently load without standardising
    _refused(saved, r"the key 'standardise', which milzoo does not read; did you mean 'standardize'\?")
    _edit(saved, lambda c: (c.pop("standardise"), c.update(notes="trained on my laptop")))
    with pytest.warns(CheckpointWarning, match=r"keys this milzoo does not read: \['notes'\]"):
        ckpt.load_model(saved)


def test_option_errors_name_each_option_and_blame_the_file(saved):
    _edit(saved, lambda c: c["pooling"].update(attn_hidden="x", gated=5))
    msg = _refused(saved, r"gives the pooling 'abmil' options it does not accept: pooling\.attn_hidden: .*\(got "
                          r"'x'\); pooling\.gated: .*\(got 5\)\. The installed milzoo-abmil .* is the version")
    assert "changed incompatibly" not in msg and "[{" not in msg  # no raw pydantic list


def test_a_damaged_training_state_is_a_clear_error(tmp_path):
    path = tmp_path / "state.safetensors"
    ckpt.save_training_state(path, {"t": torch.ones(2)})
    tensors = safetensors.torch.load_file(str(path))
    gone = json.dumps({"t": {"__tensor__": "gone"}})  # names a tensor the file does not hold
    safetensors.torch.save_file(tensors, str(path), metadata={"milzoo_state": gone})
    with pytest.raises(CheckpointError, match="training state .* is corrupted \\(KeyError"):
        ckpt.load_training_state(path)
