"""Shared by benchmarks/survival_fmnist.py and benchmarks/regression_fmnist.py: run the shipped recipes of
milzoo-survival through ``milzoo.run`` (resumable, one run directory per recipe and seed), compute the oracle
on the same test bags, and print a markdown table."""

from __future__ import annotations

import argparse
import json
import math
import platform
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
    p.add_argument("--seeds", nargs="*", type=int, default=[0], help="model seeds (the bags stay the same)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every run (repeatable), e.g. train.epochs=5")
    p.add_argument("--json", default=None, help="also write the table's numbers to this JSON file")
    return p.parse_args()


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


def test_split(recipe_name: str, overrides: list[str]):
    """The recipe's dataset source, loaded: its test split (with the generative truth) and the source (the
    same bags as every run's: the data options and seed do not depend on the model's)."""
    from milzoo.recipe import load_recipe
    from milzoo.registry import get_component

    r = load_recipe(recipe_name, overrides)
    cfg = r.components["data"]
    src = get_component("dataset", r.root.data.name)(cfg)
    return src.load()["test"], src


def mean_sd(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))
    return f"{m:.3f} ± {sd:.3f}"
