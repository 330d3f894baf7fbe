"""``milzoo run --jobs N``: the folds (and repeats) of one run in N worker processes.

Every fold is already independent: the trainer seeds it from ``(seed, fold)``, and
per-fold jobs (``--fold I``, a Slurm array) write the same run directory.  Here the
parent prepares the run directory, builds the data and the folds once, and forks N
workers that inherit them (no pickling of datasets); each trains whole folds with
``train.threads`` torch threads (1 when the recipe sets none) and writes the fold's
folder, its ``result.json`` and its lines of ``metrics.jsonl`` exactly as a sequential
run does.  Each worker sends its folds' progress (every epoch's records) to the parent over a queue, and the
parent shows the run's progress and tells the run's experiment loggers, so loggers are run-level here as in a
sequential run.  The parent then summarises.  Where ``fork`` is not available (macOS
defaults, Windows) the workers are spawned and rebuild the data from the recipe.

Errors in a worker reach the parent as their message (a ``UserError`` stays one, so
the CLI still prints one paragraph and exits 2); folds finished by then are kept, and
``--resume`` continues the rest.

Ctrl-C and SIGTERM end the workers as they end a sequential run, whoever receives them: the parent alone
(``kill PID``), every process (Slurm, ``kill -- -PGID``) or one worker.  The parent passes the signal on to
every worker, each stops its fold where it is (the checkpoint of its last finished epoch stays), the parent
waits for all of them, logs what became of each fold and stops like a sequential run (``run.json``
"terminated", the resume command, exit 143): no worker is left running.
"""

from __future__ import annotations

import errno
import logging
import math
import multiprocessing as mp
import os
import queue
import time
import signal
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from milzoo.datasets.protocols import folds_for
from milzoo.errors import UserError
from milzoo.recipe import validate_recipe
from milzoo.runs._fold import last_recorded_epoch, train_fold
from milzoo.runs.rundir import METRICS, MetricsWriter, Terminated, log_to_file
from milzoo.train.progress import RunObserver

log = logging.getLogger(__name__)

#: what forked workers inherit: (recipe, {fold number: FoldData}, run directory)
_INHERITED: tuple[Any, dict, Path] | None = None
#: in a worker: the same, however it got there
_WORKER: tuple[Any, dict, Path] | None = None
#: in a worker: the queue its folds' progress goes to the parent on (None: the parent watches nothing)
_EVENTS: Any = None
#: seconds between the parent's readings of the workers' progress
_POLL_S = 0.2


class _Forward(RunObserver):
    """A worker's folds' progress, sent to the parent, which shows it and tells the run's loggers."""

    def __init__(self, events: Any):
        self.events = events

    def fold_started(self, fold: int, first_epoch: int, epochs: int) -> None:
        self.events.put(("fold_started", (fold, first_epoch, epochs)))

    def epoch_done(self, fold: int, epoch: int, records: list[dict]) -> None:
        self.events.put(("epoch_done", (fold, epoch, records)))

    def fold_done(self, fold: int, result: dict) -> None:
        self.events.put(("fold_done", (fold, result)))


def _relay(events: Any, watch: RunObserver | None) -> None:
    """Tell ``watch`` what the workers have sent so far."""
    if events is None or watch is None:
        return
    while True:
        try:
            name, args = events.get_nowait()
        except queue.Empty:
            return
        getattr(watch, name)(*args)


def job_threads(recipe) -> int:
    """Torch threads per worker: ``train.threads`` when the recipe sets it, else 1."""
    threads = recipe.root.train.threads
    return int(threads) if threads else 1


def check_jobs(jobs: int | None, fold: int | None, distributed) -> int:
    """The number of workers to use (1 = the plain sequential loop), or a clear error."""
    if jobs is None or jobs == 1:
        return 1
    if jobs < 1:
        raise UserError(f"--jobs {jobs} is not a number of worker processes; use --jobs 1 or more.")
    if fold is not None:
        raise UserError("--jobs runs the folds of one run in parallel, and --fold runs a single fold; use one "
                        "of them (per-fold jobs: --fold I without --jobs).")
    if distributed is not None:
        raise UserError("--jobs cannot be combined with torchrun (each rank already trains every fold); run "
                        "without torchrun to train folds in parallel, or without --jobs under torchrun.")
    return int(jobs)


def _context():
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")


def _init_worker(threads: int, recipe_dict: dict | None, source: str, run_dir: str, events: Any = None) -> None:
    global _WORKER, _EVENTS
    import torch

    torch.set_num_threads(threads)
    if _INHERITED is not None:  # forked: the parent's recipe and folds
        _WORKER = _INHERITED
    else:  # spawned: rebuild them as the parent did
        recipe = validate_recipe(recipe_dict, source)
        _WORKER = (recipe, {data.fold: data for data in folds_for(recipe)}, Path(run_dir))
    # log.txt: the forked handler's file object is shared with the parent; write through our own
    log_to_file(_WORKER[2], tag="[worker] ", replace=True)
    _EVENTS = events
    _catch_stop_signals()


def _train(fold: int) -> tuple[str, str]:
    """Train one fold in a worker: ("ok", "") or (error kind, message)."""
    global _IN_FOLD
    recipe, folds, run_dir = _WORKER
    try:
        _IN_FOLD = True
        if _STOPPED:  # asked to stop before this fold started
            return _stopped_kind(), "not started"
        progress = _Forward(_EVENTS) if _EVENTS is not None else False
        train_fold(recipe, folds[fold], run_dir, MetricsWriter(run_dir / METRICS), progress)
        return "ok", ""
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Terminated): the fold's last checkpoint stays
        return _stopped_kind(), "stopped"
    except UserError as exc:
        return "user", str(exc)
    except OSError as exc:
        if exc.errno in DISK_FULL:  # the parent raises it again, as a sequential run would
            return "disk", f"{exc.errno}\0{exc.strerror or ''}\0{exc.filename or ''}"
        return "bug", traceback.format_exc()
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        return "bug", traceback.format_exc()
    finally:
        _IN_FOLD = False


def train_folds_parallel(recipe, run_dir: Path, todo: list, jobs: int, watch: RunObserver | None = None) -> None:
    """Train the folds ``todo`` (FoldData, not yet complete) in ``jobs`` worker processes; ``watch`` hears of
    their progress (in this process, as the workers send it)."""
    global _INHERITED
    run_dir = Path(run_dir)
    threads = job_threads(recipe)
    ctx = _context()
    log.info("training %d folds in %d worker processes (%d torch thread%s each, %s)", len(todo), jobs, threads,
             "" if threads == 1 else "s", ctx.get_start_method())
    forked = ctx.get_start_method() == "fork"
    _INHERITED = (recipe, {data.fold: data for data in todo}, run_dir) if forked else None
    events = ctx.Queue() if watch is not None else None
    args = (threads, None if forked else recipe.to_dict(), str(recipe.source), str(run_dir), events)
    failures: list[tuple[int, str, str]] = []
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_init_worker,
                                 initargs=args) as pool:
            futures = {pool.submit(_train, data.fold): data.fold for data in todo}
            running = set(futures)
            try:
                while running:
                    _, running = wait(running, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                    _relay(events, watch)
                    _raise_if_a_worker_stopped(running, futures)
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM, here or in a worker: stop every worker
                _stop_workers(pool, exc, lambda: _relay(events, watch))
                _log_stopped_folds(futures, run_dir, exc)
                raise
            for fut in futures:
                kind, message = fut.result()
                if kind == "disk":
                    number, text, name = message.split("\0")
                    raise OSError(int(number), text, name or None)
                if kind != "ok":
                    failures.append((futures[fut], kind, message))
        _relay(events, watch)  # what the workers sent last, before they exited
    except BrokenProcessPool:
        raise UserError(
            f"a worker process of --jobs {jobs} died (killed, or out of memory?). The folds it finished are kept in "
            f"{run_dir}; continue with the same command and --resume, with fewer --jobs if memory is short."
        ) from None
    finally:
        _INHERITED = None
    if failures:
        fold, kind, message = failures[0]
        more = f" ({len(failures) - 1} other fold(s) failed too; see {run_dir / 'log.txt'})" if len(failures) > 1 else ""
        if kind == "user":
            raise UserError(f"fold {fold}: {message}{more}")
        raise RuntimeError(f"fold {fold} failed in a worker process{more}:\n{message}")


# --------------------------------------------------------------------------- Ctrl-C and SIGTERM

#: errno values of a full disk (or a full quota): a run stops with the resume command, not a traceback
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: in a worker: the signals received so far (the first one stops the fold; later ones are not raised again)
_STOPPED: list[int] = []
#: in a worker: whether a fold is being trained (a signal between folds only marks the worker stopped)
_IN_FOLD = False
_STOP_KINDS = ("terminated", "interrupted")


def _stopped_kind() -> str:
    return "terminated" if signal.SIGTERM in _STOPPED else "interrupted"


def _on_stop_signal(signum, frame) -> None:
    """In a worker: the first Ctrl-C or SIGTERM stops the fold being trained; it is raised once only, so the
    fold's way out (its result sent to the parent) is never cut short by the signal the parent passes on."""
    first = not _STOPPED
    _STOPPED.append(signum)
    if first and _IN_FOLD:
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _catch_stop_signals() -> None:
    """A worker's handlers for SIGINT and SIGTERM (a forked worker would otherwise run the parent's)."""
    _STOPPED.clear()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_stop_signal)


def _raise_if_a_worker_stopped(running: set, futures: dict) -> None:
    """A fold a worker stopped (a signal sent to that worker alone) stops the run, as Ctrl-C or SIGTERM here."""
    for fut in futures:
        if fut not in running and not fut.cancelled() and fut.exception() is None:
            kind = fut.result()[0]
            if kind in _STOP_KINDS:
                raise Terminated() if kind == "terminated" else KeyboardInterrupt()


def _stop_workers(pool: ProcessPoolExecutor, exc: KeyboardInterrupt, drain=lambda: None) -> None:
    """Pass the signal on to every worker, cancel the folds not started, and wait until every worker has ended.

    ``drain`` keeps reading the workers' progress queue meanwhile: a worker that exits flushes what it sent, and
    with nobody reading, a full pipe would keep it (and this wait) from ever ending."""
    signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
    processes = dict(getattr(pool, "_processes", None) or {})  # pid -> Process (the executor keeps no public list)
    for pid, proc in processes.items():
        if proc.is_alive():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
    pool.shutdown(wait=False, cancel_futures=True)  # folds not started are cancelled; idle workers are told to exit
    deadline = time.monotonic() + 30
    while any(p.is_alive() for p in processes.values()) and time.monotonic() < deadline:
        drain()
        time.sleep(0.05)
    drain()
    for proc in processes.values():
        proc.join(timeout=10)
        if proc.is_alive():  # a worker that ignores the signal: it must not outlive the run
            log.warning("worker process %d did not stop; killing it", proc.pid)
            proc.kill()
            proc.join(timeout=5)


def _log_stopped_folds(futures: dict, run_dir: Path, exc: KeyboardInterrupt) -> None:
    """One line per fold: finished, stopped (at which epoch its checkpoint is) or not started."""
    how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    for fut, fold in sorted(futures.items(), key=lambda item: item[1]):
        kind = None
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            kind, message = fut.result()
        if kind == "ok":
            text = "finished"
        elif fut.cancelled() or (kind in _STOP_KINDS and message == "not started"):
            text = "not started"
        else:
            try:
                epoch = last_recorded_epoch(run_dir, fold)
            except Exception:  # noqa: BLE001 - only a log line depends on it
                epoch = math.nan
            text = ("finished" if epoch == math.inf
                    else f"stopped; its checkpoint after epoch {int(epoch)} is kept" if math.isfinite(epoch)
                    else "stopped before its first epoch ended" if epoch == -math.inf else "stopped")
        log.warning("%s: fold %d %s", how, fold, text)
