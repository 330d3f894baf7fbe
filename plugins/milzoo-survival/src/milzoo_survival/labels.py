"""Survival labels from table rows: ``(time, event)`` with the censorship convention made explicit.

The reader lives in the core (:mod:`milzoo.datasets.labels`), so that every dataset source (slide tables, CSV
bag sets) reads survival labels the same way; it is re-exported here as part of milzoo-survival's API.

milzoo's survival label is a pair ``(time, event)`` per bag: **``event = 1`` when the event was observed at
``time``, ``event = 0`` when the bag is censored at ``time``**.  The tables of CLAM, MCAT, Patch-GCN and PORPOISE
store the opposite indicator, ``censorship``, where 1 means censored (``event = 1 - censorship``).
"""

from __future__ import annotations

from milzoo.datasets.labels import CENSORSHIP_COLUMN, EVENT_COLUMN, TIME_COLUMN, read_survival_labels

__all__ = ["CENSORSHIP_COLUMN", "EVENT_COLUMN", "TIME_COLUMN", "read_survival_labels"]
