"""The built-in experiment loggers: CSV, TensorBoard, MLflow and Weights & Biases (docs/tracking.md).

Each is a :class:`milzoo.components.Logger` registered through ``milzoo_register_loggers`` like a plugin's.  CSV
needs nothing; the others need an optional package (``pip install "milzoo[tensorboard]"``, ``[mlflow]``,
``[wandb]``), checked when the run starts, before anything is written.  Everything a logger writes by default
lands in the run directory.  Metric names carry their fold and split: ``fold-00/val/acc`` in MLflow and W&B; in
TensorBoard one run per fold (``tensorboard/fold-00``) with tags ``val/acc``; the step is the epoch, numbered
from 0 as in ``metrics.jsonl``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from milzoo._atomic import atomic_write_text
from milzoo.components.base import ComponentConfig, Logger
from milzoo.components.output import RunInfo
from milzoo.errors import LoggerError
from milzoo.tracking.support import logger_dir, require, shared_run_id, summary_figures

log = logging.getLogger(__name__)

_CSV_HEADER = ["fold", "epoch", "split", "metric", "value"]


def _fold_key(fold: int) -> str:
    return f"fold-{fold:02d}"


class CSVLogger(Logger):
    """Metrics as a long CSV table (fold, epoch, split, metric, value), with the recipe and the summary beside it."""

    name = "csv"

    class Config(ComponentConfig):
        dir: str = Field(default="csv", description="folder of metrics.csv, hparams.csv and summary.csv (inside "
                         "the run directory unless absolute)")

    def start(self, run: RunInfo) -> None:
        self.folder = logger_dir(self.run_dir, self.config.dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "metrics.csv"
        self._begun: set[int] = set()
        atomic_write_text(self.folder / "hparams.csv",
                          _csv_text([["name", "value"], *([k, v] for k, v in run.flat_hyperparameters().items())]))
        if not self.path.exists():
            self.path.write_text(_csv_text([_CSV_HEADER]), encoding="utf-8")

    def log_metrics(self, fold: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        if fold not in self._begun:  # a resumed fold: its rows from this epoch on are trained again
            self._begun.add(fold)
            self._drop(fold, epoch)
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerows([fold, epoch, split, k, repr(v)] for k, v in metrics.items())

    def finish(self, summary: dict[str, Any] | None, outcome: str) -> None:
        if summary is not None:
            rows = [["name", "value"], *([k, repr(v)] for k, v in summary_figures(summary).items())]
            atomic_write_text(self.folder / "summary.csv", _csv_text(rows))

    def _drop(self, fold: int, epoch: int) -> None:
        """Rewrite metrics.csv without ``fold``'s rows of ``epoch`` and later (only when it has any)."""
        with open(self.path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        kept = [r for r in rows[1:] if len(r) == len(_CSV_HEADER)
                and not (r[0] == str(fold) and r[1].isdigit() and int(r[1]) >= epoch)]
        if len(kept) != len(rows) - 1:
            atomic_write_text(self.path, _csv_text([_CSV_HEADER, *kept]))


def _csv_text(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


class TensorBoardLogger(Logger):
    """TensorBoard event files: one TensorBoard run per fold, the recipe and the final figures in the top one.

    Written with ``torch.utils.tensorboard``; the summary goes in as hyperparameters (the flat recipe) with their
    final figures, which TensorBoard's HParams tab shows."""

    name = "tensorboard"

    class Config(ComponentConfig):
        dir: str = Field(default="tensorboard", description="log directory (inside the run directory unless "
                         "absolute): `tensorboard --logdir` it")
        flush_secs: int = Field(default=30, gt=0, le=3600, description="seconds between writes to disk")

    def __init__(self, config: ComponentConfig, run_dir: Any):
        super().__init__(config, run_dir)
        self._tb = require("torch.utils.tensorboard", "tensorboard", "the tensorboard logger")

    def start(self, run: RunInfo) -> None:
        self.folder = logger_dir(self.run_dir, self.config.dir)
        self._run = run
        self._writers: dict[int, Any] = {}
        self._top = self._tb.SummaryWriter(str(self.folder), flush_secs=self.config.flush_secs)
        import tomli_w

        toml = tomli_w.dumps(run.hyperparameters)
        self._top.add_text("recipe", "\n".join("    " + line for line in toml.splitlines()), 0)

    def log_metrics(self, fold: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        writer = self._writers.get(fold)
        if writer is None:  # first epoch of the fold in this start: hide events an interrupted start left after it
            writer = self._tb.SummaryWriter(str(self.folder / _fold_key(fold)), purge_step=epoch,
                                            flush_secs=self.config.flush_secs)
            self._writers[fold] = writer
        for k, v in metrics.items():
            writer.add_scalar(f"{split}/{k}", v, epoch)

    def finish(self, summary: dict[str, Any] | None, outcome: str) -> None:
        try:
            if summary is not None:
                from torch.utils.tensorboard.summary import hparams

                figures = summary_figures(summary, std=False)
                exp, ssi, sei = hparams(self._run.flat_hyperparameters(), figures)
                for s in (exp, ssi, sei):
                    self._top.file_writer.add_summary(s)
                for k, v in figures.items():
                    self._top.add_scalar(k, v, 0)
        finally:
            for writer in [*self._writers.values(), self._top]:
                writer.close()
            self._writers = {}


#: how a start's outcome reads as an MLflow run status
_MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "terminated": "KILLED"}


class MLflowLogger(Logger):
    """An MLflow run per run directory: the recipe as parameters, metrics per fold, split and epoch, the summary.

    The run is kept across ``--resume`` and shared by ``--fold`` jobs (its id in ``RUN/tracking/mlflow.json``);
    metrics are ``fold-NN/<split>/<metric>`` with the epoch as step, the summary ``summary/...``."""

    name = "mlflow"

    class Config(ComponentConfig):
        tracking_uri: str | None = Field(
            default=None, description="where MLflow keeps runs (a server, sqlite:///..., a folder); default: "
            "$MLFLOW_TRACKING_URI, else the file store RUN/mlruns")
        experiment: str | None = Field(default=None, description="experiment name (default: the recipe's name)")
        run_name: str | None = Field(default=None, description="run name (default: the run directory's name)")
        tags: dict[str, str] = Field(default_factory=dict, description="tags of the MLflow run")

    def __init__(self, config: ComponentConfig, run_dir: Any):
        super().__init__(config, run_dir)
        require("mlflow", "mlflow", "the mlflow logger")

    def tracking_uri(self) -> str:
        uri = self.config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (self.run_dir / "mlruns").resolve().as_uri()
        if "://" not in uri or uri.startswith("file:"):
            # MLflow 3 keeps the file store only on request; choosing a folder is that request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return uri

    def start(self, run: RunInfo) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri())

        def create() -> str:
            name = self.config.experiment or run.name
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found is not None else self.client.create_experiment(name)
            tags = {"milzoo.run_dir": str(Path(run.run_dir).resolve()), **self.config.tags}
            made = self.client.create_run(experiment, run_name=self.config.run_name or Path(run.run_dir).name,
                                          tags=tags)
            return made.info.run_id

        self.run_id = shared_run_id(self.run_dir, "mlflow", create)
        try:
            have = self.client.get_run(self.run_id).data.params
        except Exception as exc:  # noqa: BLE001 - MLflow's own error, said with the fix
            raise LoggerError(f"the MLflow run {self.run_id} kept in {self.run_dir / 'tracking' / 'mlflow.json'} is "
                              f"not in {self.client.tracking_uri} ({exc}); delete that file to start a new MLflow "
                              "run, or set the tracking_uri it was made in.") from None
        self.client.update_run(self.run_id, status="RUNNING")
        params = [Param(k, str(v)[:6000]) for k, v in run.flat_hyperparameters().items() if k not in have]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_metrics(self, fold: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{_fold_key(fold)}/{split}/{k}", v, now, epoch)
                                                    for k, v in metrics.items()])

    def finish(self, summary: dict[str, Any] | None, outcome: str) -> None:
        from mlflow.entities import Metric

        if summary is not None:
            now = int(time.time() * 1000)
            metrics = [Metric(f"summary/{k}", v, now, 0) for k, v in summary_figures(summary).items()]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        self.client.set_terminated(self.run_id, status=_MLFLOW_STATUS.get(outcome, "FAILED"))


class WandbLogger(Logger):
    """A Weights & Biases run per run directory: the recipe as config, metrics per fold, split and epoch, the summary.

    The run's id is kept across ``--resume`` (``RUN/tracking/wandb.json``); metrics are
    ``fold-NN/<split>/<metric>`` against ``fold-NN/epoch``, the summary goes in the run's summary."""

    name = "wandb"

    class Config(ComponentConfig):
        project: str | None = Field(default=None, description="W&B project (default: the recipe's name)")
        entity: str | None = None
        mode: Literal["online", "offline", "disabled"] | None = Field(
            default=None, description="W&B's mode (default: $WANDB_MODE, else online); offline needs no account: "
            "`wandb sync` the run later")
        dir: str = Field(default=".", description="where the wandb/ folder goes (inside the run directory unless "
                         "absolute)")
        group: str | None = None
        tags: list[str] = Field(default_factory=list)

    def __init__(self, config: ComponentConfig, run_dir: Any):
        super().__init__(config, run_dir)
        self._wandb = require("wandb", "wandb", "the wandb logger")

    def start(self, run: RunInfo) -> None:
        wandb = self._wandb
        folder = logger_dir(self.run_dir, self.config.dir)
        folder.mkdir(parents=True, exist_ok=True)
        run_id = shared_run_id(self.run_dir, "wandb", lambda: uuid.uuid4().hex[:12])  # os.urandom: no RNG drawn
        self._folds: set[int] = set()
        self.run = wandb.init(
            project=self.config.project or run.name, entity=self.config.entity, dir=str(folder), id=run_id,
            name=Path(run.run_dir).name, group=self.config.group, tags=self.config.tags or None,
            config=run.hyperparameters, resume="allow", mode=self.config.mode, reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", save_code=False, disable_git=True))

    def log_metrics(self, fold: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        key = _fold_key(fold)
        if fold not in self._folds:
            self._folds.add(fold)
            self.run.define_metric(f"{key}/*", step_metric=f"{key}/epoch")
        self.run.log({f"{key}/epoch": epoch, **{f"{key}/{split}/{k}": v for k, v in metrics.items()}})

    def finish(self, summary: dict[str, Any] | None, outcome: str) -> None:
        if summary is not None:
            self.run.summary.update({f"summary/{k}": v for k, v in summary_figures(summary).items()})
        self.run.finish(exit_code=0 if outcome == "finished" else 1)
