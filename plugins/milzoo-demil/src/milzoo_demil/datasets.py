"""``mipl_candidates``: give the bags of any dataset source MIPL candidate label sets.

Multi-instance partial-label learning (MIPL, docs/methods.md section 5) trains on
bags whose label is only known to lie in a candidate set ``S``.  This source
wraps another dataset source (the ``base`` table) and attaches to every bag
either

- a generated set: the bag's label plus ``num_false`` other labels drawn
  uniformly without replacement (the MIPL benchmarks' ``r``), seeded and
  independent of loading order; or
- a set read from a CSV file (``path``): one line per bag,
  ``bag_id,label,label,...`` (class indices; no header), which must contain the
  bag's own label.

The bag label ``y`` stays the true label (used for evaluation only); training
losses such as ``demil`` read ``batch.candidates``.
"""

from __future__ import annotations

import csv
import io
import zlib
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from milzoo.datasets.batch import Bag
from milzoo.components.base import ComponentConfig, DatasetSource
from milzoo.datasets.base import MILDataset
from milzoo.datasets.files import read_data_bytes
from milzoo.errors import DataError


class CandidateSetDataset(MILDataset):
    """A dataset whose bags carry ``candidates`` from a ``[len, k]`` 0/1 matrix.

    ``candidate_sets`` is public so per-bag state (the ``demil`` loss) can be
    initialised without loading any bag.
    """

    def __init__(self, base: MILDataset, candidate_sets: np.ndarray):
        sets = np.asarray(candidate_sets, dtype=np.float32)
        if sets.shape != (len(base), base.num_classes):
            raise ValueError(f"candidate_sets must be [{len(base)}, {base.num_classes}], got {sets.shape}")
        self.base = base
        self.candidate_sets = sets
        self.class_names = list(base.class_names)
        self.instance_shape = tuple(base.instance_shape)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def labels(self) -> np.ndarray:
        return self.base.labels

    @property
    def groups(self) -> np.ndarray | None:
        return self.base.groups

    @property
    def bag_ids(self) -> list[str]:
        return self.base.bag_ids

    @property
    def has_instance_labels(self) -> bool:
        return self.base.has_instance_labels

    def get_bag(self, i: int) -> Bag:
        bag = self.base[int(i)]
        return replace(bag, candidates=torch.from_numpy(self.candidate_sets[int(i)].copy()))

    def instance_matrix(self) -> torch.Tensor:
        return self.base.instance_matrix()


def generate_candidate_sets(
    labels: np.ndarray, num_classes: int, num_false: int, seed: int | list[int]
) -> np.ndarray:
    """``[n, k]`` 0/1 sets: each bag's label plus ``num_false`` other labels, drawn with ``seed``."""
    labels = np.asarray(labels, dtype=np.int64)
    if num_false > num_classes - 1:
        raise DataError(
            f"num_false = {num_false} false-positive candidates cannot be drawn from the {num_classes - 1} "
            f"other classes of a {num_classes}-class dataset; set num_false <= {num_classes - 1}."
        )
    rng = np.random.default_rng(seed)
    sets = np.zeros((len(labels), num_classes), dtype=np.float32)
    for i, y in enumerate(labels):
        sets[i, y] = 1.0
        if num_false:
            others = np.array([c for c in range(num_classes) if c != y])
            sets[i, rng.choice(others, size=num_false, replace=False)] = 1.0
    return sets


def read_candidate_csv(url: str, ds: MILDataset) -> np.ndarray:
    """Candidate sets of ``ds``'s bags from ``bag_id,label,label,...`` lines."""
    raw = read_data_bytes(url, "candidate file", "check `data.path` in the recipe")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"candidate file {url} is not UTF-8 text; save it as a CSV file.") from None
    k = ds.num_classes
    table: dict[str, list[int]] = {}
    line_of: dict[str, int] = {}
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        row = [c.strip() for c in row if c.strip()]
        if not row:
            continue
        try:
            labels = [int(float(c)) for c in row[1:]]
        except ValueError:
            raise DataError(f"{url} line {line_no}: candidate labels must be class indices, got {row[1:]}") from None
        if not labels or any(c < 0 or c >= k for c in labels):
            raise DataError(f"{url} line {line_no}: candidate labels must be class indices in 0..{k - 1}")
        if row[0] in table and sorted(set(table[row[0]])) != sorted(set(labels)):
            raise DataError(f"{url}: bag {row[0]!r} is listed twice with different candidate sets (lines "
                            f"{line_of[row[0]]} and {line_no}); give one line per bag.")
        table[row[0]] = labels
        line_of.setdefault(row[0], line_no)
    sets = np.zeros((len(ds), k), dtype=np.float32)
    ys = ds.labels
    for i, bid in enumerate(ds.bag_ids):
        if bid not in table:
            raise DataError(f"{url} has no candidate set for bag {bid!r}; give one line per bag.")
        sets[i, table[bid]] = 1.0
        if sets[i, ys[i]] == 0:
            raise DataError(
                f"{url}: the candidate set of bag {bid!r} lacks its label {int(ys[i])}; "
                "a candidate set must contain the true label."
            )
    return sets


class MIPLCandidates(DatasetSource):
    """Wraps a dataset source and adds MIPL candidate label sets (generated or from a CSV)."""

    name = "mipl_candidates"

    class Config(ComponentConfig):
        base: dict[str, Any] = Field(description="the wrapped dataset: a table with `name` and its options")
        num_false: int | None = Field(
            default=None,
            ge=0,
            description="generate sets: the label plus this many other labels (MIPL's r); default 1 "
            "when no `path` is given",
        )
        path: str | None = Field(default=None, description="CSV of `bag_id,label,label,...` lines instead")
        seed: int = Field(default=0, description="seed of the generated sets")
        splits: list[str] | None = Field(default=None, description="splits that get sets (default: all)")

        @field_validator("base")
        @classmethod
        def _base_table(cls, value):
            from milzoo import registry

            name = value.get("name")
            if not isinstance(name, str):
                raise ValueError("base needs a `name`: the dataset source to wrap, e.g. {name = \"classic\", ...}")
            try:
                source = registry.get_component("dataset", name)
            except Exception as exc:  # noqa: BLE001 - reported as a recipe problem
                raise ValueError(f"base: {exc}") from None
            try:
                source.Config.model_validate({k: v for k, v in value.items() if k != "name"})
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
                )
                raise ValueError(f"base dataset {name!r} options: {problems}") from None
            return value

        @model_validator(mode="after")
        def _one_source(self):
            if self.path is not None and self.num_false is not None:
                raise ValueError("give either `num_false` (generate sets) or `path` (read them), not both")
            return self

    def load(self):
        from milzoo import registry

        cfg = self.config
        source_cls = registry.get_component("dataset", cfg.base["name"])
        source = source_cls(source_cls.Config.model_validate({k: v for k, v in cfg.base.items() if k != "name"}))
        splits = source.load()
        unknown = set(cfg.splits or []) - set(splits)
        if unknown:
            raise DataError(
                f"mipl_candidates: the base dataset has no split(s) {sorted(unknown)}; "
                f"its splits are {sorted(splits)}."
            )
        out = {}
        for split, ds in splits.items():
            if cfg.splits is not None and split not in cfg.splits:
                out[split] = ds
                continue
            if cfg.path is not None:
                sets = read_candidate_csv(cfg.path, ds)
            else:
                num_false = 1 if cfg.num_false is None else cfg.num_false
                seed = [cfg.seed, zlib.crc32(split.encode())]
                sets = generate_candidate_sets(ds.labels, ds.num_classes, num_false, seed)
            out[split] = CandidateSetDataset(ds, sets)
        return out
