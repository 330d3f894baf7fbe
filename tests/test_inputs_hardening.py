"""Data and inputs (hardening, round 3): bag ids that would merge bags, data paths that never end or do not fit,
downloads offline (``milzoo data fetch``), the overrides, references and environment variables that used to mean
something else silently, and nothing lost on a full disk, a symlinked --out or SIGTERM in --jobs workers.

No test downloads anything: the network is blocked (:func:`no_network`) and torchvision's downloaders are
replaced where a download must succeed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner

from milzoo import registry
from milzoo.builtin.classic import read_classic_csv
from milzoo.cli import add_all_commands, cli
from milzoo.datasets.files import check_data_file, parse_numeric_csv
from milzoo.errors import DataError, HubError, RecipeError
from milzoo.recipe import load_recipe

add_all_commands()


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def write_recipe(tmp_path: Path, recipe: dict, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(recipe))
    return path


def rows_csv(path: Path, rows: list[list[float]]) -> str:
    path.write_text("\n".join(",".join(f"{v!r}" if isinstance(v, float) else str(v) for v in r) for r in rows) + "\n")
    return str(path)


def bags(ids: list[float], label_of=lambda i, bid: int(bid) % 2) -> list[list[float]]:
    """One row per id (label, id, two features), features distinct per row."""
    return [[label_of(i, bid), bid, float(i), float(i) / 7] for i, bid in enumerate(ids)]


# =========================================================================== 1. bag ids


def test_two_files_that_each_number_their_bags_from_1_are_refused(tmp_path):
    first = [b for b in (1, 2, 3) for _ in range(3)]
    rows = bags(first) + bags(first)  # the second file's bags 1..3 again
    with pytest.raises(DataError, match=r"bag id 1 are not together: rows 1-3 and again 10-12.*2 other bag ids") as err:
        read_classic_csv(rows_csv(tmp_path / "joined.csv", rows))
    assert "renumber" in str(err.value).lower()


def test_a_bag_whose_rows_are_apart_is_refused_naming_them(tmp_path):
    rows = bags([7, 7, 8, 7])
    with pytest.raises(DataError, match=r"bag id 7 are not together: rows 1-2 and again 4\b"):
        read_classic_csv(rows_csv(tmp_path / "apart.csv", rows))


@pytest.mark.parametrize("ids, match", [
    ([1e20, 1e20, 1e20 + 2**20, 1e20 + 2**20], r"rows 1, 2, 3 and 4 have the bag id 100000000000000000000.*2\*\*53"),
    ([1.5, 1.5, 2.0, 2.0], r"rows 1 and 2 have a bag id that is not a whole number \(1\.5"),
])
def test_float_bag_ids_that_would_merge_or_misname_bags_are_refused(tmp_path, ids, match):
    with pytest.raises(DataError, match=match):
        read_classic_csv(rows_csv(tmp_path / "ids.csv", bags(ids)))


def test_large_whole_bag_ids_keep_every_digit(tmp_path):
    ds = read_classic_csv(rows_csv(tmp_path / "big.csv", bags([1234567, 1234567, 1234568, 1234568])))
    assert ds.bag_ids == ["1234567", "1234568"]  # not '1.23457e+06' twice


def test_a_row_repeated_in_its_bag_is_kept_with_a_warning_naming_it(tmp_path, caplog):
    rows = bags([1, 1, 2, 2, 2])
    rows[4] = list(rows[3])  # row 5 repeats row 4
    with caplog.at_level(logging.WARNING, logger="milzoo"):
        ds = read_classic_csv(rows_csv(tmp_path / "dup.csv", rows))
    assert [len(b.x) for b in (ds[0], ds[1])] == [2, 3]
    assert "1 row repeats an earlier row of the same bag exactly (row 5 = row 4)" in caplog.text


def test_candidate_sets_listed_twice_differently_are_refused(tmp_path):
    from milzoo_demil.datasets import read_candidate_csv

    ds = read_classic_csv(rows_csv(tmp_path / "toy.csv", bags([1, 1, 2, 2, 3])))
    path = tmp_path / "cand.csv"
    path.write_text("1,0\n2,1\n3,0\n1,0,1\n")
    with pytest.raises(DataError, match=r"bag '1' is listed twice with different candidate sets \(lines 1 and 4\)"):
        read_candidate_csv(str(path), ds)


# =========================================================================== 2. data paths


def _classic_recipe(path: str) -> dict:
    return {"name": "paths", "seed": 0, "data": {"name": "classic", "path": path},
            "encoder": {"name": "mlp", "dims": [8]}, "pooling": {"name": "mean"}, "loss": [{"name": "bag_ce"}],
            "optim": {"name": "adam", "lr": 0.01}, "train": {"epochs": 1, "batch_size": 4, "progress": False},
            "protocol": {"kind": "cv", "folds": 2}}


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_run_refuses_dev_zero_as_data_without_reading_it(tmp_path):
    recipe = write_recipe(tmp_path, _classic_recipe("/dev/zero"))
    code, out = invoke("run", recipe, "--out", tmp_path / "run")
    assert code == 2 and "/dev/zero is a device, not a regular file" in out, out
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_report_refuses_dev_zero_as_data(tmp_path, classic_csv):
    run_dir = tmp_path / "run"
    code, out = invoke("run", write_recipe(tmp_path, _classic_recipe(str(classic_csv))), "--out", run_dir)
    assert code == 0, out
    stored = run_dir / "recipe.toml"
    stored.write_text(stored.read_text().replace(str(classic_csv), "/dev/zero"))
    code, out = invoke("report", run_dir, "--out", tmp_path / "report.html")
    # the curves need no data; the representation map and the attention view say why they are missing
    assert code == 0, out
    assert "/dev/zero is a device, not a regular file" in (tmp_path / "report.html").read_text()
    code, out = invoke("embed", run_dir, "--out", tmp_path / "map.png")
    assert code == 2 and "/dev/zero is a device" in out, out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(DataError, match="is a named pipe, not a regular file"):
        read_classic_csv(str(fifo))
    with pytest.raises(DataError, match="is a folder"):
        check_data_file(str(tmp_path))


def test_a_data_file_larger_than_the_limit_is_refused_before_reading(tmp_path, monkeypatch, classic_csv):
    size = classic_csv.stat().st_size
    monkeypatch.setenv("MILZOO_MAX_DATA_BYTES", str(size - 1))
    with pytest.raises(DataError, match=rf"is {size / 1024:.1f} KiB, more than milzoo reads into memory.*"
                                        "MILZOO_MAX_DATA_BYTES"):
        read_classic_csv(str(classic_csv))
    monkeypatch.setenv("MILZOO_MAX_DATA_BYTES", str(size))
    assert len(read_classic_csv(str(classic_csv))) == 40


def test_a_ragged_csv_names_the_line_without_numpys_advice(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("0,1,0.5,0.25\n0,1,0.5,0.25\n1,2,0.5\n")
    with pytest.raises(DataError) as err:
        read_classic_csv(str(path))
    text = str(err.value)
    assert "line 3 has 3 values where line 1 has 4" in text and "usecols" not in text
    with pytest.raises(DataError, match=r"line 2, column 3 holds 'x', which is not a number"):
        parse_numeric_csv("1,2,3\n4,5,x\n", "t.csv")


def test_a_ragged_feature_csv_of_a_slide_names_the_line(tmp_path):
    from milzoo_wsi.stores import read_slide, slide_file

    path = tmp_path / "s1.csv"
    path.write_text("f0,f1,f2\n1,2,3\n4,5\n")
    with pytest.raises(DataError) as err:
        read_slide(slide_file(str(path)))
    assert "line 3 has 2 values where line 2 has 3" in str(err.value) and "usecols" not in str(err.value)


def test_a_damaged_pt_feature_file_is_not_answered_with_torchs_advice_to_unpickle_it(tmp_path):
    from milzoo_wsi.stores import read_slide, slide_file

    path = tmp_path / "s1.pt"
    path.write_bytes(b"\x80\x02not a tensor file")
    with pytest.raises(DataError) as err:
        read_slide(slide_file(str(path)))
    assert "slide 's1'" in str(err.value) and "weights_only" not in str(err.value), str(err.value)


def test_a_weights_path_that_is_no_weights_file_is_refused_plainly(tmp_path):
    from milzoo.errors import ComponentError
    from milzoo_vision.encoders import ResNet18Encoder

    bad = tmp_path / "w.pth"
    bad.write_bytes(b"\x80\x02not a state dict")
    with pytest.raises(ComponentError) as err:
        ResNet18Encoder(ResNet18Encoder.Config(weights_path=str(bad)), (3, 32, 32))
    assert "torch.save (tensors only)" in str(err.value) and "weights_only" not in str(err.value)
    if Path("/dev/zero").exists():
        with pytest.raises(DataError, match="is a device, not a regular file"):
            ResNet18Encoder(ResNet18Encoder.Config(weights_path="/dev/zero"), (3, 32, 32))


# =========================================================================== 3. downloads offline


@pytest.fixture
def no_network(monkeypatch):
    """Every connection fails as on a machine without a network."""

    def refuse(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable (blocked by the test)")

    for target, name in ((socket, "getaddrinfo"), (socket, "create_connection"), (socket.socket, "connect"),
                         (socket.socket, "connect_ex")):
        monkeypatch.setattr(target, name, refuse)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """The data directory and the torch hub cache, both empty."""
    import torch

    monkeypatch.setenv("MILZOO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # follow TORCH_HOME even if set_dir was called
    return tmp_path


def _cifar_recipe(root: Path, pretrained: bool = False, download: bool = True) -> dict:
    return {"name": "offline", "seed": 0,
            "data": {"name": "cifar10_bags", "root": str(root), "download": download, "bag_size": 4, "num_key": 1},
            "encoder": {"name": "resnet18", "pretrained": pretrained, "small_input": True},
            "pooling": {"name": "mean"}, "loss": [{"name": "bag_ce"}], "optim": {"name": "adam", "lr": 0.01},
            "train": {"epochs": 1, "batch_size": 2, "progress": False}, "protocol": {"kind": "holdout"}}


def write_fake_cifar10(root: Path) -> Path:
    """The python-version CIFAR-10 layout torchvision extracts, with 4 tiny images per class."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = list(range(10)) * 4
        batch = {"data": rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8), "labels": labels}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    return folder


def test_run_offline_names_the_fetch_command_and_leaves_no_folder(tmp_path, no_network, empty_caches):
    recipe = write_recipe(tmp_path, _cifar_recipe(tmp_path / "cifar"))
    code, out = invoke("run", recipe, "--out", tmp_path / "run")
    assert code == 2, out
    assert "the network cannot be reached" in out and f"`milzoo data fetch cifar10 --root {tmp_path / 'cifar'}`" in out
    assert "Traceback" not in out and not (tmp_path / "run").exists()


def test_a_failed_start_leaves_none_of_the_folders_it_created(tmp_path, empty_caches):
    """``--out runs/a/b`` that fails before writing anything removes ``b``, ``a`` and ``runs`` again, and
    nothing that was there before."""
    recipe = write_recipe(tmp_path, _cifar_recipe(tmp_path / "cifar", download=False))
    code, out = invoke("run", recipe, "--out", tmp_path / "runs" / "a" / "b")
    assert code == 2 and "milzoo data fetch cifar10" in out, out
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs" / "kept").mkdir(parents=True)
    code, out = invoke("run", recipe, "--out", tmp_path / "runs" / "a" / "b")
    assert code == 2 and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["kept"]


def test_run_offline_without_the_imagenet_weights_names_their_fetch(tmp_path, no_network, empty_caches):
    write_fake_cifar10(tmp_path / "cifar")
    recipe = write_recipe(tmp_path, _cifar_recipe(tmp_path / "cifar", pretrained=True))
    code, out = invoke("run", recipe, "--out", tmp_path / "run")
    assert code == 2, out
    assert "`milzoo data fetch resnet18-imagenet`" in out and str(tmp_path / "torch") in out, out
    assert not (tmp_path / "run").exists()


def test_missing_files_without_download_name_the_fetch_command(tmp_path, empty_caches):
    recipe = write_recipe(tmp_path, _cifar_recipe(tmp_path / "cifar", download=False))
    code, out = invoke("run", recipe, "--out", tmp_path / "run")
    assert code == 2 and f"milzoo data fetch cifar10 --root {tmp_path / 'cifar'}" in out, out


def test_a_server_error_is_not_called_offline():
    import urllib.error

    from milzoo.components import download_failed_message, downloading

    refused = urllib.error.URLError(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert "the network cannot be reached" in download_failed_message("X", "x", "/d", refused)
    gone = urllib.error.HTTPError("https://host/x.tar.gz", 404, "Not Found", None, None)
    text = download_failed_message("X", "x", "/d", gone)
    assert "network" not in text and "Try again with `milzoo data fetch x`" in text and "delete the partly" in text
    with pytest.raises(DataError, match="downloading X into /d failed"):
        with downloading("X", "x", "/d"):
            raise RuntimeError("File not found or corrupted.")


def test_data_fetch_offline_exits_2(no_network, empty_caches):
    code, out = invoke("data", "fetch", "cifar10")
    assert code == 2 and "the network cannot be reached" in out and "Traceback" not in out, out
    code, out = invoke("data", "fetch", "cifar")
    assert code == 2 and "did you mean 'cifar10'" in out.lower(), out


def test_data_fetch_recipe_names_what_the_recipe_reads(tmp_path):
    from milzoo.cli.data import recipe_downloads
    from milzoo.recipe import load_recipe

    cifar = load_recipe(_cifar_recipe(tmp_path / "cifar", pretrained=True))
    assert recipe_downloads(cifar) == (["cifar10", "resnet18-imagenet"], tmp_path / "cifar")
    plain = load_recipe(_cifar_recipe(tmp_path / "cifar"), ["data.root=~/x"])
    assert recipe_downloads(plain) == (["cifar10"], Path("~/x").expanduser())
    survival = load_recipe({"name": "s", "data": {"name": "fmnist_survival"}, "encoder": {"name": "cnn2"},
                            "pooling": {"name": "abmil"}})
    assert recipe_downloads(survival) == (["fmnist"], None)
    assert recipe_downloads(load_recipe("quickstart")) == ([], None)


def test_data_fetch_recipe_fetches_into_its_root(tmp_path):
    """What --recipe fetches goes where the recipe reads it: a plugin's encoder that names a download."""
    from milzoo import hookimpl
    from milzoo.builtin.encoders import IdentityEncoder
    from milzoo.components import Download
    from milzoo.testing import registered_plugins

    class Needy(IdentityEncoder):
        name = "needy_identity"

        @classmethod
        def downloads(cls, config):
            return ("toy-files",)

    def fetch(root):
        folder = (root or tmp_path / "default") / "toy"
        folder.mkdir(parents=True)
        (folder / "x.bin").write_bytes(b"1")
        return folder

    class Plugin:
        @hookimpl
        def milzoo_register_encoders(self, register):
            register(Needy)

        @hookimpl
        def milzoo_register_downloads(self, register):
            register(Download("toy-files", "toy files", fetch=fetch, destination=lambda root: root))

    recipe = write_recipe(tmp_path, {"name": "t", "data": {"name": "classic", "dataset": "musk1"},
                                     "encoder": {"name": "needy_identity"}, "pooling": {"name": "mean"}})
    with registered_plugins({"fetchtest": Plugin()}):
        code, out = invoke("data", "fetch", "--recipe", recipe, "--root", tmp_path / "mine")
        assert code == 0 and f"toy-files: ready in {tmp_path / 'mine' / 'toy'}" in out, out
        code, out = invoke("data", "fetch", "--recipe", recipe)
        assert code == 0 and (tmp_path / "default" / "toy" / "x.bin").exists(), out
    code, out = invoke("data", "fetch", "--recipe", "quickstart")
    assert code == 0 and "downloads nothing" in out, out


def test_data_fetch_recipe_offline_and_misuse_exit_2(tmp_path, no_network, empty_caches):
    recipe = write_recipe(tmp_path, _cifar_recipe(tmp_path / "cifar"))
    code, out = invoke("data", "fetch", "--recipe", recipe)
    assert code == 2 and "the network cannot be reached" in out and "Traceback" not in out, out
    assert f"milzoo data fetch cifar10 --root {tmp_path / 'cifar'}" in out
    code, out = invoke("data", "fetch")
    assert code == 2 and "--recipe RECIPE" in out, out
    code, out = invoke("data", "fetch", "cifar10", "--set", "data.seed=1")
    assert code == 2 and "needs --recipe" in out, out
    code, out = invoke("data", "fetch", "--recipe", tmp_path / "missing.toml")
    assert code == 2 and "Traceback" not in out, out


def test_a_hub_model_offline_names_the_pull_that_prepares_it(tmp_path, no_network, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code, out = invoke("pull", "hf-hub:org/x", "--cache-dir", tmp_path / "hub")
    assert code == 2 and "could not be reached" in out and "run `milzoo pull hf-hub:org/x` on one that has it" in out


def test_data_fetch_puts_the_files_where_the_dataset_reads_them(empty_caches, monkeypatch):
    import torchvision

    from milzoo_vision import readers

    calls = []

    class FakeCIFAR10:  # torchvision's downloader, without the network: writes the layout it extracts
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            write_fake_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    code, out = invoke("data", "fetch", "cifar10")
    data_dir = empty_caches / "data"
    assert code == 0 and f"cifar10: ready in {data_dir / 'cifar-10-batches-py'}" in out, out
    assert calls == [(str(data_dir), True)]
    assert readers.load_cifar(None, download=False, which=10).location == str(data_dir / "cifar-10-batches-py")


def test_data_list_names_every_download_and_where_it_goes(empty_caches):
    code, out = invoke("data", "list")
    assert code == 0, out
    for name in ("cifar10", "cifar100", "svhn", "fmnist", "resnet18-imagenet"):
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    assert str(empty_caches / "data") in out and str(empty_caches / "torch" / "hub" / "checkpoints") in out


# =========================================================================== 4. silent meanings, first round


def test_an_override_value_with_a_second_equals_sign_is_refused(tmp_path, classic_csv):
    recipe = write_recipe(tmp_path, _classic_recipe(str(classic_csv)))
    with pytest.raises(RecipeError, match=r"'train.epochs=2=3': the value '2=3' holds a second '='"):
        load_recipe(str(recipe), ["train.epochs=2=3"])
    with pytest.raises(RecipeError, match="holds a second '='"):
        load_recipe(str(recipe), ["name=a=b"])
    assert load_recipe(str(recipe), ['name="a=b"']).root.name == "a=b"
    from milzoo.recipe._toml import apply_overrides

    url = "https://example.org/x.csv?token=abc"  # a URL's query string is not an assignment
    assert apply_overrides({}, [f"data.path={url}"]) == {"data": {"path": url}}


def test_resume_of_an_empty_folder_says_it_is_empty(tmp_path, classic_csv):
    (tmp_path / "empty").mkdir()
    recipe = write_recipe(tmp_path, _classic_recipe(str(classic_csv)))
    code, out = invoke("run", recipe, "--out", tmp_path / "empty", "--resume")
    assert code == 2 and "is empty (no run was started there)" in out and "does not exist" not in out, out


@pytest.mark.parametrize("ref, match", [("hf-hub:org/name@", "names no revision after '@'"),
                                        ("hf-hub:org/name@a@b", "has the revision 'a@b'")])
def test_an_empty_or_garbled_hub_revision_is_refused(ref, match):
    from milzoo.hub import parse_ref

    with pytest.raises(HubError, match=match):
        parse_ref(ref)
    assert parse_ref("hf-hub:org/name@v1") == ("hf-hub", "org/name", "v1")


def test_revision_given_empty_is_refused_before_any_download():
    from milzoo.hub import fetch

    with pytest.raises(HubError, match="revision given for hf-hub:org/name is empty"):
        fetch("hf-hub:org/name", revision="")


@pytest.mark.parametrize("variable, effect", [("MILZOO_LOAD_PLUGINS", "loads"), ("MILZOO_DISABLE_PLUGINS", "disables")])
def test_an_unknown_plugin_name_in_the_environment_is_named(monkeypatch, caplog, variable, effect):
    monkeypatch.delenv("MILZOO_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv(variable, "abmill,milzoo-abmil")
    registry.reset_plugins()
    try:
        with caplog.at_level(logging.WARNING, logger="milzoo"):
            registry.plugin_records()
    finally:
        monkeypatch.delenv(variable)
        registry.reset_plugins()
    assert f"{variable} names 'abmill', which no installed plugin is called, so it {effect} nothing" in caplog.text
    assert "abmil (milzoo-abmil)" in caplog.text and "'milzoo-abmil'" not in caplog.text


# =========================================================================== 5. nothing lost


def test_a_full_disk_ends_the_run_with_the_resume_command(tmp_path, classic_csv, monkeypatch):
    import milzoo.runs._fold as fold_module

    recipe = write_recipe(tmp_path, _classic_recipe(str(classic_csv)))
    out = tmp_path / "run"

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fold_module, "atomic_write_json", full)  # the fold's result.json
    code, text = invoke("run", recipe, "--out", out, "--set", "train.epochs=2")
    assert code == 2 and "the disk is full (No space left on device) while writing" in text, text
    assert f"milzoo run {recipe} --out {out} --resume --set train.epochs=2" in text and "Traceback" not in text
    assert (out / "fold-00" / "state.safetensors").exists()  # the finished epochs are kept
    monkeypatch.undo()
    code, text = invoke("run", recipe, "--out", out, "--resume", "--set", "train.epochs=2")
    assert code == 0, text


def test_overwrite_through_a_symlink_to_a_run_is_refused(tmp_path, classic_csv):
    recipe = write_recipe(tmp_path, _classic_recipe(str(classic_csv)))
    real = tmp_path / "real"
    assert invoke("run", recipe, "--out", real)[0] == 0
    before = {p.relative_to(real): p.read_bytes() for p in real.rglob("*") if p.is_file()}
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    code, out = invoke("run", recipe, "--out", link, "--overwrite")
    assert code == 2 and "is a symbolic link to" in out and f"--out {real} --overwrite" in out, out
    assert {p.relative_to(real): p.read_bytes() for p in real.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("dangling", ["out", "parent"])
def test_a_dangling_symlink_as_out_is_named(tmp_path, classic_csv, dangling):
    recipe = write_recipe(tmp_path, _classic_recipe(str(classic_csv)))
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone", target_is_directory=True)
    out = link if dangling == "out" else link / "run"
    code, text = invoke("run", recipe, "--out", out)
    assert code == 2 and f"{link}" in text and "is a symbolic link to" in text and "which does not exist" in text, text
    assert "Traceback" not in text and not (tmp_path / "gone").exists()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists() or sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("target", ["parent", "every process"])
def test_sigterm_with_jobs_ends_every_worker_like_a_sequential_run(tmp_path, recipe_factory, target):
    recipe = write_recipe(tmp_path, recipe_factory(train={"epochs": 100000}, protocol={"kind": "cv", "folds": 3}))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "milzoo", "run", str(recipe), "--out", str(out), "--no-progress",
                             "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not all((out / f"fold-0{i}" / "state.safetensors").exists() for i in (0, 1)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert len(workers) == 2
        if target == "parent":
            proc.send_signal(signal.SIGTERM)
        else:  # Slurm, or kill -- -PGID
            os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and f"--out {out} --resume" in stderr, stderr
    for fold in (0, 1):
        assert f"terminated (SIGTERM): fold {fold} stopped; its checkpoint after epoch" in stderr, stderr
    assert "fold 2 not started" in stderr
    assert json.loads((out / "run.json").read_text())["outcome"] == "terminated"
    time.sleep(0.2)
    assert not [w for w in workers if _alive(w)]


def test_every_download_a_component_names_is_registered():
    """``Component.downloads`` names entries of ``milzoo data list``: --recipe can fetch each one."""
    from milzoo.registry import get_component, list_components
    from milzoo.registry import _table as registry

    known = {e.name for e in registry.entries("download")}
    named = {}
    for kind in ("dataset", "encoder", "pooling", "augment", "loss", "task"):
        for entry in list_components(kind):
            cls = get_component(kind, entry["qualified"])
            extra = {"pretrained": True} if "pretrained" in cls.Config.model_fields else {}
            try:
                config = cls.Config(**extra)
            except Exception:  # noqa: BLE001 - a component whose options have no defaults
                continue
            for name in cls.downloads(config):
                named[name] = entry["qualified"]
    assert {"fmnist", "cifar10", "cifar100", "svhn", "resnet18-imagenet"} <= set(named)
    assert set(named) <= known, {n: c for n, c in named.items() if n not in known}


def test_a_recipe_lists_every_component_it_names():
    from milzoo.recipe import load_recipe

    r = load_recipe(_cifar_recipe(Path("/nonexistent"), pretrained=True), ["log=[{name = \"csv\"}]"])
    assert [(kind, name) for kind, name, _ in r.component_configs()] == [
        ("dataset", "cifar10_bags"), ("encoder", "resnet18"), ("pooling", "mean"), ("task", "classification"),
        ("loss", "bag_ce"), ("logger", "csv")]
    assert r.component_configs()[1][2].pretrained is True
