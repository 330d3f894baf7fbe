"""Shared by benchmarks/survival_fmnist.py and benchmarks/regression_fmnist.py: run the shipped recipes of
milzoo-survival through ``milzoo.run`` (resumable, one run directory per recipe, data draw and model seed),
compute the oracle on each draw's test bags, and print markdown tables.

A run is a pair (data seed, model seed): the data seed is the dataset option ``data.seed`` (which images form the
bags, and the drawn event times / targets), the model seed the recipe's ``seed`` (initialisation, batch order).
``--paired`` runs data seed i with model seed i; without it every combination runs.  Each row is the mean ± sd
(sample sd, n - 1) over all runs; the oracle row over the data draws; the gap to the oracle is paired: a run's
metric minus the oracle's on the same draw."""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POOLINGS = ("abmil", "transmil", "dsmil", "psatt")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def parse_args(doc: str, default_out: str, extra: tuple[str, ...] = ()) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-root", default=default_out, help="run directories go below this folder")
    p.add_argument("--only", nargs="*", default=None, help=f"recipes to run (of {', '.join(POOLINGS + extra)})")
    p.add_argument("--data-seeds", nargs="+", type=int, default=[0],
                   help="data draws (the dataset's data.seed: which images form the bags, the drawn targets)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="model seeds (the recipe's seed)")
    p.add_argument("--paired", action="store_true",
                   help="run data seed i with model seed i (equally long lists) instead of every combination")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every run (repeatable), e.g. train.epochs=5")
    p.add_argument("--json", default=None, help="also write the table's numbers to this JSON file")
    args = p.parse_args()
    if args.paired and len(args.data_seeds) != len(args.seeds):
        p.error(f"--paired needs as many --data-seeds ({len(args.data_seeds)}) as --seeds ({len(args.seeds)})")
    for o in args.overrides:
        if o.split("=", 1)[0].strip() in ("seed", "data.seed"):
            p.error(f"--set {o}: give the seeds with --seeds and --data-seeds")
    return args


def design(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The runs' (data seed, model seed) pairs."""
    if args.paired:
        return list(zip(args.data_seeds, args.seeds))
    return [(d, s) for d in args.data_seeds for s in args.seeds]


def describe_design(args: argparse.Namespace) -> str:
    pairs = design(args)
    how = "paired" if args.paired else "crossed"
    return (f"{len(pairs)} runs per model ({how}: data seeds {args.data_seeds}, model seeds {args.seeds}); "
            f"oracle over {len(set(args.data_seeds))} data draws")


def recipe_source(task: str, name: str, tables: dict[str, dict]):
    """The shipped recipe ``<task>/fmnist_<name>``; a pooling without one (it cannot serve the task by design)
    is tried in the ABMIL recipe with its pooling table swapped, so that its refusal is shown."""
    from milzoo.errors import UnknownRecipeError
    from milzoo.recipe import book

    shipped = f"{task}/fmnist_{name}"
    try:
        if book.resolve(shipped) is not None:
            return shipped
    except UnknownRecipeError:
        pass
    raw = book.resolve(f"{task}/fmnist_abmil").load()
    return {**raw, "name": f"{task}_fmnist_{name}", "pooling": dict(tables[name])}


def run_recipe(source, out: Path, overrides: list[str]) -> tuple[dict | None, float, str]:
    """``milzoo.run`` of a recipe into ``out`` (resumed when interrupted): (summary, wall seconds, "") or
    (None, nan, the refusal's message) when milzoo refuses the recipe (e.g. a pooling that cannot serve the
    task)."""
    import milzoo
    from milzoo.errors import UserError

    if (out / "summary.json").exists():
        print(f"[skip] {out}: summary.json exists", file=sys.stderr, flush=True)
        saved = json.loads((out / "bench.json").read_text()) if (out / "bench.json").exists() else {}
        return json.loads((out / "summary.json").read_text()), float(saved.get("wall_s", math.nan)), ""
    resume = (out / "recipe.toml").exists()
    t0 = time.perf_counter()
    try:
        summary = milzoo.run(source, out=str(out), overrides=overrides, resume=resume, progress=False)
    except UserError as exc:
        print(f"[refused] {out.name}: {exc}", file=sys.stderr, flush=True)
        return None, math.nan, str(exc)
    wall = time.perf_counter() - t0
    (out / "bench.json").write_text(json.dumps({"wall_s": wall, "cpu": cpu_model()}))
    return summary, wall, ""


def metric(summary: dict | None, which: str, split: str, key: str) -> float:
    """The mean of ``key`` on ``split`` for the ``last`` or validation-``selected`` epoch."""
    try:
        return float(summary[which][split][key]["mean"])
    except (KeyError, TypeError):
        return math.nan


def test_split(recipe_name: str, overrides: list[str], data_seed: int):
    """The recipe's dataset source with ``data.seed = data_seed``, loaded: its test split (with the generative
    truth), the same bags as those of every run on this data draw (the data options do not depend on the model
    seed)."""
    from milzoo.recipe import load_recipe
    from milzoo.registry import get_component

    r = load_recipe(recipe_name, [*overrides, f"data.seed={data_seed}"])
    cfg = r.components["data"]
    return get_component("dataset", r.root.data.name)(cfg).load()["test"]


def run_models(args: argparse.Namespace, task: str, names: list[str], tables: dict[str, dict],
               keys: tuple[str, ...], oracle: dict[int, dict[str, float]]) -> dict[str, dict]:
    """Every recipe in ``names`` on every (data seed, model seed) of the design, into
    ``<out-root>/<name>-data<d>-seed<s>``: per recipe the lists ``data_seeds``, ``seeds``, one list per metric in
    ``keys``, ``gap_<key>`` (the run's metric minus the oracle's on its data draw, for the oracle's metrics) and
    ``wall_s``; or ``{"refused": message}`` when milzoo refuses the recipe."""
    pairs = design(args)
    raw: dict[str, dict] = {}
    for name in names:
        source = recipe_source(task, name, tables)
        entry: dict[str, list] = {"data_seeds": [], "seeds": [], **{k: [] for k in keys},
                                  **{f"gap_{k}": [] for k in keys if k in oracle[pairs[0][0]]}, "wall_s": []}
        refused = ""
        for d, s in pairs:
            out = Path(args.out_root) / f"{name}-data{d}-seed{s}"
            summary, wall, refused = run_recipe(source, out, [*args.overrides, f"data.seed={d}", f"seed={s}"])
            if refused:
                break
            entry["data_seeds"].append(d)
            entry["seeds"].append(s)
            entry["wall_s"].append(wall)
            for k in keys:
                v = metric(summary, "selected", "test", k)
                entry[k].append(v)
                if k in oracle[d]:
                    entry[f"gap_{k}"].append(v - oracle[d][k])
        raw[name] = {"refused": refused} if refused else entry
    return raw


def paired_diff(a: dict, b: dict, key: str) -> list[float]:
    """``a``'s ``key`` minus ``b``'s on the same (data seed, model seed) runs."""
    ib = {(d, s): v for d, s, v in zip(b["data_seeds"], b["seeds"], b[key])}
    return [v - ib[(d, s)] for d, s, v in zip(a["data_seeds"], a["seeds"], a[key]) if (d, s) in ib]


def mean_sd(values: list[float], digits: int = 3, signed: bool = False) -> str:
    """``mean ± sd`` (sample sd, n - 1) of the values that are not NaN; ``n/a`` when none is."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    f = f"{'+' if signed else ''}.{digits}f"
    if len(vals) == 1:
        return format(vals[0], f)
    return f"{format(statistics.mean(vals), f)} ± {statistics.stdev(vals):.{digits}f}"


def wall_cell(walls: list[float]) -> str:
    """The median wall time of a recipe's runs (robust to a run slowed by other jobs on the machine)."""
    vals = [w for w in walls if not math.isnan(w)]
    return f"{statistics.median(vals):.0f}" if vals else ""


def write_json(path: str | None, args: argparse.Namespace, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps({
            "cpu": cpu_model(), "overrides": args.overrides, "design": "paired" if args.paired else "crossed",
            "data_seeds": args.data_seeds, "seeds": args.seeds, "runs_per_model": len(design(args)),
            "sd": "sample standard deviation (n - 1)", **payload}, indent=1))
