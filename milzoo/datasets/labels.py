"""Survival labels from table rows: ``(time, event)`` with the censorship convention made explicit.

In the core so that every dataset source (slide tables, CSV bag sets) reads them the same way; the survival
task itself is the plugin milzoo-survival.

milzoo's survival label is a pair ``(time, event)`` per bag: ``event = 1`` when the event (death, recurrence)
was observed at ``time``, ``event = 0`` when the bag is *censored* at ``time`` (followed up to then, event not
seen).  The tables of CLAM, MCAT, Patch-GCN and PORPOISE store the opposite indicator: a column
``censorship`` where **1 means censored** (``event = 1 - censorship``).  :func:`read_survival_labels` reads
either convention, by column name, and refuses a table where the two disagree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from milzoo.errors import DataError

__all__ = ["CENSORSHIP_COLUMN", "EVENT_COLUMN", "TIME_COLUMN", "read_survival_labels"]

#: the default column names: those of the CLAM/MCAT/PORPOISE tables (``censorship``: 1 = censored)
TIME_COLUMN = "survival_months"
CENSORSHIP_COLUMN = "censorship"
EVENT_COLUMN = "event"


def _columns(rows: Any) -> tuple[list[str], int, Any]:
    """(column names, number of rows, getter(column) -> list of values) of a DataFrame, a mapping of columns
    or a sequence of row mappings (``csv.DictReader`` rows)."""
    if hasattr(rows, "columns") and hasattr(rows, "__getitem__") and hasattr(rows, "shape"):  # a pandas DataFrame
        names = [str(c) for c in rows.columns]
        return names, int(rows.shape[0]), lambda c: list(rows[c])
    if isinstance(rows, Mapping):
        names = [str(c) for c in rows]
        lengths = {len(v) for v in rows.values()}
        if len(lengths) > 1:
            raise DataError(f"the label columns have different lengths ({sorted(lengths)}); give one value per row "
                            "in every column.")
        return names, (lengths.pop() if lengths else 0), lambda c: list(rows[c])
    if isinstance(rows, Iterable) and not isinstance(rows, (str, bytes)):
        rows = list(rows)
        names: list[str] = []
        for r in rows:
            if not isinstance(r, Mapping):
                raise DataError(f"read_survival_labels needs rows as mappings of column -> value (e.g. csv.DictReader "
                                f"rows), a mapping of columns or a DataFrame; got a row of type {type(r).__name__}.")
            names += [str(c) for c in r if str(c) not in names]
        return names, len(rows), lambda c: [r.get(c) for r in rows]
    raise DataError(f"read_survival_labels needs table rows (a DataFrame, a mapping of columns, or row mappings); "
                    f"got {type(rows).__name__}.")


def _numbers(values: Sequence[Any], column: str, source: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if isinstance(v, str):
            v = v.strip()
        try:
            out[i] = math.nan if v is None or v == "" else float(v)
        except (TypeError, ValueError):
            raise DataError(f"{source}: column {column!r} holds {v!r} at row {i + 1}, which is not a number; "
                            f"fix that row (every {column} must be a number).") from None
    return out


def _indicator(values: np.ndarray, column: str, meaning: str, source: str) -> np.ndarray:
    bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
    if bad.size:
        shown = ", ".join(f"row {i + 1}: {values[i]:g}" for i in bad[:5])
        raise DataError(
            f"{source}: column {column!r} must hold 0 or 1 ({meaning}), but {bad.size} row(s) do not ({shown}"
            f"{', ...' if bad.size > 5 else ''}). A missing or other value leaves the censorship of those bags "
            "unknown; fix the column (or drop those rows)."
        )
    return values


def read_survival_labels(
    rows: Any,
    *,
    time_column: str = TIME_COLUMN,
    censorship_column: str | None = CENSORSHIP_COLUMN,
    event_column: str | None = EVENT_COLUMN,
    source: str = "the label table",
) -> np.ndarray:
    """Read survival labels ``(time, event)`` from table rows: a float ``[n, 2]`` array, column 0 the time,
    column 1 the event indicator (**1 = event observed, 0 = censored**), what ``MILDataset.labels`` returns for
    the survival task.

    ``rows`` is a pandas DataFrame, a mapping of column name -> values, or a sequence of row mappings (the rows
    of ``csv.DictReader``).  The defaults read CLAM/MCAT/PORPOISE tables: the time from ``survival_months``
    and the indicator from ``censorship``, where **1 means censored** (``event = 1 - censorship``).  A table
    may instead (or also) have an ``event`` column where 1 means the event was observed.  The convention is
    taken from the column *names*, never guessed from the values:

    - only ``censorship_column`` present: ``event = 1 - censorship``;
    - only ``event_column`` present: ``event`` as it is;
    - both present: they must agree on every row (``event == 1 - censorship``), else the table is ambiguous
      and refused;
    - neither present: refused, naming the columns looked for.

    Pass ``censorship_column=None`` or ``event_column=None`` to ignore that column, and other names for tables
    that call them differently (e.g. ``time_column="OS.time", event_column="OS"``).  Times must be finite and
    non-negative, indicators 0 or 1 (``"0"``, ``"1"``, ``0.0``, ``True`` are accepted); anything else raises
    :class:`milzoo.errors.DataError` naming the rows and the fix.  ``source`` names the table in messages.
    """
    names, n, get = _columns(rows)
    if time_column not in names:
        raise DataError(f"{source} has no time column {time_column!r} (columns: {', '.join(names) or 'none'}). Name "
                        "the column holding the follow-up time with time_column (the default is CLAM/MCAT's "
                        f"{TIME_COLUMN!r}).")
    time = _numbers(get(time_column), time_column, source)
    bad = np.flatnonzero(~np.isfinite(time) | (time < 0))
    if bad.size:
        shown = ", ".join(f"row {i + 1}: {time[i]:g}" for i in bad[:5])
        raise DataError(f"{source}: {bad.size} time(s) in {time_column!r} are missing, negative or not finite ({shown}"
                        f"{', ...' if bad.size > 5 else ''}); a follow-up time is a duration >= 0. Fix or drop those "
                        "rows.")
    has_c = censorship_column is not None and censorship_column in names
    has_e = event_column is not None and event_column in names
    if not has_c and not has_e:
        looked = [c for c in (censorship_column, event_column) if c is not None]
        raise DataError(
            f"{source} has neither of the censoring columns looked for ({', '.join(repr(c) for c in looked) or 'none'}"
            f"; columns: {', '.join(names)}). Name the column with censorship_column (1 = censored, CLAM/MCAT's "
            "convention) or event_column (1 = event observed)."
        )
    event = None
    if has_c:
        c = _indicator(_numbers(get(censorship_column), censorship_column, source), censorship_column,
                       "1 = censored, 0 = event observed", source)
        event = 1.0 - c
    if has_e:
        e = _indicator(_numbers(get(event_column), event_column, source), event_column,
                       "1 = event observed, 0 = censored", source)
        if event is not None:
            clash = np.flatnonzero(e != event)
            if clash.size:
                raise DataError(
                    f"{source} has both {censorship_column!r} (1 = censored) and {event_column!r} (1 = event "
                    f"observed), and they disagree on {clash.size} of {n} rows (e.g. row {clash[0] + 1}: "
                    f"{censorship_column} = {1 - event[clash[0]]:g}, {event_column} = {e[clash[0]]:g}), so which "
                    "bags are censored is ambiguous: one of the columns uses the other convention or is wrong. Keep "
                    "the right one (pass censorship_column=None or event_column=None to ignore the other)."
                )
        event = e
    return np.stack([time, event], axis=1) if n else np.zeros((0, 2), dtype=np.float64)
