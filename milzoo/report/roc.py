"""ROC curves and confusion matrices of a run, from the predictions files its checkpoints kept.

Each fold's ``best/`` (validation-selected) and ``last/`` checkpoint folder holds ``predictions-<split>.csv``
(:mod:`milzoo.checkpoint.predictions`: bag id, label, one probability per class), written by the trainer with the
checkpoint.  Nothing is recomputed from a model or from the data:

- **ROC curves** of ``p(class 1)`` (binary) or of each class against the rest (more classes; the probabilities
  normalised as :func:`milzoo.metrics.bag_metrics` does).  Each fold's curve, and the folds' vertical mean: the
  mean true-positive rate at each false-positive rate.  The AUCs are :func:`milzoo.metrics.binary_auc` of the
  same numbers, so a fold's AUC is the one the run reported for that model and split (to the 6 digits the
  file keeps); with more classes, the mean of a fold's one-vs-rest AUCs is its macro AUC.
- a **confusion matrix**: bags counted by (true class, predicted class), summed over the folds, each bag's class
  chosen by the one decision rule (:func:`milzoo.model.decision.predict_classes`): the threshold the checkpoint
  recorded on validation, else the argmax.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from milzoo.checkpoint.predictions import read_predictions
from milzoo.errors import RunDirError
from milzoo.metrics import binary_auc, mean_std
from milzoo.model.decision import predict_classes, recorded_threshold
from milzoo.report.common import RUN_COLORS, new_figure, plain_text

log = logging.getLogger(__name__)

#: the checkpoint folders whose predictions are shown, with their words
MODELS = {"best": "validation-selected", "last": "last epoch"}
#: the false-positive rates at which the folds' curves are averaged
_GRID = np.linspace(0.0, 1.0, 201)


def roc_points(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(fpr, tpr)`` of ``score`` for the boolean labels ``positive``: one point per distinct score, from (0, 0)
    to (1, 1), whose trapezoidal area is :func:`milzoo.metrics.binary_auc`; None unless both classes occur."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if positive.all() or not positive.any():
        return None
    order = np.argsort(score, kind="mergesort")[::-1]
    s, t = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), t.size - 1]  # the last position of each distinct score
    tps = np.r_[0.0, np.cumsum(t, dtype=np.float64)[last]]
    fps = np.r_[0.0, 1 + last - tps[1:]]
    return fps / fps[-1], tps / tps[-1]


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The vertical mean of ROC curves from (0, 0): the mean true-positive rate at each false-positive rate of a
    grid (where a curve rises at one rate, its top)."""
    tpr = np.mean([np.interp(_GRID, fpr, tp) for fpr, tp in curves], axis=0)
    return np.r_[0.0, _GRID], np.r_[0.0, tpr]


@dataclass
class RocCurve:
    """The ROC curves of one class (binary: class 1 against class 0) in each fold."""

    class_name: str
    folds: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # fold -> (fpr, tpr)
    aucs: dict[int, float] = field(default_factory=dict)
    one_class: list[int] = field(default_factory=list)  # folds whose split lacks a class: no curve, no AUC

    def mean(self) -> tuple[np.ndarray, np.ndarray]:
        """The folds' vertical mean (the fold's own curve when there is one fold)."""
        curves = list(self.folds.values())
        return curves[0] if len(curves) == 1 else mean_curve(curves)

    def auc_text(self) -> str:
        """``AUC 0.912`` (one fold) or ``AUC 0.912 ± 0.041`` (mean ± sample SD over the folds)."""
        m, s = mean_std(list(self.aucs.values()))
        return f"AUC {m:.3f}" + (f" ± {s:.3f}" if len(self.aucs) > 1 else "")


@dataclass
class FoldPredictions:
    """One fold's predictions of one split by one checkpoint."""

    fold: int
    y: np.ndarray  # [n] true classes
    probs: np.ndarray  # [n, k]
    threshold: float | None  # recorded by the checkpoint on validation (binary models only)

    @property
    def pred(self) -> np.ndarray:
        return predict_classes(self.probs, self.threshold)


@dataclass
class ModelPredictions:
    """The predictions of one split by one kind of checkpoint (``best`` or ``last``) of every fold that has it."""

    which: str
    split: str
    class_names: list[str]
    folds: list[FoldPredictions]

    @property
    def title(self) -> str:
        return MODELS[self.which]

    @property
    def num_bags(self) -> int:
        return sum(len(f.y) for f in self.folds)

    def confusion(self) -> np.ndarray:
        """``[k, k]`` counts, rows the true class and columns the predicted one, summed over the folds."""
        k = len(self.class_names)
        counts = np.zeros((k, k), dtype=np.int64)
        for f in self.folds:
            np.add.at(counts, (f.y, f.pred), 1)
        return counts

    def rule(self) -> str:
        """The decision rule behind the counts, in the words of :mod:`milzoo.model.decision`."""
        thresholds = [f.threshold for f in self.folds]
        chosen = [t for t in thresholds if t is not None]
        if not chosen:
            return "argmax"
        neg, pos = self.class_names[:2]
        shown = ", ".join(f"{t:.3f}" for t in chosen[:10]) + (", ..." if len(chosen) > 10 else "")
        if len(thresholds) == 1:
            return f"{pos} when p({pos}) >= {shown} (threshold chosen on validation), else {neg}"
        if len(chosen) == len(thresholds):
            return f"{pos} when p({pos}) >= each fold's threshold chosen on validation ({shown}), else {neg}"
        return (f"{pos} when p({pos}) >= the fold's threshold chosen on validation where one was recorded "
                f"({shown}), else argmax")

    def roc(self) -> list[RocCurve]:
        """Binary: one :class:`RocCurve` of class 1; more classes: one per class, against the rest."""
        k = len(self.class_names)
        classes = [1] if k == 2 else list(range(k))
        curves = [RocCurve(self.class_names[c]) for c in classes]
        for f in self.folds:
            scores = f.probs if k == 2 else f.probs / f.probs.sum(1, keepdims=True).clip(1e-12)
            for curve, c in zip(curves, classes):
                points = roc_points(f.y == c, scores[:, c])
                if points is None:
                    curve.one_class.append(f.fold)
                    continue
                curve.folds[f.fold] = points
                curve.aucs[f.fold] = binary_auc(f.y == c, scores[:, c])
        return curves


def macro_auc_text(curves: list[RocCurve]) -> str:
    """``macro AUC 0.540 ± 0.210``: each fold's mean of its one-vs-rest AUCs (the run's own multi-class AUC), over
    the folds where every class has one; empty when none has."""
    folds = set.intersection(*(set(c.aucs) for c in curves)) if curves else set()
    if not folds:
        return ""
    m, s = mean_std([float(np.mean([c.aucs[f] for c in curves])) for f in sorted(folds)])
    return f"macro AUC {m:.3f}" + (f" ± {s:.3f}" if len(folds) > 1 else "")


def class_names_of(path: Path) -> list[str] | None:
    """The classes of a predictions file (header ``bag_id,label,p_<class>...``); None for a task without classes
    (regression's ``bag_id,target,pred``, survival's ``bag_id,time,event,risk,...``)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunDirError(f"{path} is unreadable ({exc}); delete the fold's result.json and continue the run with "
                          "--resume to write it again.") from None
    if len(header) < 4 or header[:2] != ["bag_id", "label"] or not all(h.startswith("p_") for h in header[2:]):
        return None
    return [h[2:] for h in header[2:]]


def fold_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(fold, fold-XX folder)]`` of a run directory, by fold."""
    out = []
    for p in Path(run_dir).glob("fold-*"):
        if p.is_dir() and p.name[5:].isdigit():
            out.append((int(p.name[5:]), p))
    return sorted(out)


def prediction_splits(run_dir: str | Path) -> list[str]:
    """The splits some fold's ``best/`` or ``last/`` folder holds predictions of, in order of first appearance."""
    seen: list[str] = []
    for _, folder in fold_dirs(run_dir):
        for which in MODELS:
            for p in sorted((folder / which).glob("predictions-*.csv")):
                name = p.name[len("predictions-"):-len(".csv")]
                if name not in seen:
                    seen.append(name)
    return seen


def choose_split(run_dir: str | Path, split: str = "test") -> str | None:
    """``split`` when the run has predictions of it, else its first split other than train and val, else val."""
    names = prediction_splits(run_dir)
    if split in names:
        return split
    others = [n for n in names if n not in ("train", "val")]
    return (others or [n for n in names if n == "val"] or [None])[0]


def model_predictions(run_dir: str | Path, which: str, split: str) -> ModelPredictions | None:
    """The ``which`` checkpoints' predictions of ``split`` over the folds that have them; None when no fold
    has, or when the task has no classes."""
    folds: list[FoldPredictions] = []
    names: list[str] | None = None
    for fold, folder in fold_dirs(run_dir):
        path = folder / which / f"predictions-{split}.csv"
        if not path.is_file():
            continue
        classes = class_names_of(path)
        if classes is None:
            return None
        _, y, probs = read_predictions(path)
        if probs.shape[1] != len(classes) or y.min() < 0 or y.max() >= len(classes):
            raise RunDirError(f"{path} is damaged (labels or columns do not match its {len(classes)} classes); "
                              "delete the fold's result.json and continue the run with --resume to write it again.")
        if names is not None and classes != names:
            raise RunDirError(f"the folds of {run_dir} name different classes ({names} and {classes} in {path}); "
                              "they are not one run.")
        names = classes
        threshold = recorded_threshold(folder / which) if len(classes) == 2 else None
        folds.append(FoldPredictions(fold, y, probs, threshold))
    return ModelPredictions(which, split, names, folds) if folds and names else None


def run_predictions(run_dir: str | Path, split: str = "test") -> list[ModelPredictions]:
    """The validation-selected and the last checkpoints' predictions of ``split`` (see :func:`choose_split`),
    those that exist; empty for a run without class predictions."""
    chosen = choose_split(run_dir, split)
    if chosen is None:
        return []
    found = (model_predictions(run_dir, which, chosen) for which in MODELS)
    return [m for m in found if m is not None]


def roc_figure(models: list[ModelPredictions], color: str = RUN_COLORS[0], title: str = ""):
    """One panel per checkpoint kind: each fold's ROC curve (thin) and their vertical mean (thick) with the folds'
    AUC; with more than two classes one mean curve per class, against the rest."""
    from milzoo.report.embedding import class_colors

    fig = new_figure(4.3 * len(models), 4.4)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, m in zip(axes, models):
        binary = len(m.class_names) == 2
        curves = m.roc()
        colors = [color] if binary else class_colors(len(curves))
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999", label="chance")
        for curve, col in zip(curves, colors):
            if not curve.folds:
                continue
            if binary and len(curve.folds) > 1:
                for i, (fpr, tpr) in enumerate(curve.folds.values()):
                    ax.plot(fpr, tpr, color=col, lw=0.8, alpha=0.35, label="each fold" if i == 0 else None)
            n = len(curve.folds)
            label = (f"mean of {n} folds, " if binary and n > 1 else "" if binary else f"{curve.class_name}: ")
            ax.plot(*curve.mean(), color=col, lw=2.2 if binary else 1.6, label=plain_text(label + curve.auc_text()))
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("false-positive rate", fontsize=8)
        ax.set_ylabel("true-positive rate", fontsize=8)
        what = f"p({curves[0].class_name})" if binary else "one-vs-rest"
        macro = "" if binary else macro_auc_text(curves)
        ax.set_title(plain_text(f"{m.title}: {what}, split '{m.split}'" + (f"\n{macro}" if macro else "")), fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(plain_text(title), fontsize=10)
    fig.tight_layout()
    return fig
