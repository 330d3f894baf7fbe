"""One decision rule: which class a model predicts for a bag, and the words that say how.

Every place that turns probabilities into a class (``MILModel.predict`` and ``Ensemble.predict``,
``milzoo localize``, ``milzoo attention``, the HTML report, the run summary) goes through this module, so they
agree and print the same rule:

- **threshold** -- a binary model whose checkpoint recorded a threshold chosen on its validation split
  (``protocol.threshold = "youden"``; ``config.json`` key ``threshold``) predicts class 1 when
  ``p1 >= threshold``, else class 0;
- **argmax** -- otherwise (no recorded threshold, or more than two classes) the most probable class;
- **vote** -- a fold ensemble (:class:`milzoo.model.ensemble.Ensemble`) predicts its members' majority vote,
  each member deciding by its own rule (ties go to the highest mean probability).

A model carries its threshold as ``model.decision_threshold`` (None: argmax); whoever loads a checkpoint sets it
with :func:`apply_recorded_threshold`.

A model whose task has no classes (regression, survival: ``task.classes`` is False) decides nothing: it predicts
values in the label's units (``task.predict``; ``out.extras["prediction"]``).  :func:`task_prediction` gives one
bag's values and their words (:class:`TaskPrediction`: ``risk -0.432 (survival, discrete head)``),
:func:`label_text` a label in words (``time 14, event 1``), and :func:`no_classes_text` what is printed where a
class model prints its rule (``no classes: the task predicts risk, S_bin0, S_bin1 (survival, discrete head)``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

ARGMAX = "argmax"
THRESHOLD = "threshold"
VOTE = "vote"

#: ``MILOutput.extras`` keys that :func:`attach_decisions` fills in ``predict``
PRED_KEY = "pred"
RULE_KEY = "decision_rule"


def _name(c: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= c < len(class_names):
        return str(class_names[c])
    return f"class {c}"


def valid_threshold(value: Any) -> float | None:
    """``value`` as a threshold when it is a finite number (a recorded ``null`` or junk means argmax)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Decision:
    """The class predicted for one bag and how it was chosen."""

    index: int
    class_name: str
    prob: float  # the model's probability of the predicted class
    rule: str  # ARGMAX, THRESHOLD or VOTE
    threshold: float | None = None
    p_positive: float | None = None  # p(class 1), with the threshold rule
    positive_name: str = ""
    detail: str = ""  # the vote's counts

    @property
    def reason(self) -> str:
        """``p(tumor)=0.432 >= threshold 0.310 chosen on validation``, ``p=0.568, argmax`` or the vote."""
        if self.rule == THRESHOLD:
            op = ">=" if self.index == 1 else "<"
            return f"p({self.positive_name})={self.p_positive:.3f} {op} threshold {self.threshold:.3f} chosen on validation"
        if self.rule == VOTE:
            return f"p={self.prob:.3f}, {self.detail or 'majority vote of the ensemble'}"
        return f"p={self.prob:.3f}, argmax"

    @property
    def text(self) -> str:
        """``predicted tumor (p(tumor)=0.432 >= threshold 0.310 chosen on validation)``."""
        return f"predicted {self.class_name} ({self.reason})"

    def __str__(self) -> str:
        return self.text


def predict_classes(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """``[B]`` classes of ``[B, k]`` probabilities by the rule: ``p1 >= threshold`` (binary, threshold given),
    else the argmax."""
    probs = np.asarray(probs, dtype=np.float64)
    threshold = valid_threshold(threshold)
    if probs.ndim == 2 and probs.shape[1] == 2 and threshold is not None:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(-1).astype(np.int64)


def decide(probs, threshold: float | None = None, class_names: Sequence[str] | None = None) -> Decision:
    """The class of one bag from its ``[k]`` probabilities (see the module docstring for the rule)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    threshold = valid_threshold(threshold)
    c = int(predict_classes(p[None], threshold)[0])
    if len(p) == 2 and threshold is not None:
        return Decision(c, _name(c, class_names), float(p[c]), THRESHOLD, threshold, float(p[1]),
                        _name(1, class_names))
    return Decision(c, _name(c, class_names), float(p[c]), ARGMAX)


def vote_text(member_preds: np.ndarray, cls: int, thresholds: Sequence[float | None] | None = None) -> str:
    """``vote 2 of 3 members (each at its validation threshold)`` for one bag's member predictions ``[M]``."""
    member_preds = np.asarray(member_preds).reshape(-1)
    n = len(member_preds)
    agree = int((member_preds == cls).sum())
    known = [valid_threshold(t) for t in (thresholds or [])]
    if known and all(t is not None for t in known):
        each = "each member at its threshold chosen on validation"
    elif any(t is not None for t in known):
        each = "members at their validation threshold, or argmax where none was chosen"
    else:
        each = "each member by argmax"
    return f"majority vote {agree} of {n} members, {each}"


def decide_output(out, b: int = 0, threshold: float | None = None, class_names: Sequence[str] | None = None,
                  member_thresholds: Sequence[float | None] | None = None) -> Decision:
    """The decision for bag ``b`` of a ``MILOutput``: an ensemble's vote (``extras["vote"]``) when present,
    else :func:`decide` on its bag probabilities with ``threshold``."""
    probs = out.bag_probs[b].detach().float().cpu().numpy()
    extras = out.extras or {}
    vote = extras.get("vote")
    if vote is not None:
        c = int(vote[b])
        preds = extras.get("member_preds")
        detail = (vote_text(preds[:, b].detach().cpu().numpy(), c, member_thresholds) if preds is not None
                  else "majority vote of the ensemble")
        return Decision(c, _name(c, class_names), float(probs[c]), VOTE, detail=detail)
    return decide(probs, threshold, class_names)


def model_threshold(model) -> float | None:
    """The recorded threshold a model decides with (``model.decision_threshold``), or None for argmax."""
    return valid_threshold(getattr(model, "decision_threshold", None))


def model_decisions(model, out) -> list[Decision]:
    """One :class:`Decision` per bag of ``out`` (a ``model.predict`` output), by the model's rule."""
    thresholds = getattr(model, "thresholds", None)
    names = list(getattr(model, "class_names", None) or [])
    return [decide_output(out, b, model_threshold(model), names, thresholds) for b in range(out.bag_probs.shape[0])]


def rule_text(model_or_threshold=None, class_names: Sequence[str] | None = None) -> str:
    """The rule a model (or a bare threshold) decides by, in words, without a bag's numbers."""
    if model_or_threshold is not None and not isinstance(model_or_threshold, (int, float)):
        model = model_or_threshold
        if not predicts_classes(model):
            return no_classes_text(model)
        if getattr(model, "thresholds", None) is not None and hasattr(model, "members"):
            n = len(model.members)
            known = [valid_threshold(t) for t in model.thresholds]
            each = ("each at its threshold chosen on validation" if all(t is not None for t in known)
                    else "each by argmax" if not any(t is not None for t in known)
                    else "each at its validation threshold, or argmax where none was chosen")
            return f"majority vote of {n} members, {each}"
        class_names = class_names or getattr(model, "class_names", None)
        threshold = model_threshold(model)
        k = getattr(model, "num_classes", None)
        if threshold is not None and k not in (None, 2):
            threshold = None
    else:
        threshold = valid_threshold(model_or_threshold)
    if threshold is None:
        return "argmax"
    return (f"{_name(1, class_names)} when p({_name(1, class_names)}) >= {threshold:.3f} (threshold chosen on "
            f"validation), else {_name(0, class_names)}")


def task_of(model):
    """The model's task (an ensemble: its first member's), or None for a model without one (classification)."""
    first = model.members[0] if hasattr(model, "members") and len(model.members) else model
    return getattr(first, "task", None)


def predicts_classes(model) -> bool:
    """Whether the model's labels are classes (its task, or its first member's; no task: classification)."""
    task = task_of(model)
    return task is None or bool(getattr(task, "classes", True))


# --------------------------------------------------------------------------- tasks without classes


def _num(value: float) -> str:
    return f"{float(value):.4g}"


def task_words(model) -> str:
    """``survival, discrete head``, ``regression``: the task and its head, when it has one, in words."""
    task = task_of(model)
    if task is None:
        return "classification"
    words = str(getattr(task, "name", type(task).__name__))
    head = getattr(getattr(task, "config", None), "head", None)
    if isinstance(head, str) and head:
        words += f", {head} head"
    return words


def prediction_columns(model) -> list[str]:
    """The names of the model's prediction columns (``task.columns(class_names)``: ``risk, S_bin0``, ``pred``)."""
    task = task_of(model)
    names = list(getattr(model, "class_names", None) or [])
    if task is None:
        return [f"p_{c}" for c in names]
    return list(task.columns(names))


def label_columns(model) -> list[str]:
    """The names of the model's label columns (``task.label_columns()``: ``time, event``, ``target``)."""
    task = task_of(model)
    return ["label"] if task is None else list(task.label_columns())


def no_classes_text(model) -> str:
    """What a model without classes says where a class model prints its decision rule."""
    return f"no classes: the task predicts {', '.join(prediction_columns(model))} ({task_words(model)})"


def label_values(y) -> list[float]:
    """A bag's label of a task without classes (``Bag.y``: a float, a float vector, ``(time, event)``) as floats."""
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    return [float(v) for v in np.asarray(y, dtype=np.float64).reshape(-1)]


def label_text(model, y) -> str:
    """A bag's label in words: the class name for class models, else ``time 14, event 1`` / ``target 11.7``."""
    if predicts_classes(model):
        return _name(int(y), list(getattr(model, "class_names", None) or []))
    values = label_values(y)
    cols = label_columns(model)
    if len(cols) != len(values):
        cols = [f"label_{i}" for i in range(len(values))] if len(values) > 1 else ["label"]
    return ", ".join(f"{c} {_num(v)}" for c, v in zip(cols, values))


@dataclass(frozen=True)
class TaskPrediction:
    """One bag's prediction by a model whose task has no classes: its values, in the label's units."""

    columns: tuple[str, ...]
    values: tuple[float, ...]
    task: str  # the task (and head) in words: "survival, discrete head"
    detail: str = ""  # e.g. "mean of 5 members"

    def _headline(self) -> list[tuple[str, float]]:
        if not self.columns:
            return []
        stem = self.columns[0].split("_")[0]
        return [(c, v) for c, v in zip(self.columns, self.values) if c.split("_")[0] == stem]

    @property
    def shown(self) -> list[tuple[str, float]]:
        """The headline values: the first column and the columns that share its stem (``pred_0``, ``pred_1``;
        survival's ``risk`` without the ``S_bin*`` curve), at most four."""
        return self._headline()[:4]

    @property
    def reason(self) -> str:
        """``survival, discrete head`` (and the detail)."""
        return self.task + (f", {self.detail}" if self.detail else "")

    @property
    def text(self) -> str:
        """``risk -0.432 (survival, discrete head)``, ``pred 12.3 (regression)``."""
        headline = self._headline()
        if not headline:
            return f"no prediction ({self.reason})"
        values = ", ".join(f"{c} {_num(v)}" for c, v in headline[:4]) + (", ..." if len(headline) > 4 else "")
        return f"{values} ({self.reason})"

    def __str__(self) -> str:
        return self.text


def task_predictions(model, out, batch=None) -> tuple[np.ndarray | None, str]:
    """``([B, p] predictions, detail)`` of a ``predict`` output by a model without classes.

    ``out.extras["prediction"]`` when the model put it there (``MILModel.predict``); for an ensemble, whose output
    has none, the mean of its members' predictions of ``batch`` (detail: ``mean of M members``); else None.
    """
    pred = (getattr(out, "extras", None) or {}).get("prediction")
    if pred is not None:
        return pred.detach().float().cpu().numpy().reshape(pred.shape[0], -1), ""
    members = getattr(model, "members", None)
    if members and batch is not None:
        preds = [m.predict(batch).extras.get("prediction") for m in members]
        if all(p is not None for p in preds):
            stacked = np.stack([p.detach().float().cpu().numpy().reshape(p.shape[0], -1) for p in preds])
            return stacked.mean(0), f"mean of {len(preds)} members"
    return None, ""


def task_prediction(model, out, b: int = 0, batch=None) -> TaskPrediction | None:
    """Bag ``b``'s :class:`TaskPrediction` from a ``predict`` output (see :func:`task_predictions`), or None."""
    values, detail = task_predictions(model, out, batch)
    if values is None:
        return None
    cols = (getattr(out, "extras", None) or {}).get("prediction_columns") or prediction_columns(model)
    row = values[b]
    if len(cols) != len(row):
        cols = [f"pred_{i}" for i in range(len(row))]
    return TaskPrediction(tuple(str(c) for c in cols), tuple(float(v) for v in row), task_words(model), detail)


def attach_decisions(model, out) -> None:
    """Put the classes (``extras["pred"]``, ``[B]`` long) and the rule in words (``extras["decision_rule"]``)
    into a ``predict`` output; an ensemble's vote is its class."""
    import torch

    if not predicts_classes(model):
        return
    extras = out.extras
    if "vote" in extras:
        pred = extras["vote"]
    else:
        probs = out.bag_probs.detach().float().cpu().numpy()
        pred = torch.as_tensor(predict_classes(probs, model_threshold(model)), device=out.bag_probs.device)
    extras[PRED_KEY] = pred
    extras[RULE_KEY] = rule_text(model)


def recorded_threshold(config: dict[str, Any] | str | Path) -> float | None:
    """The threshold a checkpoint's ``config.json`` recorded (chosen on validation), or None."""
    if not isinstance(config, dict):
        from milzoo._untrusted import read_json

        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        try:
            config = read_json(path, "checkpoint config", ValueError)
        except (ValueError, OSError):
            return None
    if not isinstance(config, dict):
        return None
    value = config.get("threshold")
    if value is None and isinstance(config.get("extra"), dict):
        value = config["extra"].get("threshold")
    return valid_threshold(value)


def apply_recorded_threshold(model, config: dict[str, Any] | str | Path | float | None):
    """Set ``model.decision_threshold`` from a checkpoint's config (or folder, or a bare threshold); returns the
    model.  Ensembles keep their members' thresholds and are left alone."""
    if hasattr(model, "members"):
        return model
    if isinstance(config, (int, float)) or config is None:
        value = valid_threshold(config)
    else:
        value = recorded_threshold(config)
    if value is not None and getattr(model, "num_classes", 2) != 2:
        log.warning("a threshold of %.3f is recorded for a %s-class model; it decides by argmax", value,
                    getattr(model, "num_classes", "?"))
        value = None
    model.decision_threshold = value
    return model


def summary_has_classes(summary: dict[str, Any]) -> bool:
    """Whether a run summary reports class metrics (accuracy or F1) that a decision rule produced."""
    for section in ("last", "selected", "ensemble"):
        for metrics in (summary.get(section) or {}).values():
            if isinstance(metrics, dict) and ("acc" in metrics or "f1" in metrics):
                return True
    return False


def summary_rule_text(summary: dict[str, Any]) -> str:
    """How the classes behind a run summary's accuracy and F1 were chosen (from its folds' thresholds)."""
    folds = summary.get("folds") or []
    thresholds = [valid_threshold(((f or {}).get("selected") or {}).get("threshold")) for f in folds
                  if isinstance(f, dict)]
    chosen = [t for t in thresholds if t is not None]
    if not chosen:
        return "argmax"
    shown = ", ".join(f"{t:.3f}" for t in chosen[:10]) + (", ..." if len(chosen) > 10 else "")
    head = ("p(class 1) >= each fold's threshold chosen on validation" if len(chosen) == len(thresholds)
            else "p(class 1) >= the fold's threshold chosen on validation where one was, else argmax")
    return f"{head} ({shown})"
