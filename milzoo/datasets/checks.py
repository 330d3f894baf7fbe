"""Checks every dataset loader can share: label conventions, finite features, and groups (patients) kept apart.

Bad data must never turn into a confident number: labels {1, 2} silently
becoming three classes (class 0 empty), a single class trained to "accuracy
1.000", or a NaN that surfaces epochs later as a diverged loss.  These helpers
find such problems when the data is loaded and name the file, the row and the fix.
"""

from __future__ import annotations

import numpy as np

from milzoo.errors import DataError

#: the largest magnitude a float32 feature can hold; bigger float64 values become inf
FLOAT32_MAX = float(np.finfo(np.float32).max)

#: the label conventions :func:`class_indices` accepts, as the error messages state them
LABEL_CONVENTIONS = "{0, 1}, {-1, +1} or the class indices 0..k-1 (k >= 2, every class present)"


def _shown(values: np.ndarray, limit: int = 8) -> str:
    vals = [f"{v:g}" for v in values[:limit]]
    return "{" + ", ".join(vals) + (", ..." if len(values) > limit else "") + "}"


def class_indices(labels: np.ndarray, source: str, what: str = "labels") -> tuple[np.ndarray, int]:
    """Numeric labels -> ``(class indices int64, number of classes)``.

    Accepts {0, 1}, {-1, +1} (-1 becomes class 0) and 0..k-1 with every class
    present; refuses anything else (non-integers, gaps, a single class) with a
    :class:`DataError` naming the labels found and the fix.
    """
    values = np.asarray(labels, dtype=np.float64)
    if values.size == 0:
        raise DataError(f"{source} has no {what}.")
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise DataError(f"{source} has a non-finite label ({values[row]:g}) at row {row + 1}; every label must be a "
                        f"class number ({LABEL_CONVENTIONS}).")
    found = np.unique(values)
    fractional = found[found != np.round(found)]
    if fractional.size:
        raise DataError(
            f"{source} has non-integer {what} {_shown(fractional)} (all labels found: {_shown(found)}); "
            f"labels must be {LABEL_CONVENTIONS}. Round or relabel them in the file."
        )
    ints = found.astype(np.int64)
    if len(ints) < 2:
        raise DataError(
            f"{source} has a single class (every label is {ints[0]}); a classifier needs bags of at least two "
            f"classes, and its accuracy would mean nothing. Check the label column (labels must be "
            f"{LABEL_CONVENTIONS})."
        )
    if ints.tolist() == [-1, 1]:
        return (values > 0).astype(np.int64), 2
    if ints.tolist() == list(range(len(ints))):
        return values.astype(np.int64), len(ints)
    if ints.min() >= 1 and ints.tolist() == list(range(1, len(ints) + 1)):
        fix = "subtract 1 from every label (classes 1..k become 0..k-1)"
    elif ints.min() < 0:
        fix = "use 0 for the negative class (or -1/+1 for a binary problem)"
    else:
        fix = "renumber the classes 0..k-1 without gaps"
    raise DataError(
        f"{source} has the {what} {_shown(found)}, which is none of the accepted conventions "
        f"({LABEL_CONVENTIONS}); taken as class indices they would make classes without a single bag. "
        f"Fix the file: {fix}."
    )


def first_nonfinite_row(x: np.ndarray) -> int | None:
    """Index of the first row holding NaN, inf or a value too large for float32, or None."""
    x = np.asarray(x)
    if x.size == 0:
        return None
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (np.abs(x) > FLOAT32_MAX)
    if not bad.any():
        return None
    return int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])


def check_finite_features(x: np.ndarray, source: str, row_label: str = "row", row_offset: int = 1) -> None:
    """Raise a :class:`DataError` naming the first row of ``x`` with NaN/inf (or a float32 overflow).

    ``row_offset`` turns a 0-based index into what the user sees (1: the line of a headerless CSV).
    """
    row = first_nonfinite_row(x)
    if row is None:
        return
    arr = np.asarray(x)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(arr) | (np.abs(arr) > FLOAT32_MAX)
    values = arr[row].reshape(-1)
    col = int(np.flatnonzero(bad[row].reshape(-1))[0])
    value = float(values[col])
    n_bad = int(bad.sum())
    why = ("is too large for float32 (the training dtype) and would become inf"
           if np.isfinite(value) else f"is {value:g}")
    raise DataError(
        f"{source}: feature {col + 1} of {row_label} {row + row_offset} {why} "
        f"({n_bad} such value{'s' if n_bad != 1 else ''} in the file). NaN/inf features train into a non-finite "
        "loss or meaningless predictions; fix or drop those rows (or impute them) and try again."
    )


def shared_groups(named_groups: dict[str, np.ndarray | None]) -> list[tuple[str, str, list]]:
    """``(split a, split b, groups in both)`` for every pair of splits that share a group (e.g. a patient).

    Splits whose groups are None (a dataset without groups) are skipped.
    """
    sets = {name: set(np.asarray(g).tolist()) for name, g in named_groups.items() if g is not None}
    names = list(sets)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = sets[a] & sets[b]
            if both:
                out.append((a, b, sorted(both, key=str)))
    return out


def check_groups_disjoint(named_groups: dict[str, np.ndarray | None], context: str) -> None:
    """Raise a :class:`DataError` when a group (a patient) has bags in two of the named splits.

    ``context`` says whose splits they are (``"fold 0"``); the message names the splits, the groups
    and the fix.  A model evaluated on a patient it trained on (or was selected on) measures recognising
    the patient, not the task.
    """
    clashes = shared_groups(named_groups)
    if not clashes:
        return
    parts = [f"{a} and {b} share {len(g)} group(s) ({', '.join(map(str, g[:5]))}{', ...' if len(g) > 5 else ''})"
             for a, b, g in clashes]
    raise DataError(
        f"the splits of {context} are not separated by group (patient): {'; '.join(parts)}. A model evaluated "
        "on a patient it trained on (or was selected on) measures recognising that patient, not the task. Give "
        "each patient's bags to one split only (the dataset's split column or files), or let the protocol draw "
        "the splits, which it groups by patient."
    )
