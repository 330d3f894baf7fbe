"""``milzoo run --jobs N``: the folds (and repeats) of one run in N worker processes.

Every fold is already independent: the trainer seeds it from ``(seed, fold)``, and
per-fold jobs (``--fold I``, a Slurm array) write the same run directory.  Here the
parent prepares the run directory, builds the data and the folds once, and forks N
workers that inherit them (no pickling of datasets); each trains whole folds with
``train.threads`` torch threads (1 when the recipe sets none) and writes the fold's
folder, its ``result.json`` and its lines of ``metrics.jsonl`` exactly as a sequential
run does.  The parent then summarises.  Where ``fork`` is not available (macOS
defaults, Windows) the workers are spawned and rebuild the data from the recipe.

Errors in a worker reach the parent as their message (a ``UserError`` stays one, so
the CLI still prints one paragraph and exits 2); folds finished by then are kept, and
``--resume`` continues the rest.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from milzoo.datasets.protocols import folds_for
from milzoo.errors import UserError
from milzoo.recipe import validate_recipe
from milzoo.runs._fold import train_fold
from milzoo.runs.rundir import METRICS, MetricsWriter, log_to_file

log = logging.getLogger(__name__)

#: what forked workers inherit: (recipe, {fold number: FoldData}, run directory)
_INHERITED: tuple[Any, dict, Path] | None = None
#: in a worker: the same, however it got there
_WORKER: tuple[Any, dict, Path] | None = None


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


def _init_worker(threads: int, recipe_dict: dict | None, source: str, run_dir: str) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(threads)
    if _INHERITED is not None:  # forked: the parent's recipe and folds
        _WORKER = _INHERITED
    else:  # spawned: rebuild them as the parent did
        recipe = validate_recipe(recipe_dict, source)
        _WORKER = (recipe, {data.fold: data for data in folds_for(recipe)}, Path(run_dir))
    # log.txt: the forked handler's file object is shared with the parent; write through our own
    log_to_file(_WORKER[2], tag="[worker] ", replace=True)


def _train(fold: int) -> tuple[str, str]:
    """Train one fold in a worker: ("ok", "") or (error kind, message)."""
    recipe, folds, run_dir = _WORKER
    try:
        train_fold(recipe, folds[fold], run_dir, MetricsWriter(run_dir / METRICS), show=False)
        return "ok", ""
    except UserError as exc:
        return "user", str(exc)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        return "bug", traceback.format_exc()


def train_folds_parallel(recipe, run_dir: Path, todo: list, jobs: int) -> None:
    """Train the folds ``todo`` (FoldData, not yet complete) in ``jobs`` worker processes."""
    global _INHERITED
    run_dir = Path(run_dir)
    threads = job_threads(recipe)
    ctx = _context()
    log.info("training %d folds in %d worker processes (%d torch thread%s each, %s)", len(todo), jobs, threads,
             "" if threads == 1 else "s", ctx.get_start_method())
    forked = ctx.get_start_method() == "fork"
    _INHERITED = (recipe, {data.fold: data for data in todo}, run_dir) if forked else None
    args = (threads, None if forked else recipe.to_dict(), str(recipe.source), str(run_dir))
    failures: list[tuple[int, str, str]] = []
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_init_worker,
                                 initargs=args) as pool:
            futures = {pool.submit(_train, data.fold): data.fold for data in todo}
            for fut in futures:
                kind, message = fut.result()
                if kind != "ok":
                    failures.append((futures[fut], kind, message))
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
