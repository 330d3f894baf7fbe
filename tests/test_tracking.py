"""Experiment loggers (docs/tracking.md): TensorBoard, MLflow, W&B and CSV registered like plugins, files the
tools read back, the same training with loggers or without, resume, --jobs, missing extras, third-party loggers."""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from milzoo import registry
from milzoo.cli import cli
from milzoo.errors import AmbiguousComponentError, MissingExtraError, RecipeError, UnknownComponentError
from milzoo.runs.runner import run
from milzoo.testing import registered_plugins
from milzoo.train.trainer import Trainer


def _records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.glob("fold-*/*/model.safetensors"))}


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's own reader: tag -> [(step, value)] of the event files in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(run_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    run_id = json.loads((run_dir / "tracking" / "mlflow.json").read_text())["id"]
    return client, run_id


@pytest.fixture
def file_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def test_tensorboard_and_mlflow_files_read_back_and_training_is_unchanged(tmp_path, recipe_factory, file_store):
    recipe = recipe_factory(train={"epochs": 3})
    plain = run(recipe, out=tmp_path / "plain")
    logged = run(recipe, out=tmp_path / "logged", loggers=["tensorboard", "mlflow", "csv"])
    out = tmp_path / "logged"
    # reproducible-neutral: the same figures, predictions and weights, bit for bit
    assert _records(out) == _records(tmp_path / "plain")
    assert _weights(out) == _weights(tmp_path / "plain")
    assert logged["last"] == plain["last"]

    records = _records(out)
    for fold in (0, 1):
        tb = _scalars(out / "tensorboard" / f"fold-{fold:02d}")
        for split in ("train", "test"):
            mine = [r for r in records if r["fold"] == fold and r["split"] == split]
            assert [s for s, _ in tb[f"{split}/loss"]] == [0, 1, 2]  # epochs from 0, as in metrics.jsonl
            assert [v for _, v in tb[f"{split}/loss"]] == pytest.approx([r["loss"] for r in mine], rel=1e-6)
        assert [v for _, v in tb["test/acc"]] == pytest.approx(
            [r["acc"] for r in records if r["fold"] == fold and r["split"] == "test"], rel=1e-6)
    top = _scalars(out / "tensorboard")
    assert top["last/test/acc"] == [(0, pytest.approx(logged["last"]["test"]["acc"]["mean"], rel=1e-6))]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert "hparams" in acc.PluginTagToContent("hparams") or acc.PluginTagToContent("hparams")
    assert "recipe/text_summary" in acc.Tags()["tensors"]

    client, run_id = _mlflow(out)
    mlrun = client.get_run(run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.epochs"] == "3" and mlrun.data.params["pooling.name"] == "abmil"
    history = client.get_metric_history(run_id, "fold-01/test/acc")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (r["epoch"], r["acc"]) for r in records if r["fold"] == 1 and r["split"] == "test"]
    assert mlrun.data.metrics["summary/last/test/acc"] == pytest.approx(logged["last"]["test"]["acc"]["mean"])

    with open(out / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    raw = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == sum(len(r) - 3 for r in raw)  # one row per figure of every record (time_s included)
    assert {(int(r["fold"]), int(r["epoch"]), r["split"]) for r in rows} == {
        (r["fold"], r["epoch"], r["split"]) for r in records}
    summary_rows = dict(csv.reader((out / "csv" / "summary.csv").open()))
    assert float(summary_rows["last/test/acc"]) == logged["last"]["test"]["acc"]["mean"]
    hparams = dict(csv.reader((out / "csv" / "hparams.csv").open()))
    assert hparams["optim.lr"] == "0.01" and hparams["encoder.dims"] == "[16]"


def test_resume_logs_each_epoch_once_into_the_same_tracking_runs(tmp_path, recipe_factory, monkeypatch, file_store):
    recipe = recipe_factory(train={"epochs": 4}, log=[{"name": "tensorboard", "flush_secs": 1}, {"name": "csv"}])
    original = Trainer.train_epoch

    def flaky(self, epoch):
        if self.data.fold == 1 and epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "run", loggers=["mlflow"])
    monkeypatch.setattr(Trainer, "train_epoch", original)
    client, run_id = _mlflow(tmp_path / "run")
    assert client.get_run(run_id).info.status == "KILLED"
    # the resume adds no logger of its own (loggers may change between starts) and keeps the MLflow run
    run(recipe, out=tmp_path / "run", resume=True, loggers=["mlflow"])
    out = tmp_path / "run"
    assert json.loads((out / "tracking" / "mlflow.json").read_text())["id"] == run_id
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    tb = _scalars(out / "tensorboard" / "fold-01")
    assert [s for s, _ in tb["test/acc"]] == [0, 1, 2, 3]  # the interrupted start's later events purged
    expected = [r["acc"] for r in _records(out) if r["fold"] == 1 and r["split"] == "test"]
    assert [v for _, v in tb["test/acc"]] == pytest.approx(expected, rel=1e-6)
    with open(out / "csv" / "metrics.csv", newline="") as fh:
        keys = [(r["fold"], r["epoch"], r["split"], r["metric"]) for r in csv.DictReader(fh)]
    assert len(keys) == len(set(keys))  # no epoch twice
    assert {k[:2] for k in keys if k[0] == "1"} == {("1", str(e)) for e in range(4)}


def test_jobs_send_every_fold_to_the_run_level_loggers(tmp_path, recipe_factory):
    recipe = recipe_factory(train={"epochs": 2}, protocol={"folds": 3})
    run(recipe, out=tmp_path / "run", jobs=2, loggers=["csv"])
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="") as fh:
        seen = {(r["fold"], r["epoch"], r["split"]) for r in csv.DictReader(fh)}
    assert seen == {(str(r["fold"]), str(r["epoch"]), r["split"]) for r in _records(tmp_path / "run")}
    assert {f for f, _, _ in seen} == {"0", "1", "2"}
    assert (tmp_path / "run" / "csv" / "summary.csv").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason='wandb is not installed (pip install "milzoo[wandb]"): its offline mode is tested where it is')
def test_wandb_offline_run_holds_the_metrics_and_is_resumed(tmp_path, recipe_factory, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = recipe_factory(train={"epochs": 2}, log=[{"name": "wandb", "mode": "offline", "project": "tests"}])
    plain = run(recipe_factory(train={"epochs": 2}), out=tmp_path / "plain")
    logged = run(recipe, out=tmp_path / "run")
    assert logged["last"] == plain["last"] and _records(tmp_path / "run") == _records(tmp_path / "plain")
    run_id = json.loads((tmp_path / "run" / "tracking" / "wandb.json").read_text())["id"]
    files = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    data = files[0].read_bytes()
    assert b"fold-01/test/acc" in data and b"summary/last/test/acc" in data and b"abmil" in data
    run(recipe, out=tmp_path / "run", resume=True)  # nothing left to train: the same W&B id again
    assert json.loads((tmp_path / "run" / "tracking" / "wandb.json").read_text())["id"] == run_id


def test_a_missing_extra_names_it_before_anything_is_written(tmp_path, recipe_factory, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r'pip install "milzoo\[mlflow\]"'):
        run(recipe_factory(), out=tmp_path / "run", loggers=["mlflow"])
    assert not (tmp_path / "run").exists()
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(recipe_factory(log=[{"name": "mlflow"}])))
    res = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "cli")])
    assert res.exit_code == 2 and 'milzoo[mlflow]' in res.output and "Traceback" not in res.output
    assert not (tmp_path / "cli").exists()


def test_logger_names_and_options_are_checked_like_components(tmp_path, recipe_factory):
    with pytest.raises(UnknownComponentError, match="Did you mean 'tensorboard'"):
        run(recipe_factory(), out=tmp_path / "a", loggers=["tensorbord"])
    with pytest.raises(RecipeError) as info:
        run(recipe_factory(log=[{"name": "tensorboard", "flush_sec": 3}, {"name": "csvv"}]), out=tmp_path / "b")
    text = str(info.value)
    assert "log.0.flush_sec" in text and "did you mean 'flush_secs'" in text and "log.1.name" in text
    res = CliRunner().invoke(cli, ["list", "loggers"])
    assert res.exit_code == 0
    assert {line.split()[1] for line in res.output.splitlines() if line.startswith("logger")} >= {
        "csv", "tensorboard", "mlflow", "wandb"}


_PLUGIN = """
    from milzoo import hookimpl
    from milzoo.components import Logger
    from milzoo.components.base import ComponentConfig

    EVENTS = []


    class Memory(Logger):
        '''Keeps what it is told in memory (a test's third-party logger).'''

        name = "memory"

        class Config(ComponentConfig):
            fail: bool = False

        def start(self, run):
            EVENTS.append(("start", run.name, run.hyperparameters["train"]["epochs"], run.folds))

        def log_metrics(self, fold, epoch, split, metrics):
            if self.config.fail:
                raise ConnectionError("the tracking server went away")
            EVENTS.append(("metrics", fold, epoch, split, metrics))

        def finish(self, summary, outcome):
            EVENTS.append(("finish", summary is not None, outcome))


    class OwnCSV(Memory):
        '''Another distribution's logger named csv.'''

        name = "csv"


    @hookimpl
    def milzoo_register_loggers(register):
        register(Memory)
        register(OwnCSV)
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A fake distribution (dist-info with an entry point, and its module) that registers two loggers."""
    for var in ("MILZOO_LOAD_PLUGINS", "MILZOO_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "site"
    info = root / "milzoo_fake_tracker-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: milzoo-fake-tracker\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[milzoo]\nfake_tracker = milzoo_fake_tracker_mod\n")
    (root / "milzoo_fake_tracker_mod.py").write_text(textwrap.dedent(_PLUGIN))
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    registry.reset_plugins()
    yield lambda: sys.modules["milzoo_fake_tracker_mod"].EVENTS
    sys.path.remove(str(root))
    sys.modules.pop("milzoo_fake_tracker_mod", None)
    importlib.invalidate_caches()
    registry.reset_plugins()


def test_a_plugin_logger_is_told_everything_and_its_failure_stops_only_itself(tmp_path, recipe_factory, plugin,
                                                                               caplog):
    run(recipe_factory(train={"epochs": 2}, log=[{"name": "memory"}]), out=tmp_path / "a")
    events = plugin()
    assert events[0] == ("start", "tiny", 2, [0, 1]) and events[-1] == ("finish", True, "finished")
    metrics = [e for e in events if e[0] == "metrics"]
    assert [(f, e, s) for _, f, e, s, _ in metrics] == [(r["fold"], r["epoch"], r["split"])
                                                        for r in _records(tmp_path / "a")]
    assert math.isclose(metrics[0][4]["loss"], _records(tmp_path / "a")[0]["loss"])
    events.clear()
    summary = run(recipe_factory(train={"epochs": 2}, log=[{"name": "memory", "fail": True}]), out=tmp_path / "b")
    assert summary["num_folds"] == 2 and events[-1] == ("finish", True, "finished")
    assert "the 'memory' logger failed at fold 0, epoch 0 (ConnectionError" in caplog.text
    # a name two distributions register is an error; the qualified form chooses
    with pytest.raises(AmbiguousComponentError, match='"milzoo:csv"'):
        run(recipe_factory(), out=tmp_path / "c", loggers=["csv"])
    assert not (tmp_path / "c").exists()
    run(recipe_factory(train={"epochs": 1}), out=tmp_path / "d", loggers=["milzoo:csv"])
    assert (tmp_path / "d" / "csv" / "metrics.csv").exists()
    res = CliRunner().invoke(cli, ["list", "loggers"])
    assert "milzoo-fake-tracker" in res.output and "conflict" in res.output


def test_the_logger_example_of_docs_plugins_md_runs(tmp_path, recipe_factory):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = doc[doc.index("### Experiment loggers"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]
    module = type(sys)("doc_jsonlines_logger")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)  # noqa: S102 - the project's own doc
    with registered_plugins({"doc-jsonlines": module}):
        run(recipe_factory(train={"epochs": 2}), out=tmp_path / "run", loggers=["jsonlines"])
    lines = [json.loads(line) for line in (tmp_path / "run" / "figures.jsonl").read_text().splitlines()]
    assert lines[0]["start"] == "tiny" and lines[0]["recipe"]["train.epochs"] == 2
    assert lines[-1] == {"outcome": "finished", "complete": True}
    figures = [{k: v for k, v in line.items() if k != "time_s"} for line in lines[1:-1]]
    assert figures == _records(tmp_path / "run")
