"""Running a recipe into a run directory, resuming it, and summarising it.

Run directory layout::

    RUN/
      recipe.toml        the resolved recipe (every default filled in)
      run.json           command, time, versions of milzoo, libraries and plugins; how each start ended
      metrics.jsonl      one JSON object per evaluation (fold, epoch, split, metrics)
      summary.json       final metrics: per fold, mean and std, ensemble
      log.txt            the run's log
      fold-00/
        last/            model.safetensors + config.json (+ predictions-<split>.csv)
        best/            the validation-selected model (when a validation split exists)
        state.safetensors  everything --resume needs (model, optimiser, RNG, history)
        result.json      the fold's final result (written when the fold is complete)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from milzoo.checkpoint import _model as ckpt
from milzoo.checkpoint.predictions import read_predictions
from milzoo.model.build import build_dataset, build_model
from milzoo.model.ensemble import ensemble_metrics
from milzoo.errors import RunDirError, TrainingDiverged, UserError
from milzoo.metrics import json_safe, mean_std
from milzoo.datasets.protocols import make_folds
from milzoo.recipe._recipe import Recipe, load_recipe, read_toml, validate_recipe
from milzoo.model.sizing import check_model_size
from milzoo.train.trainer import Trainer
from milzoo._untrusted import read_json
from milzoo.runs.environment import environment

log = logging.getLogger("milzoo")

#: recipe keys that may differ between a run and its --resume
RESUME_FREE_KEYS = {("train", "progress"), ("train", "num_workers"), ("train", "device"), ("train", "threads")}


def _fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold-{fold:02d}"


def _strip_free(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    for a, b in RESUME_FREE_KEYS:
        d.get(a, {}).pop(b, None)
    return d


def _setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _await_recipe(run_dir: Path, seconds: float = 30.0) -> None:
    """Per-fold jobs (a Slurm array) may start together: wait while another one is writing recipe.toml."""
    deadline = time.monotonic() + seconds
    while not (run_dir / "recipe.toml").exists() and time.monotonic() < deadline:
        if not any(p.name.startswith(".recipe.toml.") for p in run_dir.iterdir()):
            return  # nobody is writing it
        time.sleep(0.1)


#: what a fold folder holds once it has trained anything
_FOLD_RESULTS = (ckpt.STATE, "result.json", "last", "best")
#: files written atomically in a run directory (a kill mid-write leaves ``.<name>.<random>`` beside them)
_ATOMIC_NAMES = re.compile(r"^\.(recipe\.toml|run\.json|summary\.json|metrics\.jsonl|result\.json|"
                           r"state\.safetensors|model\.safetensors|config\.json|predictions-.+\.csv)\.[A-Za-z0-9_]{8}$")


def holds_results(run_dir: Path) -> bool:
    """Whether a run directory holds anything a run produced (a checkpoint, a result, a metric line)."""
    if (run_dir / "summary.json").exists():
        return True
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        return True
    return any((fd / name).exists() for fd in run_dir.glob("fold-*") for name in _FOLD_RESULTS)


def remove_orphaned_temp_files(directory: Path) -> list[Path]:
    """Delete the temp files of atomic writes interrupted by a kill (``.state.safetensors.ab12cd34``...)."""
    removed = []
    if not directory.is_dir():
        return removed
    for sub in (directory, *(p for p in directory.iterdir() if p.is_dir())):
        for p in sub.iterdir():
            if p.is_file() and _ATOMIC_NAMES.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
    for p in removed:
        log.info("removed %s, left by a write that was interrupted (the file it was replacing is intact)", p)
    return removed


def _check_out_path(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a directory; give a directory for the run (new or "
                          "existing).")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"--out {run_dir} cannot be created: {parent} is a file. Choose another --out.")
            break


def check_run_dir(recipe: Recipe, run_dir: Path, resume: bool, overwrite: bool, fold: int | None) -> str:
    """Decide, without changing anything, what the run does with its directory.

    Returns ``"new"`` (create it), ``"continue"`` (``--resume``, or a per-fold job joining a run) or
    ``"replace"`` (``--overwrite`` of a run, or a failed start that holds no results).  Raises
    :class:`RunDirError` with the fix otherwise.
    """
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                          "--overwrite replaces it. Pass one of them.")
    _check_out_path(run_dir)
    resolved = recipe.to_dict()
    if not (run_dir.exists() and any(run_dir.iterdir())):
        if resume:
            raise RunDirError(f"nothing to resume: {run_dir} does not exist. Run without --resume to start it.")
        return "new"
    if fold is not None and not resume:
        _await_recipe(run_dir)
    is_run = (run_dir / "recipe.toml").exists() or (run_dir / "metrics.jsonl").exists()
    if resume or (fold is not None and (run_dir / "recipe.toml").exists()):
        if not (run_dir / "recipe.toml").exists():
            raise RunDirError(f"{run_dir} is not a milzoo run directory (no recipe.toml); cannot resume it.")
        stored = validate_recipe(read_toml(run_dir / "recipe.toml"), str(run_dir / "recipe.toml")).to_dict()
        if _strip_free(stored) != _strip_free(resolved):
            raise RunDirError(
                f"the recipe differs from the one {run_dir} was started with, so it cannot be resumed into it. "
                "Run the original recipe (it is saved as recipe.toml in the run directory: "
                f"`milzoo run {run_dir / 'recipe.toml'} --out {run_dir} --resume`) or use a new --out."
            )
        return "continue"
    if not is_run:
        raise RunDirError(
            f"{run_dir} is not empty and is not a milzoo run directory; refusing to "
            f"{'--overwrite' if overwrite else 'write into'} it. Choose another --out."
        )
    if not overwrite and holds_results(run_dir):
        raise RunDirError(
            f"the run directory {run_dir} exists already and holds results. Choose another --out, pass "
            "--resume to continue that run, or --overwrite to replace it."
        )
    return "replace"  # --overwrite, or a start that failed before any result (only its log is replaced)


def prepare_run_dir(recipe: Recipe, run_dir: Path, resume: bool, overwrite: bool, fold: int | None) -> None:
    """Create, continue or replace the run directory (rank 0 only when distributed).

    Call it once the data has loaded: ``--overwrite`` removes the old run only here.  The directory is
    checked again (``run`` checked it before loading the data, to fail early), because a per-fold job
    started beside this one may have created it meanwhile.
    """
    action = check_run_dir(recipe, run_dir, resume, overwrite, fold)
    if action == "continue":
        return
    if action == "replace":
        if not overwrite:
            log.info("replacing %s: an earlier start there failed before writing any result", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(run_dir / "recipe.toml", recipe.to_toml())


def _trim_metrics(run_dir: Path, keep) -> None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    lines = path.read_text().splitlines()
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written line from a killed run
        if keep(rec):
            kept.append(json.dumps(rec))
    if len(kept) == len(lines):
        return  # nothing to drop: do not rewrite under concurrent per-fold jobs that append to it
    ckpt.atomic_write_text(path, "".join(l + "\n" for l in kept))


class MetricsWriter:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def __call__(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")
            fh.flush()


def run(
    recipe: Recipe | str | Path | dict,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    fold: int | None = None,
    progress: bool | None = None,
    distributed=None,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Run a recipe; return the summary (also written to ``RUN/summary.json``).

    ``jobs``: train the folds in that many worker processes (``milzoo.jobs``), each with
    ``train.threads`` torch threads (1 when unset); the results equal a sequential run's.
    """
    from milzoo.runs.jobs import check_jobs

    jobs = check_jobs(jobs, fold, distributed)
    if not isinstance(recipe, Recipe):
        from milzoo.registry import _provenance as provenance
        from milzoo.registry import _table as registry

        # resuming into a run whose plugin was uninstalled: name the distribution it recorded
        recorded = provenance.from_run_dir(out) if resume and out is not None else {}
        with registry.recorded_providers(recorded):
            recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise UserError("pass overrides together with a recipe path or dict, not with a loaded Recipe")
    run_dir = Path(out) if out is not None else Path("runs") / recipe.root.name
    is_main = distributed is None or distributed.rank == 0
    # Nothing on disk changes until the data has loaded and the model is known to fit: a missing data
    # file, NaN features or too many folds must not cost the finished run that --overwrite would replace.
    if is_main:
        check_run_dir(recipe, run_dir, resume, overwrite, fold)
    if jobs > 1:  # the parent only forks: no thread pool of its own for the workers to inherit
        torch.set_num_threads(1)
    elif recipe.root.train.threads is not None:
        torch.set_num_threads(recipe.root.train.threads)
    torch.manual_seed(recipe.root.seed)
    splits = build_dataset(recipe)
    folds = make_folds(recipe.root.protocol, splits, recipe.root.seed)
    if fold is not None:
        if not 0 <= fold < len(folds):
            raise UserError(f"--fold {fold} is out of range; this recipe has folds 0..{len(folds) - 1}.")
        todo = [folds[fold]]
    else:
        todo = folds
    first = todo[0].train
    check_model_size(lambda: build_model(recipe, first.instance_shape, first.num_classes, first.class_names),
                     f"recipe {recipe.source}")
    if distributed is None:
        prepare_run_dir(recipe, run_dir, resume, overwrite, fold)
    else:  # rank 0 checks and prepares the directory; the others wait (or stop with its error)
        distributed.on_main(lambda: prepare_run_dir(recipe, run_dir, resume, overwrite, fold))
        distributed.require_shared(run_dir / "recipe.toml")
    handler = _setup_logging(run_dir) if is_main else None
    recorded = False  # run.json of this start is written: its outcome is recorded when the start ends
    outcome, error = "failed", ""
    try:
        if is_main:
            for fd in todo:  # temp files of writes a kill interrupted (only our folds': others may be writing)
                remove_orphaned_temp_files(_fold_dir(run_dir, fd.fold))
            if fold is None:
                remove_orphaned_temp_files(run_dir)
            info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": sys.argv, "resume": resume,
                    "fold": fold, "recipe_source": recipe.source, **environment()}
            runs_path = run_dir / "run.json"
            previous = _previous_run_info(runs_path)
            info["history"] = previous.get("history", []) + [{"started": info["started"], "resume": resume, "fold": fold}]
            ckpt.atomic_write_json(runs_path, info)
            recorded = True
        if is_main:
            def keep(rec):
                fd = _fold_dir(run_dir, rec.get("fold", 0))
                if (fd / "result.json").exists():
                    return True
                if fold is not None and rec.get("fold") != fold:
                    return True  # another job's fold: not ours to trim
                st = fd / ckpt.STATE
                if not st.exists():
                    return False
                done = ckpt.load_training_state(st)["epoch"]
                return rec.get("epoch", -1) <= done
            _trim_metrics(run_dir, keep)
        writer = MetricsWriter(run_dir / "metrics.jsonl", enabled=is_main)
        show = recipe.root.train.progress if progress is None else progress
        pending = []
        for fd in todo:
            if (_fold_dir(run_dir, fd.fold) / "result.json").exists():
                log.info("fold %d already complete; skipping", fd.fold)
            else:
                pending.append(fd)
        if jobs > 1 and len(pending) > 1:
            from milzoo.runs.jobs import train_folds_parallel

            train_folds_parallel(recipe, run_dir, pending, jobs)
            pending = []
        for fd in pending:
            train_fold(recipe, fd, run_dir, writer, show, distributed, is_main)
        if distributed is not None:
            distributed.barrier()
        if fold is not None and not all((_fold_dir(run_dir, f.fold) / "result.json").exists() for f in folds):
            outcome = "finished"
            return {"fold": fold, "complete": False, "run_dir": str(run_dir)}
        summary = summarize(run_dir, write=is_main, expected_folds=len(folds))
        outcome = "finished"
        return summary
    except TrainingDiverged as exc:
        outcome, error = "diverged", str(exc)
        raise
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if recorded:
            _record_outcome(runs_path, info, outcome, error)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def train_fold(recipe: Recipe, fd, run_dir: Path, writer, show: bool, distributed=None, is_main: bool = True) -> None:
    """Train one fold into ``RUN/fold-NN`` (resuming from its state) and write its ``result.json``."""
    fdir = _fold_dir(run_dir, fd.fold)
    if is_main:
        fdir.mkdir(parents=True, exist_ok=True)
    if distributed is not None:
        distributed.barrier()
    t0 = time.perf_counter()
    trainer = Trainer(recipe, fd, fdir, writer, distributed=distributed)
    result = trainer.fit(progress=show)
    result["time_s"] = round(time.perf_counter() - t0, 3)
    if is_main:
        ckpt.atomic_write_json(fdir / "result.json", json_safe(result))
    log.info("fold %d done in %.1fs: %s", fd.fold, result["time_s"], json.dumps(result.get("last", {})))


def _aggregate(results: list[dict], section: str) -> dict[str, Any]:
    per_split: dict[str, dict[str, list]] = {}
    for r in results:
        for split, metrics in (r.get(section) or {}).items():
            if not isinstance(metrics, dict):
                continue
            for k, v in metrics.items():
                if isinstance(v, (int, float)) or v is None:
                    v = math.nan if v is None else v
                    per_split.setdefault(split, {}).setdefault(k, []).append(v)
    out = {}
    for split, metrics in per_split.items():
        out[split] = {}
        for k, values in metrics.items():
            m, s = mean_std(values)
            entry = {"mean": m, "std": s, "values": [v if math.isfinite(v) else None for v in values]}
            undefined = sum(1 for v in values if not math.isfinite(v))
            if undefined:  # e.g. AUC of a held-out fold with one class: said, never silently averaged away
                entry["undefined_in"] = undefined
            out[split][k] = entry
    return out


def _record_outcome(path: Path, info: dict, outcome: str, error: str = "") -> None:
    """Write into run.json (``info``, as this start wrote it) how this start ended ("finished", "diverged",
    "interrupted" or "failed", with the error's message), at the top level and in its ``history`` entry: a run
    directory that stopped says why without its log, and tables built from copied run directories can tell a
    diverged run from a killed one (a start killed outright records nothing: its run.json has no ``outcome``)."""
    entry = {"ended": time.strftime("%Y-%m-%dT%H:%M:%S"), "outcome": outcome}
    if error:
        entry["error"] = error
    info.update(entry)
    info["history"][-1].update(entry)
    try:
        ckpt.atomic_write_json(path, info)
    except OSError as exc:  # never let the bookkeeping hide the run's own error
        log.warning("could not record the outcome %r in %s: %s", outcome, path, exc)


def _previous_run_info(path: Path) -> dict:
    """run.json of the earlier starts (for its history); a damaged one is replaced, with a warning."""
    if not path.exists():
        return {}
    try:
        info = read_json(path, "run information", RunDirError)
    except RunDirError as exc:
        log.warning("%s; it only holds the run's history, so a new one is written", exc)
        return {}
    if not isinstance(info, dict) or not isinstance(info.get("history", []), list):
        log.warning("%s is not a run.json written by milzoo; a new one is written", path)
        return {}
    return info


def _read_result(path: Path) -> dict:
    fix = (f"Delete it and continue the run with --resume: {path.parent.name} is then evaluated again from "
           "its last checkpoint.")
    try:
        result = read_json(path, "fold result", RunDirError)
    except RunDirError as exc:
        raise RunDirError(f"{exc} {fix}") from None
    if not isinstance(result, dict):
        raise RunDirError(f"{path} holds a JSON {type(result).__name__}, not a fold result. {fix}")
    return result


def summarize(run_dir: str | Path, write: bool = True, expected_folds: int | None = None) -> dict[str, Any]:
    """Assemble ``summary.json`` from the folds' ``result.json`` files."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.toml").exists():
        raise RunDirError(f"{run_dir} is not a milzoo run directory (no recipe.toml).")
    recipe = validate_recipe(read_toml(run_dir / "recipe.toml"), str(run_dir / "recipe.toml"))
    fold_dirs = sorted(run_dir.glob("fold-*"))
    results = [_read_result(d / "result.json") for d in fold_dirs if (d / "result.json").exists()]
    if expected_folds is None:
        proto = recipe.root.protocol
        expected_folds = 1 if proto.kind == "holdout" else proto.folds * (proto.repeats if proto.kind == "cv" else 1)
    missing = [i for i in range(expected_folds) if not (_fold_dir(run_dir, i) / "result.json").exists()]
    if missing:
        raise RunDirError(
            f"{run_dir} is missing the results of folds {missing}; run them (`milzoo run RECIPE --out {run_dir} "
            f"--fold I`) before summarising."
        )
    summary: dict[str, Any] = {
        "name": recipe.root.name,
        "protocol": recipe.root.protocol.kind,
        "num_folds": len(results),
        "last": _aggregate(results, "last"),
    }
    if any("selected" in r for r in results):
        summary["selected"] = _aggregate(results, "selected")
    if any("best_epoch_on_test" in r for r in results):
        agg = _aggregate([{"best_epoch_on_test": {"test": r["best_epoch_on_test"]}} for r in results
                          if "best_epoch_on_test" in r], "best_epoch_on_test")
        summary["best_epoch_on_test"] = {
            "note": "OPTIMISTIC: each fold's epoch chosen on its own test split (as some papers report)",
            **agg.get("test", {}),
        }
    if recipe.root.protocol.kind == "cv_ensemble":
        probs, thresholds, y_true = [], [], None
        for i in range(len(results)):
            fd = _fold_dir(run_dir, i)
            src = fd / "best" / "predictions-test.csv"
            if not src.exists():
                src = fd / "last" / "predictions-test.csv"
            if not src.exists():
                break
            _, y, p = read_predictions(src)
            probs.append(p)
            sel = results[i].get("selected") or {}
            thresholds.append(sel.get("threshold"))
            y_true = y
        if probs and len(probs) == len(results):
            summary["ensemble"] = {"test": ensemble_metrics(probs, thresholds, y_true)}
    summary["folds"] = results
    summary = json_safe(summary)  # standard JSON: undefined metrics are null, never a bare NaN
    if write:
        ckpt.atomic_write_json(run_dir / "summary.json", summary)
    return summary
