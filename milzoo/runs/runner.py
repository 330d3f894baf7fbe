"""``run``: a recipe run into its run directory, from the recipe to the summary, resumable.

The steps, in order: load the recipe; check the run directory (nothing changes on disk yet); build the data
and the folds; check that the model fits in memory; build the experiment loggers (:mod:`milzoo.tracking`);
create, continue or replace the directory; then, with the run's log, its record in ``run.json`` and its loggers,
train the folds not yet complete (in this process, or in worker processes with ``jobs``), showing the run's
progress (:mod:`milzoo.train.progress`), and summarise.  The directory's layout and files are
:mod:`milzoo.runs.rundir`'s, training one fold is :mod:`milzoo.runs._fold`'s, and the summary
:mod:`milzoo.runs.summary`'s.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from pathlib import Path
from typing import Any

import torch

from milzoo.components.output import RunInfo
from milzoo.datasets.protocols import FoldData, dataset_info, folds_for
from milzoo.errors import RunDirError, TrainingDiverged, UserError
from milzoo.model.build import build_model
from milzoo.model.sizing import check_model_size
from milzoo.recipe import Recipe, load_recipe
from milzoo.registry import from_run_dir, recorded_providers
from milzoo.runs._fold import last_recorded_epoch, train_fold
from milzoo.runs.jobs import DISK_FULL, check_jobs, train_folds_parallel
from milzoo.runs.rundir import (
    METRICS,
    RECIPE,
    MetricsWriter,
    RunLock,
    RunRecord,
    check_run_dir,
    default_run_dir,
    fold_dir,
    fold_is_complete,
    log_to_file,
    prepare_run_dir,
    remove_orphaned_temp_files,
    stop_log_to_file,
    trim_metrics,
)
from milzoo.runs.summary import summarize
from milzoo.tracking.tracker import Tracker, build_tracker
from milzoo.train.progress import Observers, RunProgress

log = logging.getLogger(__name__)


def run(
    recipe: Recipe | str | Path | dict,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    fold: int | None = None,
    progress: bool | None = None,
    distributed=None,
    jobs: int | None = None,
    loggers: list[str] | None = None,
) -> dict[str, Any]:
    """Run a recipe; return the summary (also written to ``RUN/summary.json``).

    ``fold``: train only that fold (per-fold jobs writing one run directory); the summary comes once every
    fold is complete, until then ``{"fold", "complete": False, "run_dir"}``.  ``jobs``: train the folds in
    that many worker processes (:mod:`milzoo.runs.jobs`), each with ``train.threads`` torch threads (1 when
    unset); the results equal a sequential run's.  ``distributed``: the torchrun ranks' context.  ``loggers``:
    experiment loggers to add to the recipe's ``[[log]]`` tables, by name (``["tensorboard"]``: docs/tracking.md).
    """
    jobs = check_jobs(jobs, fold, distributed)
    recipe = _load(recipe, overrides, out if resume else None)
    run_dir = Path(out) if out is not None else default_run_dir(recipe)
    is_main = distributed is None or distributed.rank == 0
    # Nothing on disk changes until the data has loaded and the model is known to fit: a missing data
    # file, NaN features or too many folds must not cost the finished run that --overwrite would replace.
    if is_main:
        check_run_dir(recipe, run_dir, resume, overwrite, fold)
    # one start at a time per run directory (per fold for --fold jobs): a second one is refused, naming the first
    try:
        lock = RunLock.acquire(run_dir, fold) if is_main else contextlib.nullcontext()
        with lock:
            return _run_locked(recipe, run_dir, resume, overwrite, fold, progress, distributed, jobs, is_main,
                               loggers or [])
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the command line names the run to --resume
        exc.run_dir = run_dir
        exc.fold = fold
        raise
    except OSError as exc:  # a full disk: one paragraph and the command that continues, not a traceback
        if exc.errno not in DISK_FULL:
            raise
        raise RunDirError(_disk_full_message(exc, recipe, run_dir, overrides, fold)) from None


def _run_locked(recipe: Recipe, run_dir: Path, resume: bool, overwrite: bool, fold: int | None,
                progress: bool | None, distributed, jobs: int, is_main: bool, loggers: list[str]) -> dict[str, Any]:
    _set_threads(recipe, jobs)
    folds = folds_for(recipe)
    todo = _selected(folds, fold)
    first = todo[0].train
    check_model_size(lambda: build_model(recipe, first.instance_shape, first.num_classes, first.class_names),
                     f"recipe {recipe.source}")
    # a missing optional package of a logger stops the run here, before the run directory changes
    tracker = build_tracker(recipe, run_dir, loggers) if is_main else Tracker([])
    _prepare(recipe, run_dir, resume, overwrite, fold, distributed)
    handler = log_to_file(run_dir) if is_main else None
    try:
        if is_main:  # temp files of writes a kill interrupted (only our folds': others may be writing)
            _remove_interrupted_writes(run_dir, todo, whole_run=fold is None)
        record = RunRecord.start(run_dir, recipe, resume, fold, dataset_info(folds)) if is_main else None
        with record if is_main else contextlib.nullcontext():
            if is_main:
                _drop_records_to_retrain(run_dir, fold)
            show = recipe.root.train.progress if progress is None else progress
            info = RunInfo(name=recipe.root.name, run_dir=run_dir, hyperparameters=recipe.to_dict(),
                           num_folds=len(folds), epochs=recipe.root.train.epochs, folds=[d.fold for d in todo],
                           resume=resume, fold=fold)
            with _tracked(tracker, info) as ended:
                _train(recipe, run_dir, todo, show, jobs, distributed, is_main, tracker, len(folds))
                if fold is not None and not all(fold_is_complete(run_dir, data.fold) for data in folds):
                    return {"fold": fold, "complete": False, "run_dir": str(run_dir)}
                ended["summary"] = summarize(run_dir, write=is_main)
                return ended["summary"]
    finally:
        if handler is not None:
            stop_log_to_file(handler)


@contextlib.contextmanager
def _tracked(tracker: Tracker, info: RunInfo):
    """Start the run's loggers; when the block ends, tell them how (with the summary it leaves in ``ended``)."""
    ended: dict[str, Any] = {"summary": None}
    if not tracker:
        yield ended
        return
    tracker.start(info)
    try:
        yield ended
    except BaseException as exc:
        tracker.finish(None, _outcome(exc))
        raise
    tracker.finish(ended["summary"], "finished")


def _outcome(exc: BaseException) -> str:
    """How a start that raised ``exc`` ended, in the words of ``run.json``."""
    from milzoo.runs.rundir import Terminated

    if isinstance(exc, TrainingDiverged):
        return "diverged"
    if isinstance(exc, Terminated):
        return "terminated"
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def _load(recipe: Recipe | str | Path | dict, overrides: list[str] | None, resumed: str | Path | None) -> Recipe:
    """The validated recipe.  ``resumed``: the run directory of a ``--resume``, whose plugins it recorded are
    named when a component of the recipe is no longer installed."""
    if isinstance(recipe, Recipe):
        if overrides:
            raise UserError("pass overrides together with a recipe path or dict, not with a loaded Recipe")
        return recipe
    recorded = from_run_dir(resumed) if resumed is not None else {}
    with recorded_providers(recorded):
        return load_recipe(recipe, overrides)


def _set_threads(recipe: Recipe, jobs: int) -> None:
    if jobs > 1:  # the parent only forks: no thread pool of its own for the workers to inherit
        torch.set_num_threads(1)
    elif recipe.root.train.threads is not None:
        torch.set_num_threads(recipe.root.train.threads)


def _selected(folds: list[FoldData], fold: int | None) -> list[FoldData]:
    """The folds this start trains: all of them, or the one ``--fold`` names."""
    if fold is None:
        return folds
    if not 0 <= fold < len(folds):
        raise UserError(f"--fold {fold} is out of range; this recipe has folds 0..{len(folds) - 1}.")
    return [folds[fold]]


def _prepare(recipe: Recipe, run_dir: Path, resume: bool, overwrite: bool, fold: int | None, distributed) -> None:
    if distributed is None:
        prepare_run_dir(recipe, run_dir, resume, overwrite, fold)
    else:  # rank 0 checks and prepares the directory; the others wait (or stop with its error)
        distributed.on_main(lambda: prepare_run_dir(recipe, run_dir, resume, overwrite, fold))
        distributed.require_shared(run_dir / RECIPE)


def _remove_interrupted_writes(run_dir: Path, todo: list[FoldData], whole_run: bool) -> None:
    for data in todo:
        remove_orphaned_temp_files(fold_dir(run_dir, data.fold))
    if whole_run:
        remove_orphaned_temp_files(run_dir)


def _drop_records_to_retrain(run_dir: Path, fold: int | None) -> None:
    """Drop the ``metrics.jsonl`` records of epochs that will be trained again: those after an interrupted
    fold's saved state (or all of a fold that saved none).  A per-fold job (``fold``) leaves the others' alone."""
    last_epoch: dict[int, float] = {}  # fold -> its last epoch whose records stand (read once per fold)

    def keep(record: dict) -> bool:
        number = record.get("fold", 0)
        if fold is not None and number != fold:
            return True  # another job's fold: not ours to trim
        if number not in last_epoch:
            last_epoch[number] = last_recorded_epoch(run_dir, number)
        return record.get("epoch", -1) <= last_epoch[number]

    trim_metrics(run_dir, keep)


def _train(recipe: Recipe, run_dir: Path, todo: list[FoldData], show: bool, jobs: int, distributed,
           is_main: bool, tracker: Tracker, num_folds: int) -> None:
    """Train the folds of ``todo`` that are not complete yet, telling the run's progress display (a bar or lines
    with ``show``; ``log.txt`` always) and its loggers."""
    pending = []
    for data in todo:
        if fold_is_complete(run_dir, data.fold):
            log.info("fold %d already complete; skipping", data.fold)
        else:
            pending.append(data)
    watch = None
    if is_main:
        watch = Observers([RunProgress(recipe.root.train.epochs, len(pending), num_folds, show=show), tracker])
    try:
        if jobs > 1 and len(pending) > 1:
            train_folds_parallel(recipe, run_dir, pending, jobs, watch)
        else:
            writer = MetricsWriter(run_dir / METRICS, enabled=is_main)
            for data in pending:
                train_fold(recipe, data, run_dir, writer, watch if watch is not None else False, distributed,
                           is_main)
    finally:
        if watch is not None:
            watch.close()
    if distributed is not None:
        distributed.barrier()


def _disk_full_message(exc: OSError, recipe: Recipe, run_dir: Path, overrides: list[str] | None,
                       fold: int | None) -> str:
    """The disk filled up: what is kept, and the exact command that continues once there is space."""
    from milzoo.runs.rundir import printable

    started = (run_dir / RECIPE).exists()
    words = ["milzoo", "run", str(recipe.source), "--out", str(run_dir)] + (["--resume"] if started else [])
    if fold is not None:
        words += ["--fold", str(fold)]
    for item in overrides or []:
        words += ["--set", item]
    where = f" while writing {printable(exc.filename)}" if exc.filename else ""
    kept = (f"Nothing finished is lost: every fold and epoch checkpoint written before stays in {printable(run_dir)}, "
            "and files are replaced only once complete." if started else "Nothing was written yet.")
    return (f"the disk is full ({exc.strerror or 'no space left on device'}){where}. {kept} Free some space (or give "
            f"an --out on a larger disk), then continue with: {printable(shlex.join(words))}")
