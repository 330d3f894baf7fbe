"""One fold of a run: training it into its folder ``RUN/fold-NN``, and what that folder says about its progress.

Both the sequential loop of :func:`milzoo.runs.run` and the worker processes of :mod:`milzoo.runs.jobs` train a
fold through :func:`train_fold`, so a fold's folder looks the same however it was trained.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

from milzoo._atomic import atomic_write_json
from milzoo.checkpoint import STATE, load_training_state
from milzoo.datasets.protocols import FoldData
from milzoo.metrics import json_safe
from milzoo.recipe import Recipe
from milzoo.runs.rundir import FOLD_RESULT, fold_dir, fold_is_complete
from milzoo.train.trainer import Trainer

log = logging.getLogger(__name__)


def train_fold(recipe: Recipe, data: FoldData, run_dir: Path, writer: Callable[[dict], None], progress: Any,
               distributed=None, is_main: bool = True) -> None:
    """Train one fold into ``RUN/fold-NN`` (resuming from its state) and write its ``result.json``.

    ``writer`` receives the fold's metric records (a :class:`~milzoo.runs.rundir.MetricsWriter`); ``progress``
    is the run's :class:`~milzoo.train.progress.RunObserver` (its display and loggers), True for a display of
    this fold alone, or False.  Under torchrun every rank calls this; rank 0 (``is_main``) writes the files.
    """
    folder = fold_dir(run_dir, data.fold)
    if is_main:
        folder.mkdir(parents=True, exist_ok=True)
    if distributed is not None:
        distributed.barrier()
    t0 = time.perf_counter()
    trainer = Trainer(recipe, data, folder, writer, distributed=distributed)
    result = trainer.fit(progress=progress)
    result["time_s"] = round(time.perf_counter() - t0, 3)
    if is_main:
        atomic_write_json(folder / FOLD_RESULT, json_safe(result))
    log.info("fold %d done in %.1fs: %s", data.fold, result["time_s"], json.dumps(result.get("last", {})))


def last_recorded_epoch(run_dir: Path, fold: int) -> float:
    """The last epoch of ``fold`` whose ``metrics.jsonl`` records still stand.

    Every epoch of a complete fold (``inf``); for an interrupted one, the epoch its training state was saved
    after (``--resume`` trains the later epochs again, so their records go); none (``-inf``) for a fold that
    saved no state.
    """
    if fold_is_complete(run_dir, fold):
        return math.inf
    state = load_training_state(fold_dir(run_dir, fold) / STATE)
    return -math.inf if state is None else state["epoch"]
