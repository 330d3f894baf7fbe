"""The command line: happy paths, exit code 2 and one-paragraph errors for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys

import tomli_w
from click.testing import CliRunner

from milzoo.cli import add_all_commands, cli

add_all_commands()


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def write_recipe(tmp_path, recipe, name="r.toml"):
    p = tmp_path / name
    p.write_text(tomli_w.dumps(recipe))
    return p


def test_run_validate_list_plugins(tmp_path, recipe_factory):
    path = write_recipe(tmp_path, recipe_factory())
    code, out = invoke("validate", str(path))
    assert code == 0 and "ok:" in out and "pooling=abmil" in out
    code, out = invoke("run", str(path), "--out", str(tmp_path / "run"), "--set", "train.epochs=2", "--no-progress")
    assert code == 0, out
    assert "tiny (cv, 2 fold(s))" in out and "acc" in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["num_folds"] == 2
    code, out = invoke("list", "pooling", "--json")
    names = {c["name"] for c in json.loads(out)}
    assert {"mean", "max", "abmil"} <= names
    code, out = invoke("plugins", "--json")
    recs = {r["name"]: r for r in json.loads(out)}
    assert recs["milzoo.builtin"]["status"] == "ok" and recs["abmil"]["distribution"] == "milzoo-abmil"


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "milzoo", *args], capture_output=True, text=True, cwd=cwd)


def test_user_errors_exit_2_without_traceback(tmp_path, recipe_factory):
    bad = write_recipe(tmp_path, recipe_factory(pooling={"name": "abmill"}))
    missing_data = write_recipe(tmp_path, recipe_factory(data={"name": "classic", "path": str(tmp_path / "no.csv")}),
                                "m.toml")
    cases = [
        (("validate", str(bad)), "Did you mean 'abmil'"),
        (("run", str(tmp_path / "absent.toml")), "file not found"),
        (("run", str(missing_data), "--out", str(tmp_path / "x")), "does not exist"),
        (("run", str(bad), "--set", "train.epochs"), "key.path=value"),
        (("list", "widgets"), "unknown component kind"),
    ]
    for args, expected in cases:
        proc = _run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and expected in proc.stderr, (args, proc.stderr)
        assert proc.stderr.startswith("error: ")


def test_existing_run_dir_is_protected(tmp_path, recipe_factory):
    path = write_recipe(tmp_path, recipe_factory(train={"epochs": 1}))
    out = tmp_path / "run"
    assert invoke("run", str(path), "--out", str(out))[0] == 0
    code, text = invoke("run", str(path), "--out", str(out))
    assert code == 2 and "--resume" in text and "--overwrite" in text
    code, text = invoke("run", str(path), "--out", str(out), "--resume")
    assert code == 0  # a finished run resumes to the same summary


def test_summarize_command(tmp_path, recipe_factory):
    path = write_recipe(tmp_path, recipe_factory(train={"epochs": 1}))
    out = tmp_path / "run"
    assert invoke("run", str(path), "--out", str(out), "--fold", "0")[0] == 0
    code, text = invoke("summarize", str(out))
    assert code == 2 and "missing the results of folds [1]" in text
    assert invoke("run", str(path), "--out", str(out), "--fold", "1")[0] == 0
    code, text = invoke("summarize", str(out))
    assert code == 0 and "last epoch" in text
