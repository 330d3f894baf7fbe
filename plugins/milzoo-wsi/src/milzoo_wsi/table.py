"""The slide table (which slides, their labels, patients and split) and the train/test split.

CSV columns: ``slide_id`` and the label columns of the target (required); the patient (``patient_id``, or
``case_id`` as CLAM writes it, or the column the recipe names with ``patient_column``) and ``split``
(``train`` or ``test``) are optional.  Other columns are ignored.  The label columns depend on ``target``:

- ``"class"`` (the default): ``label``, a class name or index;
- ``"survival"``: the follow-up time (``survival_months``) and the censoring indicator, read by
  :func:`milzoo.datasets.read_survival_labels` with the CLAM/MCAT/PORPOISE defaults: ``censorship``, where
  **1 means censored**, or ``event``, where 1 means the event was observed;
- ``"regression"``: one or more numeric target columns (``target``).

A ``slide_id`` may carry the whole-slide file's extension (``TCGA-XX.svs``); the ``slides`` dataset matches
it to the feature file ``TCGA-XX.h5`` either way.

Every split groups the slides by patient: the held-out test patients (:func:`stratified_group_split`), the
folds (``milzoo.datasets.protocols``), and an official ``split`` column, which is refused when a patient
has slides on both sides (:func:`check_split_column`).
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import fsspec
import numpy as np

from milzoo.datasets import label_strata, read_survival_labels
from milzoo.datasets.checks import class_indices
from milzoo.datasets.files import read_data_bytes
from milzoo.errors import DataError, MilzooWarning

SPLITS = ("train", "test")

#: what a slide's label is: a class (``label``), a survival pair (time, event) or continuous target(s)
Target = Literal["class", "survival", "regression"]
TARGETS: tuple[str, ...] = ("class", "survival", "regression")

#: the label column defaults of each target (survival: CLAM/MCAT/PORPOISE's, where censorship 1 = censored)
TIME_COLUMN = "survival_months"
CENSORSHIP_COLUMN = "censorship"
EVENT_COLUMN = "event"
TARGET_COLUMNS = ("target",)

#: the ``class_names`` of a survival dataset: its one "class" is the risk the survival task predicts
SURVIVAL_CLASS_NAMES = ["risk"]

#: the columns a patient id is taken from when the recipe names none, in this order (CLAM writes ``case_id``)
PATIENT_COLUMNS = ("patient_id", "case_id")

#: a TCGA barcode's patient part: its first 12 characters, ``TCGA-<site>-<participant>``
TCGA_PATIENT = re.compile(r"^(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})(?:$|[-._])", re.IGNORECASE)


@dataclass
class SlideTable:
    slide_ids: list[str]
    #: ``[n]`` int64 class indices (target "class"), ``[n, 2]`` float (time, event) with event 1 = observed
    #: (target "survival"), ``[n]`` or ``[n, t]`` float (target "regression": one or t target columns)
    labels: np.ndarray
    #: the classes; ``["risk"]`` for survival, the target column names for regression
    class_names: list[str]
    patient_ids: list[str] | None
    splits: list[str] | None  # "train"/"test" per slide, when the table has a split column
    source: str = ""
    #: the column ``patient_ids`` came from (None: the table has no patient column)
    patient_column: str | None = None
    #: the table's columns, as written
    columns: list[str] = field(default_factory=list)
    #: what a label is: "class", "survival" or "regression"
    target: str = "class"
    #: the columns the labels were read from (``label``; the time and censoring columns; the target columns)
    label_columns: list[str] = field(default_factory=lambda: ["label"])
    #: per slide, the values of ``label_columns`` as the table writes them (the published split repeats them)
    label_values: list[tuple[str, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.slide_ids)

    def label_of(self, i: int) -> Any:
        """Slide ``i``'s label as a bag carries it: a class index (int), a target (float), a tuple of targets,
        or a ``(time, event)`` tuple of floats (event 1 = observed); hashable, so slides can be compared."""
        y = self.labels[i]
        if self.target == "class":
            return int(y)
        if np.ndim(y) == 0:
            return float(y)
        return tuple(float(v) for v in y)

    def label_fields(self, i: int) -> dict[str, str]:
        """Slide ``i``'s label as columns of a slide table: ``{"label": class name}``, or the label columns
        with the values the table wrote (so a published split is read back with the same options)."""
        if self.target == "class":
            return {"label": self.class_names[int(self.labels[i])]}
        return dict(zip(self.label_columns, self.label_values[i]))

    def describe_label(self, label: Any) -> str:
        """A label (as :meth:`label_of` gives it) in words, for messages."""
        if self.target == "class":
            return self.class_names[int(label)]
        if self.target == "survival":
            time, event = label
            return f"{self.label_columns[0]} {time:g}, {'event' if event else 'censored'}"
        values = label if isinstance(label, tuple) else (label,)
        return ", ".join(f"{c} {v:g}" for c, v in zip(self.label_columns, values))

    @property
    def groups(self) -> np.ndarray:
        """Patient ids, or the slide ids when the table has none."""
        return np.asarray(self.patient_ids if self.patient_ids is not None else self.slide_ids, dtype=object)

    @property
    def grouping(self) -> str:
        """How the slides are grouped into patients, in words (for split descriptions and messages)."""
        if self.patient_column is None:
            return (f"by slide: the table has no patient column (looked for {', '.join(PATIENT_COLUMNS)}; "
                    "`patient_column` names another)")
        if self.patient_column == "slide_id":
            return "by slide (`patient_column = \"slide_id\"`)"
        return f"by patient (column {self.patient_column})"


def _problems_error(source: str, problems: list[str]) -> DataError:
    shown = "\n".join(f"  - {p}" for p in problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return DataError(f"slide table {source} has {len(problems)} problem(s):\n{shown}{more}\nFix the table and try again.")


def _class_index(labels: list[str], class_names: Sequence[str] | None, source: str) -> tuple[np.ndarray, list[str]]:
    """Labels -> indices.  Names are matched first; integers index ``class_names``."""
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(set(names)) != len(names):
            raise DataError(f"`class_names` {names} has duplicates.")
        pos = {n: i for i, n in enumerate(names)}
        out, bad = [], set()
        for lab in labels:
            if lab in pos:
                out.append(pos[lab])
            elif lab.lstrip("-").isdigit() and 0 <= int(lab) < len(names):
                out.append(int(lab))
            else:
                bad.add(lab)
        if bad:
            raise DataError(
                f"slide table {source} has labels {sorted(bad)} that are not among `class_names` {names} "
                f"(nor integer indices 0..{len(names) - 1}); fix the labels or `class_names`."
            )
        if len(names) < 2:
            raise DataError("`class_names` needs at least two classes.")
        return np.asarray(out, dtype=np.int64), names
    if all(lab.lstrip("-").isdigit() for lab in labels):
        ints = [int(lab) for lab in labels]
        if min(ints) < 0:
            raise DataError(
                f"slide table {source} has negative integer labels; use class indices 0..k-1 or class names."
            )
        # 0..k-1 with every class present (labels {1, 2} must not become three classes with class 0 empty)
        y, k = class_indices(np.asarray(ints), f"slide table {source} (column `label`)")
        return y, [str(i) for i in range(k)]
    names = sorted(set(labels))
    if len(names) < 2:
        raise DataError(
            f"slide table {source} has a single class {names}; give `class_names` listing every class "
            "(a model needs at least two)."
        )
    pos = {n: i for i, n in enumerate(names)}
    return np.asarray([pos[lab] for lab in labels], dtype=np.int64), names


def _patient_column(fields: list[str], patient_column: str | None, url: str) -> str | None:
    if patient_column is not None:
        if patient_column not in fields:
            raise DataError(
                f"the slide table {url} has no column {patient_column!r}, which `patient_column` names (its columns "
                f"are {fields}); name one of them, or leave `patient_column` unset to use "
                f"{' or '.join(PATIENT_COLUMNS)} when the table has one."
            )
        return patient_column
    present = [c for c in PATIENT_COLUMNS if c in fields]
    return present[0] if present else None


def _same_partition(a: list[str], b: list[str]) -> bool:
    """Whether two id columns group the rows the same way (whatever the ids are called)."""
    pairs = set(zip(a, b))
    return len(pairs) == len(set(a)) == len(set(b))


def class_names_problem(target: str) -> str:
    """Why ``class_names`` cannot be given with a ``target`` other than "class" (one paragraph)."""
    own = '["risk"]' if target == "survival" else "the target column names"
    return (f"`class_names` lists classes, but `target = \"{target}\"` reads {target} labels, which have no "
            f"classes (the dataset's class_names are {own}); remove `class_names`, or set `target = \"class\"` "
            "for class labels.")


def _number(text: str) -> float | None:
    """A table cell as a number (None when it is not one)."""
    try:
        return float(text)
    except ValueError:
        return None


def _same_value(text: str) -> Any:
    """A label cell in a form that compares equal for equal numbers (``12`` and ``12.0``)."""
    x = _number(text)
    return text if x is None else x


@dataclass(frozen=True)
class _LabelSpec:
    """Which columns hold a slide's label, and how each row's cells are checked."""

    target: str
    columns: tuple[str, ...]  # the label columns present in the table, read in this order
    censorship: str | None = None  # survival: the censorship column (1 = censored), when present
    event: str | None = None  # survival: the event column (1 = event observed), when present

    def problems(self, sid: str, cells: tuple[str, ...]) -> list[str]:
        """What is wrong with one slide's label cells (empty when nothing)."""
        if self.target == "class":
            return [] if cells[0] else [f"slide {sid!r} has no label"]
        out = []
        values = dict(zip(self.columns, cells))
        if self.target == "regression":
            for col in self.columns:
                x = _number(values[col])
                if x is None or not math.isfinite(x):
                    what = "is empty" if not values[col] else f"is {values[col]!r}, not a finite number"
                    out.append(f"slide {sid!r}: target {col} {what}")
            return out
        time_col = self.columns[0]
        t = _number(values[time_col])
        if t is None or not math.isfinite(t) or t < 0:
            what = "is empty" if not values[time_col] else f"is {values[time_col]!r}, not a time >= 0"
            out.append(f"slide {sid!r}: {time_col} {what}")
        flags = {}
        for col, meaning in ((self.censorship, "1 = censored, 0 = event observed"),
                             (self.event, "1 = event observed, 0 = censored")):
            if col is None:
                continue
            x = _number(values[col])
            if x not in (0.0, 1.0):
                out.append(f"slide {sid!r}: {col} is {values[col]!r}; it must be 0 or 1 ({meaning})")
            else:
                flags[col] = x
        if len(flags) == 2 and flags[self.censorship] == flags[self.event]:
            out.append(f"slide {sid!r}: {self.censorship} = {flags[self.censorship]:g} (1 = censored) and "
                       f"{self.event} = {flags[self.event]:g} (1 = event observed) contradict each other")
        return out


def _label_spec(fields: list[str], url: str, target: str, time_column: str, censorship_column: str | None,
                event_column: str | None, target_columns: Sequence[str]) -> _LabelSpec:
    """The label columns of ``target`` in a table with columns ``fields`` (a DataError when some are missing)."""
    if target not in TARGETS:
        raise DataError(f"unknown target {target!r} for the slide table {url}; use one of {', '.join(TARGETS)}.")
    missing = [c for c in ("slide_id", "label") if c not in fields and (c == "slide_id" or target == "class")]
    if missing:
        needs = "`slide_id` and `label`" if target == "class" else "`slide_id` and the label columns"
        hint = (" For survival or regression labels set `target = \"survival\"` or `\"regression\"`."
                if target == "class" else "")
        raise DataError(
            f"the slide table {url} lacks the column(s) {missing} (it has {fields}); it needs {needs}, optionally "
            f"a patient column ({', '.join(PATIENT_COLUMNS)}, or the one `patient_column` names) and `split`.{hint}"
        )
    if target == "class":
        return _LabelSpec("class", ("label",))
    if target == "survival":
        # the columns (and the censorship convention) exactly as read_survival_labels takes them: its messages
        # name a missing time column, or a table with neither censoring column
        read_survival_labels({c: [] for c in fields}, time_column=time_column, censorship_column=censorship_column,
                             event_column=event_column, source=f"the slide table {url}")
        cens = censorship_column if censorship_column is not None and censorship_column in fields else None
        event = event_column if event_column is not None and event_column in fields else None
        return _LabelSpec("survival", tuple(c for c in (time_column, cens, event) if c is not None), cens, event)
    cols = [str(c) for c in target_columns]
    if not cols or len(set(cols)) != len(cols):
        raise DataError(f"`target_columns` {cols} must name at least one column, each once.")
    missing = [c for c in cols if c not in fields]
    if missing:
        raise DataError(
            f"the slide table {url} lacks the target column(s) {missing} that `target_columns` names (its columns "
            f"are {fields}); name the columns holding the regression targets with `target_columns`."
        )
    return _LabelSpec("regression", tuple(cols))


def _label_array(spec: _LabelSpec, values: list[tuple[str, ...]], class_names: Sequence[str] | None, url: str,
                 time_column: str) -> tuple[np.ndarray, list[str]]:
    """The labels array and the class names of checked label cells."""
    if spec.target == "class":
        return _class_index([v[0] for v in values], class_names, url)
    if spec.target == "regression":
        y = np.asarray([[float(c) for c in v] for v in values], dtype=np.float64)
        return (y[:, 0] if y.shape[1] == 1 else y), list(spec.columns)
    rows = [dict(zip(spec.columns, v)) for v in values]
    y = read_survival_labels(rows, time_column=time_column, censorship_column=spec.censorship,
                             event_column=spec.event, source=f"the slide table {url}")
    return np.asarray(y, dtype=np.float64), list(SURVIVAL_CLASS_NAMES)


def read_slide_table(url: str, class_names: Sequence[str] | None = None, *,
                     patient_column: str | None = None, target: Target = "class",
                     time_column: str = TIME_COLUMN, censorship_column: str | None = CENSORSHIP_COLUMN,
                     event_column: str | None = EVENT_COLUMN,
                     target_columns: Sequence[str] = TARGET_COLUMNS) -> SlideTable:
    """Read and check a slide table (all problems are reported at once).

    Labels (``target``):

    - ``"class"``: the column ``label``.  Class order: ``class_names`` when given, else ``0..max`` for integer
      labels, else the sorted label names (``normal`` < ``tumor``, ``LUAD`` < ``LUSC``).
    - ``"survival"``: ``(time, event)`` pairs, a float ``[n, 2]`` array with **event 1 = observed, 0 =
      censored**, read by :func:`milzoo.datasets.read_survival_labels` from ``time_column`` and
      ``censorship_column`` (**1 = censored**, CLAM/MCAT/PORPOISE's convention) and/or ``event_column``
      (1 = event observed); both present, they must agree.  ``class_names`` is ``["risk"]``.
    - ``"regression"``: the numbers of ``target_columns``, a float ``[n]`` array for one column, ``[n, t]``
      for t; ``class_names`` is the column names.  Missing or non-finite values are refused, rows named.

    With a target other than ``"class"`` the table needs no ``label`` column and ``class_names`` must not be
    given.

    Patients: the column ``patient_column`` (``"slide_id"``: every slide its own patient), else the first of
    :data:`PATIENT_COLUMNS` the table has.  A table with both ``patient_id`` and ``case_id`` that group the
    slides differently is refused.  Without any, every slide is its own patient; if slide ids then share a
    TCGA patient barcode (``TCGA-XX-XXXX``), a warning names the columns looked for.

    A slide listed twice with the same label, patient and split is kept once (a warning names it); listed
    twice with different values, it is an error.
    """
    if target != "class" and class_names is not None:
        raise DataError(class_names_problem(target))
    raw = read_data_bytes(url, "the slide table", "check `table`")  # a regular file that fits in memory
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"the slide table {url} is not UTF-8 text; save it as a CSV file.") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    reader.fieldnames = fields
    spec = _label_spec(fields, url, target, time_column, censorship_column, event_column, target_columns)
    what_label = "label" if target == "class" else " and ".join(spec.columns)
    pcol = _patient_column(fields, patient_column, url)
    other_pcol = next((c for c in PATIENT_COLUMNS if c in fields and c != pcol), None) if patient_column is None else None
    has_split = "split" in fields
    ids, labels, pats, others, splits, problems = [], [], [], [], [], []
    seen: dict[str, tuple[int, tuple]] = {}
    repeated: list[str] = []
    for line, row in enumerate(reader, start=2):
        sid = (row.get("slide_id") or "").strip()
        cells = tuple((row.get(c) or "").strip() for c in spec.columns)
        if not sid and not any(cells) and not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # blank line
        if not sid:
            problems.append(f"line {line}: empty slide_id")
            continue
        pat = (row.get(pcol) or "").strip() if pcol else ""
        sp = (row.get("split") or "").strip().lower() if has_split else ""
        values = (tuple(_same_value(c) for c in cells), pat, sp)
        if sid in seen:
            first, before = seen[sid]
            if before == values:
                repeated.append(f"{sid!r} (lines {first} and {line})")
            else:
                what = [n for n, x, y in zip((what_label, pcol or "patient", "split"), before, values) if x != y]
                problems.append(f"line {line}: slide {sid!r} repeats line {first} with another {' and '.join(what)}")
            continue
        seen[sid] = (line, values)
        problems += [f"line {line}: {p}" for p in spec.problems(sid, cells)]
        if pcol and not pat:
            problems.append(f"line {line}: slide {sid!r} has no {pcol}")
        if has_split and sp not in SPLITS:
            problems.append(f"line {line}: slide {sid!r} has split {sp!r}; use train or test")
        ids.append(sid)
        labels.append(cells)
        pats.append(pat)
        others.append((row.get(other_pcol) or "").strip() if other_pcol else "")
        splits.append(sp)
    if problems:
        raise _problems_error(url, problems)
    if not ids:
        raise DataError(f"the slide table {url} lists no slides.")
    if repeated:
        warnings.warn(
            f"the slide table {url} lists {len(repeated)} slide(s) twice with the same label, patient and split "
            f"({', '.join(repeated[:5])}{', ...' if len(repeated) > 5 else ''}); each is used once. Remove the "
            "repeated rows to silence this warning.",
            MilzooWarning, stacklevel=2,
        )
    if other_pcol and all(others) and not _same_partition(pats, others):
        raise DataError(
            f"the slide table {url} has both {pcol} and {other_pcol} columns, and they group the slides into "
            f"different patients ({len(set(pats))} by {pcol}, {len(set(others))} by {other_pcol}); set "
            "`patient_column` to the one that names the patient."
        )
    y, names = _label_array(spec, labels, class_names, url, time_column)
    table = SlideTable(
        slide_ids=ids, labels=y, class_names=names, patient_ids=pats if pcol else None,
        splits=splits if has_split else None, source=url, patient_column=pcol, columns=fields,
        target=target, label_columns=list(spec.columns), label_values=labels,
    )
    if pcol is None:
        warn_tcga_patients(table)
    return table


def tcga_patients(slide_ids: Sequence[str]) -> dict[str, list[str]]:
    """TCGA patient barcodes (``TCGA-XX-XXXX``, upper case) shared by several slide ids -> those ids."""
    by: dict[str, list[str]] = defaultdict(list)
    for sid in slide_ids:
        m = TCGA_PATIENT.match(sid)
        if m:
            by[m.group(1).upper()].append(sid)
    return {p: v for p, v in by.items() if len(v) > 1}


def warn_tcga_patients(table: SlideTable) -> None:
    """Warn when a table without a patient column has several slides of one TCGA patient."""
    multi = tcga_patients(table.slide_ids)
    if not multi:
        return
    ex = ", ".join(f"{p} ({len(v)} slides)" for p, v in list(multi.items())[:3])
    warnings.warn(
        f"the slide table {table.source} has no patient column (looked for {', '.join(PATIENT_COLUMNS)}), so every "
        f"slide counts as its own patient, but {len(multi)} TCGA patients have several slides, e.g. {ex}: the "
        "test split and the folds can put one patient's slides on both sides, and the test metrics then "
        "measure recognising the patient. Add a case_id or patient_id column (the barcode's first 12 "
        "characters, TCGA-XX-XXXX), or name the column with `patient_column`.",
        MilzooWarning, stacklevel=3,
    )


def check_split_column(table: SlideTable) -> None:
    """Refuse an official split (the ``split`` column) that puts one patient's slides on both sides."""
    if table.splits is None or table.patient_ids is None:
        return
    sides: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"train": [], "test": []})
    for sid, pat, sp in zip(table.slide_ids, table.patient_ids, table.splits):
        sides[pat][sp].append(sid)
    both = {p: s for p, s in sides.items() if s["train"] and s["test"]}
    if not both:
        return
    shown = "; ".join(
        f"{p} (train: {', '.join(s['train'][:3])}; test: {', '.join(s['test'][:3])})" for p, s in list(both.items())[:5]
    )
    more = f"; and {len(both) - 5} more" if len(both) > 5 else ""
    raise DataError(
        f"the split column of the slide table {table.source} puts slides of {len(both)} patient(s) (column "
        f"{table.patient_column}) on both sides of the train/test split: {shown}{more}. A model tested on a "
        "patient it trained on is measured on recognising the patient, not on the task. Put every slide of "
        "these patients on one side, or remove the split column so that `test_fraction` draws a split grouped "
        "by patient."
    )


def stratified_group_split(labels, groups, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the test slides: ``test_fraction`` of the groups (patients), stratified.

    The strata are :func:`milzoo.datasets.label_strata` of the labels: the class of class labels, the event
    indicator of ``(time, event)`` pairs, the quartile of a regression target.  A group's stratum is the most
    frequent stratum of its slides (ties: the lowest).  The groups are split with scikit-learn's
    ``train_test_split`` (seeded), so every slide of a patient lands on the same side.  When some stratum has
    too few groups to stratify, the split falls back to an unstratified one (warning).
    """
    from sklearn.model_selection import train_test_split

    strata = label_strata(np.asarray(labels))
    groups = np.asarray(groups, dtype=object)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    uniq = list(dict.fromkeys(groups.tolist()))
    if len(uniq) < 2:
        raise DataError("a train/test split needs at least two patients (groups).")
    g_label = []
    for g in uniq:
        counts = Counter(strata[groups == g].tolist())
        top = max(counts.values())
        g_label.append(min(c for c, v in counts.items() if v == top))
    g_label = np.asarray(g_label)
    idx = np.arange(len(uniq))
    try:
        _, test_g = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=g_label)
    except ValueError:
        warnings.warn(
            "too few patients per stratum (class, survival event indicator or target quartile) to stratify "
            "the train/test split; it is drawn unstratified",
            stacklevel=2,
        )
        _, test_g = train_test_split(idx, test_size=test_fraction, random_state=seed)
    test_groups = {uniq[i] for i in test_g}
    mask = np.asarray([g in test_groups for g in groups.tolist()], dtype=bool)
    assert not set(groups[mask].tolist()) & set(groups[~mask].tolist()), "a patient on both sides of the split"
    return mask


def write_split_table(rows: Sequence[dict], url: str) -> None:
    """Write ``slide_id, <label columns>, [patient column,] split`` rows as CSV (a valid slide table).

    The label columns are ``label`` for class labels, else the columns the labels were read from, with the
    values the table wrote (``survival_months, censorship``; the regression targets).

    The columns are the keys of the rows, in order (the patient column keeps the name the table gave it);
    a column empty on every row is left out.  Feeding the file back as ``table`` reproduces the split exactly.
    """
    rows = list(rows)
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["slide_id", "label", "split"]
    cols = [k for k in keys if k in ("slide_id", "label", "split") or any(r.get(k) for r in rows)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in w.fieldnames})
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, buf.getvalue().encode("utf-8"))
