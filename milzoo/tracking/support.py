"""What experiment loggers share: optional packages, ids kept across starts, folders, figures.

Every built-in logger uses these, and a plugin's logger may too (docs/plugins.md).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from milzoo._atomic import atomic_write_json
from milzoo._untrusted import read_json
from milzoo.errors import LoggerError, MissingExtraError

log = logging.getLogger(__name__)

#: where loggers keep what must survive a start (the id of an MLflow or W&B run), inside the run directory
TRACKING_DIR = "tracking"
#: record keys that say where a figure belongs rather than being one
_PLACE = ("fold", "epoch", "split")


def require(module: str, extra: str, what: str) -> Any:
    """Import the optional ``module`` that ``what`` (``"the tensorboard logger"``) needs; when it is missing,
    a :class:`~milzoo.errors.MissingExtraError` naming the milzoo extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingExtraError(
            f"{what} needs the optional package {package!r}, which is not installed or does not import ({exc}). "
            f"Install it with `pip install \"milzoo[{extra}]\"`, or run without that logger (leave it out of the "
            "recipe's [[log]] tables and of --log)."
        ) from None


def logger_dir(run_dir: Path, path: str) -> Path:
    """``path`` inside the run directory, or as given when absolute."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else Path(run_dir) / p


def shared_run_id(run_dir: Path, key: str, create: Callable[[], str], seconds: float = 30.0) -> str:
    """The id of the tracking run that ``key`` (``"mlflow"``) keeps for this run directory, made by ``create()``
    the first time and read back by every later start (``--resume``) and by per-fold jobs of the same run.

    The id lives in ``RUN/tracking/<key>.json``.  Per-fold jobs that start together agree on one id: the first
    takes ``.<key>.lock`` (created exclusively) and makes it, the others wait for the file.
    """
    folder = Path(run_dir) / TRACKING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path, lock = folder / f"{key}.json", folder / f".{key}.lock"
    deadline = time.monotonic() + seconds
    while True:
        if path.exists():
            return _read_id(path)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if time.monotonic() > deadline:
                raise LoggerError(
                    f"{lock} has been held for {seconds:.0f}s without {path.name} appearing: a start that was making "
                    f"the {key} run was killed. Delete {lock} and start again.") from None
            time.sleep(0.1)
            continue
        try:
            if path.exists():  # made between our check and the lock
                return _read_id(path)
            value = str(create())
            atomic_write_json(path, {"id": value})
            log.info("%s: new tracking run %s (kept in %s)", key, value, path)
            return value
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)


def _read_id(path: Path) -> str:
    data = read_json(path, "tracking run id", LoggerError)
    value = data.get("id") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise LoggerError(f"{path} holds no tracking run id; delete it to start a new tracking run.")
    return value


def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The figures of a ``metrics.jsonl`` record as floats (an undefined one, ``None``, as NaN); its place
    (fold, epoch, split) and anything that is not a number are left out."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if k in _PLACE or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif v is None:
            out[k] = math.nan
    return out


def summary_figures(summary: dict[str, Any], std: bool = True) -> dict[str, float]:
    """summary.json as flat names: ``last/test/acc`` (the mean over folds; ``last/test/acc_std`` its standard
    deviation), ``selected/...`` (validation-selected epoch), ``best_epoch_on_test/test/...`` (labelled
    optimistic in summary.json), ``ensemble/test/...``.  Undefined figures are left out."""
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)

    def stats(prefix: str, metrics: dict[str, Any]) -> None:
        for metric, m in metrics.items():
            if isinstance(m, dict):
                put(f"{prefix}/{metric}", m.get("mean"))
                if std:
                    put(f"{prefix}/{metric}_std", m.get("std"))

    for section in ("last", "selected"):
        for split, metrics in (summary.get(section) or {}).items():
            if isinstance(metrics, dict):
                stats(f"{section}/{split}", metrics)
    on_test = summary.get("best_epoch_on_test") or {}
    stats("best_epoch_on_test/test", {k: v for k, v in on_test.items() if k != "note"})
    for split, metrics in (summary.get("ensemble") or {}).items():
        for metric, value in (metrics or {}).items():
            put(f"ensemble/{split}/{metric}", value)
    return out
