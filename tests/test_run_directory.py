"""Run directories: nothing finished is lost, failed starts and interrupted writes are cleaned up, and
unusable --out / flag combinations are clear errors (exit 2) before anything on disk changes."""

from __future__ import annotations

import json
import logging

import pytest
import tomli_w
import torch
from click.testing import CliRunner

from milzoo.cli import add_all_commands, cli
from milzoo.errors import RecipeError, RunDirError, TrainingDiverged, UserError
from milzoo.runs.rundir import holds_results, remove_orphaned_temp_files
from milzoo.runs.runner import run
from milzoo.model.sizing import check_model_size

add_all_commands()


def snapshot(directory):
    """Every file below ``directory`` with its bytes (what a finished run holds)."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def finished(tmp_path, recipe_factory):
    """A finished two-fold run and its snapshot."""
    out = tmp_path / "run"
    run(recipe_factory(train={"epochs": 2}), out=out)
    assert (out / "summary.json").exists()
    return out, snapshot(out)


def _nan_csv(tmp_path, classic_csv):
    lines = classic_csv.read_text().splitlines()
    fields = lines[5].split(",")
    fields[3] = "nan"
    lines[5] = ",".join(fields)
    bad = tmp_path / "nan.csv"
    bad.write_text("\n".join(lines) + "\n")
    return bad


@pytest.mark.parametrize("case", ["missing data file", "NaN features", "more folds than bags", "huge layer"])
def test_overwrite_keeps_the_finished_run_when_the_new_one_cannot_start(tmp_path, recipe_factory, classic_csv,
                                                                         finished, case):
    out, before = finished
    overrides = {
        "missing data file": [f'data.path="{tmp_path / "absent.csv"}"'],
        "NaN features": [f'data.path="{_nan_csv(tmp_path, classic_csv)}"'],
        "more folds than bags": ["protocol.folds=100"],
        "huge layer": ["encoder.dims=[1000000000000]"],
    }[case]
    expected = {"missing data file": "does not exist", "NaN features": "row", "more folds than bags": "folds",
                "huge layer": "parameters"}[case]
    recipe = tmp_path / "r.toml"
    recipe.write_text(tomli_w.dumps(recipe_factory(train={"epochs": 2})))
    with pytest.raises(UserError, match=expected):
        run(recipe, out=out, overrides=overrides, overwrite=True)
    assert snapshot(out) == before  # the old run, byte for byte: not a stub, not half deleted
    code, text = invoke("run", recipe, "--out", out, "--overwrite", *[a for o in overrides for a in ("--set", o)])
    assert code == 2 and text.startswith("error: ") and expected in text, text
    assert snapshot(out) == before


def test_overwrite_replaces_once_the_new_run_is_ready(tmp_path, recipe_factory, finished):
    out, before = finished
    run(recipe_factory(train={"epochs": 1}), out=out, overwrite=True)
    after = snapshot(out)
    assert after["summary.json"] != before["summary.json"]
    assert b"epochs = 1" in after["recipe.toml"]
    assert set(after) == set(before)  # the same layout, every file written by the new run
    assert after["fold-00/state.safetensors"] != before["fold-00/state.safetensors"]


def test_a_failed_start_does_not_block_a_rerun(tmp_path, recipe_factory, caplog):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="first epoch, so no checkpoint was written"):  # not 'epoch -1'
        run(recipe_factory(optim={"name": "adam", "lr": 1e30}), out=out)
    assert (out / "recipe.toml").exists() and not holds_results(out)  # the stub of a start that failed
    caplog.set_level(logging.INFO, logger="milzoo")
    summary = run(recipe_factory(), out=out)  # no --overwrite needed: it held no results
    assert summary["num_folds"] == 2
    assert "an earlier start there failed before writing any result" in caplog.text


def test_a_run_with_results_is_recognised_and_explained(tmp_path, recipe_factory):
    out = tmp_path / "run"
    run(recipe_factory(), out=out, fold=0)  # one fold done, the other never started
    assert holds_results(out)
    with pytest.raises(RunDirError, match="holds results.*--resume.*--overwrite"):
        run(recipe_factory(), out=out)
    assert run(recipe_factory(), out=out, resume=True)["num_folds"] == 2


def test_orphaned_temp_files_are_removed_and_nothing_else(tmp_path, recipe_factory, finished):
    out, before = finished
    orphans = [out / ".summary.json.ab12cd34", out / "fold-00" / ".state.safetensors.x_9k2m1q",
               out / "fold-01" / "last" / ".model.safetensors.00000000", out / "fold-01" / ".result.json.zz99zz99"]
    kept = [out / "notes.txt", out / "fold-00" / ".state.safetensors.bak", out / "fold-00" / ".hidden",
            out / "fold-00" / ".state.safetensors.ab12cd34.keep"]
    for p in orphans + kept:
        p.write_bytes(b"partial")
    run(recipe_factory(train={"epochs": 2}), out=out, resume=True)
    assert not any(p.exists() for p in orphans)
    assert all(p.read_bytes() == b"partial" for p in kept)
    after = snapshot(out)
    for name in ("fold-00/state.safetensors", "fold-01/last/model.safetensors"):
        assert after[name] == before[name]  # the file each temp file was replacing is intact
    assert remove_orphaned_temp_files(tmp_path / "absent") == []


def test_out_that_is_a_file_is_a_clear_error(tmp_path, recipe_factory):
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(recipe_factory()))
    afile = tmp_path / "results.csv"
    afile.write_text("precious\n")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        run(path, out=afile)
    with pytest.raises(RunDirError, match="cannot be created: .*results.csv is a file"):
        run(path, out=afile / "sub")
    code, text = invoke("run", path, "--out", afile)
    assert code == 2 and text.startswith("error: ") and "is a file" in text
    assert afile.read_text() == "precious\n"


def test_resume_with_overwrite_is_a_clear_error(tmp_path, recipe_factory, finished):
    out, before = finished
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(recipe_factory(train={"epochs": 2})))
    with pytest.raises(RunDirError, match="contradict"):
        run(path, out=out, resume=True, overwrite=True)
    code, text = invoke("run", path, "--out", out, "--resume", "--overwrite")
    assert code == 2 and "--resume and --overwrite contradict" in text
    assert snapshot(out) == before
    code, _ = invoke("run", path, "--out", tmp_path / "new", "--resume", "--overwrite")
    assert code == 2 and not (tmp_path / "new").exists()


@pytest.mark.parametrize("override, match", [
    ("encoder.dims=[1000000000000]", "parameters .* more than this machine"),
    ("train.epochs=100000000000000000000000", "outside the 64-bit range"),
    ("train..epochs=3", "empty part"),
    ("encoder.dims=[8,", "not valid TOML"),
])
def test_absurd_recipes_fail_before_anything_is_created(tmp_path, recipe_factory, monkeypatch, override, match):
    def started(*args, **kwargs):  # a regression must fail here, not train 10**23 epochs
        raise AssertionError(f"training started with {override}")

    monkeypatch.setattr("milzoo.runs.runner.train_fold", started)
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(recipe_factory()))
    out = tmp_path / "run"
    with pytest.raises((RecipeError, UserError), match=match):
        run(path, out=out, overrides=[override])
    code, text = invoke("run", path, "--out", out, "--set", override)
    assert code == 2 and text.startswith("error: ") and "Traceback" not in text, text
    assert not out.exists()


def test_model_size_is_checked_on_the_meta_device():
    def build():
        return torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Linear(1000, 10))

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_model_size(build, "test", memory_bytes=2**30)  # 1M parameters, 16 MB with training copies: fits
    assert torch.equal(torch.rand(3), expected)  # building on meta drew nothing from the caller's RNG
    with pytest.raises(UserError, match=r"1,011,010 parameters .* 0\.[0-9] GiB of memory.* 0\.weight \[1000, 1000\]"):
        check_model_size(build, "test", memory_bytes=10 * 2**20)

    def overflowing():
        return torch.nn.Linear(2**62, 2**62)

    with pytest.raises(UserError, match="too large|more than this machine"):
        check_model_size(overflowing, "test", memory_bytes=2**30)


@pytest.mark.parametrize("damage", ["{broken", "[1, 2]"])
def test_a_damaged_fold_result_is_explained_and_recoverable(tmp_path, recipe_factory, finished, damage):
    out, before = finished
    (out / "fold-00" / "result.json").write_text(damage)
    with pytest.raises(RunDirError, match="fold-00/result.json .*Delete it and continue the run with --resume"):
        run(recipe_factory(train={"epochs": 2}), out=out, resume=True)
    code, text = invoke("summarize", out)
    assert code == 2 and text.startswith("error: ") and "result.json" in text
    (out / "fold-00" / "result.json").unlink()
    summary = run(recipe_factory(train={"epochs": 2}), out=out, resume=True)  # evaluated again, not retrained
    assert (out / "fold-00" / "result.json").read_bytes() != damage.encode()
    assert summary["num_folds"] == 2 and snapshot(out)["fold-00/state.safetensors"] == before["fold-00/state.safetensors"]


def test_a_damaged_run_json_does_not_stop_a_resume(tmp_path, recipe_factory, finished, caplog):
    out, _ = finished
    (out / "run.json").write_text("[1,")
    assert run(recipe_factory(train={"epochs": 2}), out=out, resume=True)["num_folds"] == 2
    assert "a new one is written" in caplog.text
    assert len(json.loads((out / "run.json").read_text())["history"]) == 1


@pytest.mark.parametrize("text", ["bag_id,label,p_0,p_1\nb1,1,0.5\nb2,0,0.5,0.5\n", "bag_id,label,p_0,p_1\nb1,x,0.5,0.5\n",
                                  "bag_id,label,p_0,p_1\nb1,1,nan,0.5\n", "bag_id,label,p_0,p_1\n"])
def test_a_damaged_predictions_file_of_an_ensemble_is_explained(tmp_path, text):
    from milzoo.checkpoint.predictions import read_predictions as _read_predictions  # what summarize() votes with for protocol.kind = cv_ensemble

    path = tmp_path / "predictions-test.csv"
    path.write_text(text)
    with pytest.raises(RunDirError, match="predictions-test.csv is damaged .*--resume"):
        _read_predictions(path)
    path.write_text("bag_id,label,p_0,p_1\nb1,1,0.25,0.75\n")
    ids, y, probs = _read_predictions(path)
    assert ids == ["b1"] and y.tolist() == [1] and probs.tolist() == [[0.25, 0.75]]
