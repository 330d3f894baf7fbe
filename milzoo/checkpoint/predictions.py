"""The predictions a checkpoint folder keeps: ``predictions-<split>.csv`` (bag id, labels, the task's predictions:
one probability per class for classification).

Written next to the fold's ``best`` and ``last`` checkpoints by the trainer, read back by ``summarize`` (the
ensemble vote of ``protocol.kind = "cv_ensemble"``) and by the report.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from milzoo._atomic import atomic_write_text
from milzoo.errors import RunDirError


def write_predictions(folder: str | Path, split: str, preds: dict[str, Any], columns: list[str],
                      label_columns: tuple[str, ...] | list[str] = ("label",)) -> None:
    """``folder/predictions-<split>.csv`` from a split's predictions (``bag_ids``, ``y``, ``probs``), atomically.

    The header is ``bag_id``, the task's ``label_columns`` and its prediction ``columns`` (classification:
    ``label, p_<class>...``; docs/tasks.md); class labels are written as integers, other labels as numbers.
    """
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["bag_id", *label_columns, *columns])
    for bid, y, pr in zip(preds["bag_ids"], preds["y"], preds["probs"]):
        if np.ndim(y) == 0 and np.issubdtype(np.asarray(y).dtype, np.integer):
            labels = [int(y)]
        else:
            labels = [f"{v:.6g}" for v in np.atleast_1d(y)]
        w.writerow([bid, *labels, *[f"{v:.6g}" for v in pr]])
    atomic_write_text(Path(folder) / f"predictions-{split}.csv", buf.getvalue())


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(bag ids, labels, probabilities)`` of a predictions file; a damaged one raises :class:`RunDirError`."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        ids = [r[0] for r in rows[1:]]
        y = np.array([int(r[1]) for r in rows[1:]])
        probs = np.array([[float(v) for v in r[2:]] for r in rows[1:]], dtype=np.float64)
        if probs.ndim != 2 or len(ids) == 0 or not np.isfinite(probs).all():
            raise ValueError("no rows, rows of different lengths or non-finite probabilities")
    except (ValueError, IndexError, UnicodeDecodeError, csv.Error) as exc:
        raise RunDirError(
            f"{path} is damaged ({exc}); delete the fold's result.json and continue the run with --resume to "
            "write it again."
        ) from None
    return ids, y, probs
