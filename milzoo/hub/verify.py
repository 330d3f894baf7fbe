"""Checking a shared model against its model card: ``milzoo verify REF`` measures the model again on the
held-out data its recipe defines and compares every metric with the one ``config.json`` records.

The recorded metrics were measured by the run that trained the weights (never copied from a paper).  Here the
recipe shipped in the folder (``recipe.toml``) rebuilds the same folds with the same seed, each model (or each
ensemble member, on its own held-out fold) is loaded through the strict checkpoint path, and
:func:`milzoo.train.measure` evaluates it as the trainer did.  On the CPU type that trained it, in fp32, the
numbers are equal to the last bit; another CPU type may differ in the last digits (docs/hub.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from milzoo.checkpoint import load_model, read_config
from milzoo.errors import UserError
from milzoo.hub._folders import inside_folder
from milzoo.hub._runs import RECIPE

log = logging.getLogger(__name__)

__all__ = ["Check", "Verification", "verify_folder", "verify"]


@dataclass(frozen=True)
class Check:
    split: str
    metric: str
    recorded: float
    measured: float

    @property
    def equal(self) -> bool:
        return self.recorded == self.measured or (math.isnan(self.recorded) and math.isnan(self.measured))


@dataclass
class Verification:
    folder: Path
    what: str  # "one model" or "N-member cross-validation estimate"
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.equal for c in self.checks)

    def lines(self) -> list[str]:
        out = [f"{self.folder}: {self.what}"]
        for c in self.checks:
            mark = "ok " if c.equal else "DIFFERS"
            out.append(f"  {mark} {c.split:16s} {c.metric:12s} recorded {c.recorded!r:24s} measured {c.measured!r}")
        return out


def _members(folder: Path, cfg: dict[str, Any]) -> list[tuple[int, Path, float | None]]:
    ens = cfg.get("ensemble")
    if isinstance(ens, dict):
        paths, folds = ens.get("members") or [], ens.get("folds") or []
        thresholds = ens.get("thresholds") or [None] * len(paths)
        if len(folds) != len(paths):
            raise UserError(f"{folder}: the ensemble does not record which fold each member was trained on, so "
                            "its held-out data cannot be rebuilt.")
        return [(int(f), inside_folder(folder, p), t) for f, p, t in zip(folds, paths, thresholds)]
    source = cfg.get("source") or {}
    if not isinstance(source.get("fold"), int):
        raise UserError(f"{folder} does not record the fold its model was trained on (config.json `source.fold`), "
                        "so its held-out data cannot be rebuilt; it was not written by `milzoo export`.")
    return [(source["fold"], folder, cfg.get("threshold"))]


def verify_folder(folder: str | Path) -> Verification:
    """Measure the model in a Hub folder again and compare with the metrics its config.json records."""
    from milzoo.datasets import folds_for
    from milzoo.recipe import load_recipe
    from milzoo.train.measure import measure

    folder = Path(folder)
    cfg = read_config(folder)
    recorded = (cfg.get("metrics") or {}).get("splits") or {}
    if not recorded:
        raise UserError(f"{folder} records no metrics (config.json `metrics.splits`), so there is nothing to "
                        "verify; export the model from the run that trained it (`milzoo export RUN_DIR OUT`).")
    if not (folder / RECIPE).is_file():
        raise UserError(f"{folder} has no {RECIPE}, so its held-out data cannot be rebuilt.")
    if (cfg.get("metrics") or {}).get("source") == "summary.json" and "std" not in cfg["metrics"]:
        raise UserError(f"{folder} records the metrics of the ensemble's vote on a separate test split "
                        "(cv_ensemble); `milzoo verify` re-measures single models and cross-validation "
                        "estimates only.")
    recipe = load_recipe(folder / RECIPE)
    folds = {f.fold: f for f in folds_for(recipe)}
    members = _members(folder, cfg)
    per_member: list[dict[str, dict[str, float]]] = []
    for fold, path, threshold in members:
        if fold not in folds:
            raise UserError(f"{folder}: fold {fold} does not exist in the folds its recipe defines.")
        evals = {s: folds[fold].evals[s] for s in recorded if s in folds[fold].evals}
        missing = sorted(set(recorded) - set(evals))
        if missing:
            raise UserError(f"{folder}: the recipe's fold {fold} has no split(s) {missing} to measure.")
        log.info("measuring fold %d on %s", fold, ", ".join(evals))
        per_member.append(measure(load_model(path), recipe, evals, threshold))
    checks = []
    for split, metrics in recorded.items():
        for metric, value in metrics.items():
            values = [m[split].get(metric, math.nan) for m in per_member]
            measured = values[0] if len(values) == 1 else float(np.mean(values))
            checks.append(Check(split, metric, float(value), float(measured)))
    spread = (cfg.get("metrics") or {}).get("std") or {}
    if len(per_member) > 1:
        for split, metrics in spread.items():
            for metric, value in metrics.items():
                values = [m[split].get(metric, math.nan) for m in per_member]
                checks.append(Check(split, f"{metric} (sd)", float(value), float(np.std(values, ddof=1))))
    what = "one model" if len(members) == 1 else \
        f"{len(members)}-member cross-validation estimate (mean over the members' held-out folds)"
    return Verification(folder, what, checks)


def verify(ref: str | Path, **fetch_kwargs) -> Verification:
    """:func:`verify_folder` of a zoo name, local folder, or Hub reference (``org/name``, ``hf-hub:org/name``)."""
    from milzoo.hub._client import fetch, parse_ref

    kind, target, _ = parse_ref(ref)
    folder = fetch(ref, **fetch_kwargs) if kind in ("zoo", "hf-hub") else Path(target)
    if kind == "fsspec":
        raise UserError(f"{ref}: copy the folder locally first; `milzoo verify` reads local folders and the zoo.")
    return verify_folder(folder)
