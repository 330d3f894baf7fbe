"""``milzoo run --jobs N``: folds in worker processes give exactly the sequential run's results."""

from __future__ import annotations

import json

import pytest
import tomli_w
from click.testing import CliRunner

from milzoo.cli import add_all_commands, cli
from milzoo.errors import DataError, UserError
from milzoo.runs.runner import run

add_all_commands()

PROTOCOL = {"kind": "cv", "folds": 2, "repeats": 2, "standardize": True}  # 4 folds: 2 folds x 2 repeats


def _strip_times(summary: dict) -> dict:
    summary = json.loads(json.dumps(summary))
    for r in summary["folds"]:
        r.pop("time_s")
    return summary


def _records(run_dir):
    """metrics.jsonl's lines without their wall times, sorted (workers interleave their folds' lines)."""
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sorted(json.dumps({k: v for k, v in r.items() if k != "time_s"}, sort_keys=True) for r in recs)


def test_jobs_equal_the_sequential_run(tmp_path, recipe_factory):
    recipe = recipe_factory(protocol=PROTOCOL, pooling={"name": "abmil", "attn_hidden": 8, "dropout": 0.3})
    seq = run(recipe, out=tmp_path / "seq")
    par = run(recipe, out=tmp_path / "par", jobs=2)
    assert par["num_folds"] == 4
    assert _strip_times(par) == _strip_times(seq)
    assert json.loads((tmp_path / "par" / "summary.json").read_text())["num_folds"] == 4
    assert _records(tmp_path / "par") == _records(tmp_path / "seq")  # the same lines, in another order
    for f in range(4):
        for name in ("last/model.safetensors", "last/predictions-test.csv"):
            a = (tmp_path / "seq" / f"fold-{f:02d}" / name).read_bytes()
            assert (tmp_path / "par" / f"fold-{f:02d}" / name).read_bytes() == a, (f, name)
    assert "2 worker processes" in (tmp_path / "par" / "log.txt").read_text()


def test_jobs_resume_skips_finished_folds(tmp_path, recipe_factory):
    recipe = recipe_factory(protocol=PROTOCOL)
    out = tmp_path / "run"
    run(recipe, out=out, fold=0)
    run(recipe, out=out, fold=2)
    done = {f: (out / f"fold-{f:02d}" / "result.json").read_text() for f in (0, 2)}
    summary = run(recipe, out=out, resume=True, jobs=3)
    assert summary["num_folds"] == 4
    assert all((out / f"fold-{f:02d}" / "result.json").read_text() == text for f, text in done.items())
    assert _strip_times(summary) == _strip_times(run(recipe, out=tmp_path / "seq"))


def test_a_user_error_in_a_worker_is_one_clear_error_and_keeps_finished_folds(tmp_path, recipe_factory,
                                                                             monkeypatch):
    from milzoo.train import trainer

    fit = trainer.Trainer.fit

    def failing_fit(self, progress=True):
        if self.data.fold == 1:
            raise DataError("bag 7 of fold 1 is unreadable; fix the file")
        return fit(self, progress)

    monkeypatch.setattr(trainer.Trainer, "fit", failing_fit)  # forked workers inherit the patch
    out = tmp_path / "run"
    with pytest.raises(UserError, match="fold 1: bag 7 of fold 1 is unreadable"):
        run(recipe_factory(protocol=PROTOCOL), out=out, jobs=2)
    finished = [f for f in range(4) if (out / f"fold-{f:02d}" / "result.json").exists()]
    assert finished == [0, 2, 3]
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("args,match", [
    (["--jobs", "0"], "--jobs 0 is not a number"),
    (["--jobs", "2", "--fold", "0"], "--fold runs a single fold"),
])
def test_bad_jobs_options_exit_2(tmp_path, recipe_factory, args, match):
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(recipe_factory()))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert match in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cli_jobs_runs(tmp_path, recipe_factory):
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(recipe_factory()))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run"), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "summary.json").exists() and "tiny (cv, 2 fold(s))" in result.output
