"""Nothing is lost, nothing escapes the run folder: --overwrite never deletes another run, recipe names never
steer the default folder out of runs/, one start at a time per run directory (per fold for --fold jobs), and
SIGTERM ends a run like Ctrl-C (exit 143, "terminated", a resume hint)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tomli_w
from click.testing import CliRunner

from milzoo.cli import add_all_commands, cli
from milzoo.errors import RunDirError
from milzoo.runs.rundir import RunLock, folder_name, printable
from milzoo.runs.runner import run

add_all_commands()


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def write(tmp_path, recipe, name="r.toml"):
    path = tmp_path / name
    path.write_text(tomli_w.dumps(recipe))
    return path


def snapshot(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. --overwrite never deletes a run


def test_overwrite_refuses_to_delete_a_run_inside(tmp_path, recipe_factory):
    recipe = write(tmp_path, recipe_factory(train={"epochs": 1}))
    outer, inner = tmp_path / "A", tmp_path / "A" / "B"
    assert invoke("run", recipe, "--out", outer)[0] == 0
    assert invoke("run", recipe, "--out", inner)[0] == 0
    before = snapshot(inner)
    code, text = invoke("run", recipe, "--out", outer, "--overwrite")
    assert code == 2 and text.startswith("error: "), text
    assert str(inner) in text and "another --out" in text, text
    assert snapshot(inner) == before


def test_a_failed_start_is_not_replaced_over_a_run_inside(tmp_path, recipe_factory):
    """The quiet replacement of a start that wrote no result must not delete a run kept inside it either."""
    recipe = write(tmp_path, recipe_factory(train={"epochs": 1}))
    outer = tmp_path / "A"
    outer.mkdir()
    (outer / "recipe.toml").write_text(recipe.read_text())  # a start that failed before any result
    assert invoke("run", recipe, "--out", outer / "B")[0] == 0
    code, text = invoke("run", recipe, "--out", outer)
    assert code == 2 and "B" in text
    assert (outer / "B" / "summary.json").exists()


def test_default_folders_of_nested_names_do_not_nest(tmp_path, recipe_factory, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = write(tmp_path, recipe_factory(name="exp", train={"epochs": 1}), "exp.toml")
    ablation = write(tmp_path, recipe_factory(name="exp/ablation", train={"epochs": 1}), "abl.toml")
    assert invoke("run", exp)[0] == 0
    assert invoke("run", ablation)[0] == 0
    assert (tmp_path / "runs" / "exp_ablation" / "summary.json").exists()
    assert not (tmp_path / "runs" / "exp" / "ablation").exists()
    before = snapshot(tmp_path / "runs" / "exp_ablation")
    assert invoke("run", exp, "--overwrite")[0] == 0
    assert snapshot(tmp_path / "runs" / "exp_ablation") == before


@pytest.mark.parametrize("name", [".", "..", "", "/", "..."])
def test_a_name_that_cannot_be_a_folder_is_refused(tmp_path, recipe_factory, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "other").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "keep.txt").write_text("x")
    recipe = write(tmp_path, recipe_factory(name=name, train={"epochs": 1}))
    if name == "/":
        assert folder_name(name) == "_"
        return
    code, text = invoke("run", recipe, "--overwrite")
    assert code == 2 and text.startswith("error: ") and "recipe name" in text and "--out" in text, text
    assert (tmp_path / "runs" / "other" / "keep.txt").exists()


# ----------------------------------------------------------------------------- 2. names never escape runs/


@pytest.mark.parametrize("name,folder", [
    ("../../x", ".._.._x"), ("/abs", "_abs"), ("a\x00b", "a_b"), ("x" * 300, "x" * 100),
    ("\x1b[31mred\x1b[0m", "__31mred__0m"), ("evil\u202etxt.exe", "evil_txt.exe"), ("two\nlines", "two_lines"),
    ("é" * 200, "_" * 100),
])
def test_default_folder_stays_in_runs(tmp_path, recipe_factory, monkeypatch, name, folder):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    recipe = write(tmp_path, recipe_factory(name=name, train={"epochs": 1}))
    code, text = invoke("run", recipe)
    assert code == 0, text
    assert [p.name for p in (work / "runs").iterdir()] == [folder]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "r.toml", "toy.csv"]  # nothing outside
    assert "\x1b" not in text and "\u202e" not in text and "\x00" not in text
    first = text.splitlines()[0]
    assert first.startswith(printable(name)) and "\n" not in printable(name)


def test_printable_escapes_terminal_controls():
    assert printable("a\x1b[31mb") == "a\\x1b[31mb"
    assert printable("x\u202ey") == "x\\u202ey"
    assert printable("l1\nl2\x00") == "l1\\nl2\\x00"
    assert printable("ünïcode ok") == "ünïcode ok"


# ----------------------------------------------------------------------------- 3. one start per run directory


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_start_is_refused_while_the_first_holds_the_lock(tmp_path, recipe_factory):
    recipe = write(tmp_path, recipe_factory(train={"epochs": 1}))
    out = tmp_path / "conc"
    assert invoke("run", recipe, "--out", out)[0] == 0
    before = snapshot(out)
    with RunLock.acquire(out):  # the first start, still running
        code, text = invoke("run", recipe, "--out", out, "--resume")
        assert code == 2 and text.startswith("error: "), text
        assert f"pid {os.getpid()}" in text and socket.gethostname() in text and "in use" in text
        code, text = invoke("run", recipe, "--out", out, "--overwrite")
        assert code == 2 and "in use" in text
    assert snapshot(out) == before
    assert not (out / ".lock").exists()
    assert invoke("run", recipe, "--out", out, "--resume")[0] == 0  # released: the next start may go
    assert not (out / ".lock").exists()


def test_two_processes_on_one_run_directory(tmp_path, recipe_factory):
    recipe = write(tmp_path, recipe_factory(train={"epochs": 400}, data={"name": "classic",
                                                                        "path": recipe_factory()["data"]["path"]}))
    out = tmp_path / "conc"
    cmd = [sys.executable, "-m", "milzoo", "run", str(recipe), "--out", str(out), "--no-progress"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(cmd[:-1] + ["--resume"], capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.communicate()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, recipe_factory):
    recipe = write(tmp_path, recipe_factory(train={"epochs": 1}))
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "x"}))
    code, text = invoke("run", recipe, "--out", out)
    assert code == 0, text
    assert "taking over the lock" in text
    assert not (out / ".lock").exists() and (out / "summary.json").exists()


def test_a_lock_of_another_host_is_respected(tmp_path, recipe_factory):
    recipe = write(tmp_path, recipe_factory(train={"epochs": 1}))
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": "gpu-node-17", "started": "x"}))
    code, text = invoke("run", recipe, "--out", out)
    assert code == 2 and "gpu-node-17" in text and str(out / ".lock") in text, text
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_fold_jobs_lock_per_fold(tmp_path, recipe_factory):
    recipe = write(tmp_path, recipe_factory(train={"epochs": 1}))
    out = tmp_path / "run"
    with RunLock.acquire(out, fold=0):  # the job of fold 0 is running
        code, text = invoke("run", recipe, "--out", out, "--fold", "1")
        assert code == 0, text  # another fold goes on in parallel
        code, text = invoke("run", recipe, "--out", out, "--fold", "0")
        assert code == 2 and "fold-00" in text, text
        code, text = invoke("run", recipe, "--out", out, "--resume")
        assert code == 2 and "per-fold job" in text, text
    with RunLock.acquire(out):  # a whole run excludes every fold job
        code, text = invoke("run", recipe, "--out", out, "--fold", "0")
        assert code == 2 and "in use by a run" in text, text
    code, text = invoke("run", recipe, "--out", out, "--fold", "0")
    assert code == 0 and (out / "summary.json").exists(), text


def test_a_lock_in_a_new_folder_is_not_a_foreign_folder(tmp_path, recipe_factory):
    """The lock file a start creates in a new --out must not make that folder look like someone else's."""
    with pytest.raises(RunDirError, match="in use"):
        with RunLock.acquire(tmp_path / "new"):
            run(recipe_factory(train={"epochs": 1}), out=tmp_path / "new")
    assert not (tmp_path / "new").exists()  # a failed start in a folder it created leaves nothing
    summary = run(recipe_factory(train={"epochs": 1}), out=tmp_path / "new2")
    assert summary["num_folds"] == 2 and not (tmp_path / "new2" / ".lock").exists()


# ----------------------------------------------------------------------------- 4. SIGTERM


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, recipe_factory):
    recipe = write(tmp_path, recipe_factory(train={"epochs": 100000}))
    out = tmp_path / "slow"
    proc = subprocess.Popen([sys.executable, "-m", "milzoo", "run", str(recipe), "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "fold-00" / "state.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "fold-00" / "state.safetensors").exists()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "terminated" in stderr and f"--out {out} --resume" in stderr and str(recipe) in stderr, stderr
    info = json.loads((out / "run.json").read_text())
    assert info["outcome"] == "terminated" and info["history"][-1]["outcome"] == "terminated"
    assert (out / "fold-00" / "state.safetensors").exists()
    assert not (out / ".lock").exists()
