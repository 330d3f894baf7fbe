"""The slide table (which slides, their labels, patients and split) and the train/test split.

CSV columns: ``slide_id`` and ``label`` (required), ``patient_id`` and
``split`` (optional; ``train`` or ``test``).  Other columns are ignored.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import fsspec
import numpy as np

from milzoo.datasets.checks import class_indices
from milzoo.errors import DataError

SPLITS = ("train", "test")


@dataclass
class SlideTable:
    slide_ids: list[str]
    labels: np.ndarray  # [n] int64 class indices
    class_names: list[str]
    patient_ids: list[str] | None
    splits: list[str] | None  # "train"/"test" per slide, when the table has a split column
    source: str = ""

    def __len__(self) -> int:
        return len(self.slide_ids)

    @property
    def groups(self) -> np.ndarray:
        """Patient ids, or the slide ids when the table has none."""
        return np.asarray(self.patient_ids if self.patient_ids is not None else self.slide_ids, dtype=object)


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


def read_slide_table(url: str, class_names: Sequence[str] | None = None) -> SlideTable:
    """Read and check a slide table (all problems are reported at once).

    Class order: ``class_names`` when given, else ``0..max`` for integer labels,
    else the sorted label names (``normal`` < ``tumor``, ``LUAD`` < ``LUSC``).
    """
    try:
        with fsspec.open(url, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"the slide table {url} does not exist; check `table`.") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read the slide table {url} ({type(exc).__name__}: {exc}).") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"the slide table {url} is not UTF-8 text; save it as a CSV file.") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    reader.fieldnames = fields
    missing = [c for c in ("slide_id", "label") if c not in fields]
    if missing:
        raise DataError(
            f"the slide table {url} lacks the column(s) {missing} (it has {fields}); it needs `slide_id` and "
            "`label`, optionally `patient_id` and `split`."
        )
    has_pat, has_split = "patient_id" in fields, "split" in fields
    ids, labels, pats, splits, problems = [], [], [], [], []
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        sid = (row.get("slide_id") or "").strip()
        lab = (row.get("label") or "").strip()
        if not sid and not lab and not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # blank line
        if not sid:
            problems.append(f"line {line}: empty slide_id")
            continue
        if sid in seen:
            problems.append(f"line {line}: slide {sid!r} repeats line {seen[sid]}")
            continue
        seen[sid] = line
        if not lab:
            problems.append(f"line {line}: slide {sid!r} has no label")
        pat = (row.get("patient_id") or "").strip() if has_pat else ""
        if has_pat and not pat:
            problems.append(f"line {line}: slide {sid!r} has no patient_id")
        sp = (row.get("split") or "").strip().lower() if has_split else ""
        if has_split and sp not in SPLITS:
            problems.append(f"line {line}: slide {sid!r} has split {sp!r}; use train or test")
        ids.append(sid)
        labels.append(lab)
        pats.append(pat)
        splits.append(sp)
    if problems:
        raise _problems_error(url, problems)
    if not ids:
        raise DataError(f"the slide table {url} lists no slides.")
    y, names = _class_index(labels, class_names, url)
    return SlideTable(
        slide_ids=ids, labels=y, class_names=names, patient_ids=pats if has_pat else None,
        splits=splits if has_split else None, source=url,
    )


def stratified_group_split(labels, groups, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the test slides: ``test_fraction`` of the groups (patients), stratified.

    A group's stratum is its most frequent label (ties: the lowest class).  The
    groups are split with scikit-learn's ``train_test_split`` (seeded), so every
    slide of a patient lands on the same side.  When some class has too few
    groups to stratify, the split falls back to an unstratified one (warning).
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    uniq = list(dict.fromkeys(groups.tolist()))
    if len(uniq) < 2:
        raise DataError("a train/test split needs at least two patients (groups).")
    g_label = []
    for g in uniq:
        counts = Counter(labels[groups == g].tolist())
        top = max(counts.values())
        g_label.append(min(c for c, v in counts.items() if v == top))
    g_label = np.asarray(g_label)
    idx = np.arange(len(uniq))
    try:
        _, test_g = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=g_label)
    except ValueError:
        warnings.warn(
            "too few patients per class to stratify the train/test split; it is drawn unstratified",
            stacklevel=2,
        )
        _, test_g = train_test_split(idx, test_size=test_fraction, random_state=seed)
    test_groups = {uniq[i] for i in test_g}
    return np.asarray([g in test_groups for g in groups.tolist()], dtype=bool)


def write_split_table(rows: Sequence[dict], url: str) -> None:
    """Write ``slide_id, label, [patient_id,] split`` rows as CSV (a valid slide table).

    Feeding the file back as ``table`` reproduces the split exactly.
    """
    rows = list(rows)
    cols = ["slide_id", "label", "patient_id", "split"]
    if not any(r.get("patient_id") for r in rows):
        cols.remove("patient_id")  # an empty patient_id column would not read back
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
