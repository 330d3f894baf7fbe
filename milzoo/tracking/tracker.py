"""The run's experiment loggers as one: built from the recipe's ``[[log]]`` tables and ``--log`` names, told the
run's start, each epoch's records and its end.

One :class:`Tracker` per start of a run, in the process that writes the run directory (rank 0 under torchrun;
the parent of ``--jobs`` workers, which forward their epochs to it), so every logger is run-level: it sees the
epochs of every fold, tagged with the fold.  Loggers are built before the run directory changes, so a missing
optional package stops the run before anything is written.  A logger that fails while the run trains is
stopped with a warning; the training goes on, and the metrics it computes are the same with loggers or without.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from milzoo.components.base import Logger
from milzoo.components.output import RunInfo
from milzoo.errors import LoggerError, UnknownComponentError, UserError
from milzoo.registry import _table as registry
from milzoo.tracking.support import numeric_metrics
from milzoo.train.progress import RunObserver

log = logging.getLogger(__name__)


class Tracker(RunObserver):
    """Fans a run's events out to its loggers (:class:`milzoo.components.Logger`)."""

    def __init__(self, loggers: Iterable[Logger]):
        self.loggers = list(loggers)
        self._stopped: set[int] = set()
        self._started: list[Logger] = []

    def __bool__(self) -> bool:
        return bool(self.loggers)

    @property
    def names(self) -> list[str]:
        return [lg.name for lg in self.loggers]

    def start(self, run: RunInfo) -> None:
        """Tell every logger that a start of the run begins; one that cannot start stops the run (nothing has
        trained yet), naming the logger."""
        for lg in self.loggers:
            try:
                lg.start(run)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - a plugin's or a tracking service's error, said in words
                raise LoggerError(f"the {lg.name!r} logger could not start: {type(exc).__name__}: {exc}. Fix what it "
                                  "names (its options are its [[log]] table), or run without it.") from exc
            self._started.append(lg)

    def epoch_done(self, fold: int, epoch: int, records: list[dict[str, Any]]) -> None:
        for lg in self._started:
            if id(lg) in self._stopped:
                continue
            for record in records:
                metrics = numeric_metrics(record)
                if not metrics:
                    continue
                try:
                    lg.log_metrics(fold, epoch, str(record.get("split", "")), metrics)
                except Exception as exc:  # noqa: BLE001 - never let a logger stop the training
                    self._stopped.add(id(lg))
                    log.warning("the %r logger failed at fold %d, epoch %d (%s: %s); it logs nothing more of this "
                                "start, and the training goes on", lg.name, fold, epoch, type(exc).__name__, exc)
                    break

    def finish(self, summary: dict[str, Any] | None, outcome: str) -> None:
        """Tell every started logger how the start ended (with the summary once the run is complete)."""
        for lg in self._started:
            try:
                lg.finish(summary, outcome)
            except Exception as exc:  # noqa: BLE001 - the run's own outcome stands
                log.warning("the %r logger failed to finish (%s: %s)", lg.name, type(exc).__name__, exc)
        self._started = []


def build_tracker(recipe: Any, run_dir: Path, names: Iterable[str] = ()) -> Tracker:
    """The loggers of the recipe's ``[[log]]`` tables, then those ``names`` (``--log``) add with their default
    options (a logger the recipe already has is not added twice).  Nothing is written here."""
    loggers: list[Logger] = []
    chosen: set[type] = set()
    for table, config in zip(recipe.root.log, recipe.components.get("log", [])):
        cls = registry.get_component("logger", table.name)
        loggers.append(cls(config, run_dir))
        chosen.add(cls)
    for name in names:
        try:
            cls = registry.get_component("logger", name)
        except UnknownComponentError as exc:
            raise type(exc)(f"--log {name}: {exc}") from None
        if cls in chosen:
            continue
        try:
            config = cls.Config()
        except ValidationError as exc:
            needed = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors(include_url=False))
            raise UserError(f"--log {name}: the {cls.name!r} logger needs options ({needed}); give it as a [[log]] "
                            f"table in the recipe instead: [[log]] name = \"{cls.name}\" with those keys.") from None
        loggers.append(cls(config, run_dir))
        chosen.add(cls)
    if loggers:
        log.info("experiment loggers: %s", ", ".join(lg.name for lg in loggers))
    return Tracker(loggers)
