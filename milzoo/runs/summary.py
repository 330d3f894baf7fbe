"""A run's summary: the folds' ``result.json`` files read back and aggregated into ``RUN/summary.json``.

Per metric and split: the mean, the sample standard deviation over the folds (``n - 1``; ``std_ddof`` says so
in the file, and a single fold has none: ``null``) and each fold's value (an undefined value, such as the
AUC of a held-out fold with one class, is counted, never averaged away); the validation-selected epoch's
metrics; the optimistic best-epoch-on-test numbers, labelled as such; and for ``protocol.kind = "cv_ensemble"``
the fold models' majority vote on the test split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from milzoo._atomic import atomic_write_json
from milzoo._untrusted import read_json
from milzoo.checkpoint.predictions import read_predictions
from milzoo.datasets.protocols import fold_count
from milzoo.errors import RunDirError
from milzoo.metrics import STD_DDOF, json_safe, mean_std
from milzoo.model.ensemble import ensemble_metrics
from milzoo.recipe import Recipe, read_toml, validate_recipe
from milzoo.runs.rundir import FOLD_RESULT, RECIPE, SUMMARY, fold_dir, fold_is_complete

_OPTIMISTIC = "OPTIMISTIC: each fold's epoch chosen on its own test split (as some papers report)"


def summarize(run_dir: str | Path, write: bool = True) -> dict[str, Any]:
    """Assemble ``summary.json`` from the folds' ``result.json`` files (every fold the protocol defines)."""
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE).exists():
        raise RunDirError(f"{run_dir} is not a milzoo run directory (no recipe.toml).")
    recipe = validate_recipe(read_toml(run_dir / RECIPE), str(run_dir / RECIPE))
    num_folds = fold_count(recipe.root.protocol)
    missing = [i for i in range(num_folds) if not fold_is_complete(run_dir, i)]
    if missing:
        raise RunDirError(
            f"{run_dir} is missing the results of folds {missing}; run them (`milzoo run RECIPE --out {run_dir} "
            f"--fold I`) before summarising."
        )
    results = [read_fold_result(fold_dir(run_dir, i) / FOLD_RESULT) for i in range(num_folds)]
    summary = _summary(recipe, results)
    if recipe.root.protocol.kind == "cv_ensemble":
        ensemble = _ensemble_on_test(run_dir, results)
        if ensemble is not None:
            summary["ensemble"] = {"test": ensemble}
    summary["folds"] = results
    summary = json_safe(summary)  # standard JSON: undefined metrics are null, never a bare NaN
    if write:
        atomic_write_json(run_dir / SUMMARY, summary)
    return summary


def read_fold_result(path: Path) -> dict:
    """A fold's ``result.json``; a damaged one is refused with the fix (delete it and resume)."""
    fix = (f"Delete it and continue the run with --resume: {path.parent.name} is then evaluated again from "
           "its last checkpoint.")
    try:
        result = read_json(path, "fold result", RunDirError)
    except RunDirError as exc:
        raise RunDirError(f"{exc} {fix}") from None
    if not isinstance(result, dict):
        raise RunDirError(f"{path} holds a JSON {type(result).__name__}, not a fold result. {fix}")
    return result


def _summary(recipe: Recipe, results: list[dict]) -> dict[str, Any]:
    """The aggregated sections: last epoch, validation-selected epoch, best epoch on test."""
    summary: dict[str, Any] = {
        "name": recipe.root.name,
        "protocol": recipe.root.protocol.kind,
        "num_folds": len(results),
        "std_ddof": STD_DDOF,  # every "std" below is the sample standard deviation over the folds (n - 1)
        "last": aggregate(results, "last"),
    }
    if any("selected" in r for r in results):
        summary["selected"] = aggregate(results, "selected")
    on_test = [{"best_epoch_on_test": {"test": r["best_epoch_on_test"]}} for r in results if "best_epoch_on_test" in r]
    if on_test:
        summary["best_epoch_on_test"] = {"note": _OPTIMISTIC,
                                         **aggregate(on_test, "best_epoch_on_test").get("test", {})}
    return summary


def aggregate(results: list[dict], section: str) -> dict[str, Any]:
    """``{split: {metric: {"mean", "std", "values"[, "undefined_in"]}}}`` over the folds' ``section``."""
    per_split: dict[str, dict[str, list]] = {}
    for result in results:
        for split, metrics in (result.get(section) or {}).items():
            if not isinstance(metrics, dict):
                continue
            for name, value in metrics.items():
                if isinstance(value, (int, float)) or value is None:
                    value = math.nan if value is None else value
                    per_split.setdefault(split, {}).setdefault(name, []).append(value)
    out: dict[str, Any] = {}
    for split, metrics in per_split.items():
        out[split] = {}
        for name, values in metrics.items():
            mean, std = mean_std(values)
            entry = {"mean": mean, "std": std, "values": [v if math.isfinite(v) else None for v in values]}
            undefined = sum(1 for v in values if not math.isfinite(v))
            if undefined:  # e.g. AUC of a held-out fold with one class: said, never silently averaged away
                entry["undefined_in"] = undefined
            out[split][name] = entry
    return out


def _ensemble_on_test(run_dir: Path, results: list[dict]) -> dict[str, Any] | None:
    """The fold models' vote on the shared test split (each fold's best model, else its last); ``None`` when
    a fold wrote no test predictions."""
    probs, thresholds, y_true = [], [], None
    for i, result in enumerate(results):
        folder = fold_dir(run_dir, i)
        predictions = folder / "best" / "predictions-test.csv"
        if not predictions.exists():
            predictions = folder / "last" / "predictions-test.csv"
        if not predictions.exists():
            return None
        _, y_true, p = read_predictions(predictions)
        probs.append(p)
        thresholds.append((result.get("selected") or {}).get("threshold"))
    if not probs:
        return None
    return ensemble_metrics(probs, thresholds, y_true)
