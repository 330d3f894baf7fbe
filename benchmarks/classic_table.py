"""Run every classic-benchmark recipe and write the results table (docs/results.md).

Recipes: ``recipes/classic/<model>_<dataset>.toml`` (10-fold stratified CV,
features standardised per fold on the training bags, no test-fold selection).
Each recipe runs into ``<out-root>/<model>_<dataset>/`` through
``milzoo.runs.runner.run``.  The script is resumable: a recipe whose run directory
already has ``summary.json`` is skipped, and an interrupted one is resumed
from its last completed epoch (``--resume``).

    .venv/bin/python benchmarks/classic_table.py                    # everything, then docs/results.md
    .venv/bin/python benchmarks/classic_table.py --only abmil musk1 # recipes whose model or dataset matches
    .venv/bin/python benchmarks/classic_table.py --no-run           # only rewrite the table from finished runs

Only the part of ``docs/results.md`` between the ``classic-table`` markers is
generated; text around it is kept.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import platform
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes" / "classic"
DATASETS = ("musk1", "musk2", "elephant")
MODELS = ("abmil", "abmil_gated", "dsmil", "dtfd", "transmil", "demil", "rgmil", "psatt", "clam_sb", "vitmil", "ilra",
          "rrt")
START, END = "<!-- classic-table:start -->", "<!-- classic-table:end -->"
#: each finished run's summary, resolved recipe, versions and wall time, committed: the table can be rebuilt
#: (``--no-run``) on a fresh machine whose run directories are gone
SAVED = ROOT / "benchmarks" / "results" / "classic"
KEEP = ("summary.json", "recipe.toml", "run.json", "bench.json")

#: published accuracies (docs/methods.md 9.1; all [unverified] there); the protocol matters, see the notes
PUBLISHED = {
    "abmil": {"musk1": "0.892 ± 0.040", "musk2": "0.858 ± 0.048", "elephant": "0.868 ± 0.022"},
    "abmil_gated": {"musk1": "0.900 ± 0.050", "musk2": "0.863 ± 0.042", "elephant": "0.857 ± 0.027"},
    "dsmil": {"musk1": "0.932 ± 0.023 †", "musk2": "0.930 ± 0.020 †", "elephant": "0.925 ± 0.007 †"},
}
GOAL = {"musk1": 0.892, "musk2": 0.858}  # the ABMIL paper's attention accuracy


def recipe_paths(only: list[str] | None) -> list[Path]:
    paths = sorted(RECIPES.glob("*.toml"), key=lambda p: _order(p.stem))
    if not only:
        return paths
    keep = []
    for p in paths:
        model, dataset = split_stem(p.stem)
        if any(tok in (p.stem, model, dataset) or fnmatch.fnmatch(p.stem, tok) for tok in only):
            keep.append(p)
    return keep


def split_stem(stem: str) -> tuple[str, str]:
    model, _, dataset = stem.rpartition("_")
    return model, dataset


def _order(stem: str) -> tuple:
    model, dataset = split_stem(stem)
    mi = MODELS.index(model) if model in MODELS else len(MODELS)
    di = DATASETS.index(dataset) if dataset in DATASETS else len(DATASETS)
    return (di, mi, stem)


def run_one(path: Path, out_root: Path) -> dict:
    from milzoo.runs.runner import run

    run_dir = out_root / path.stem
    if (run_dir / "summary.json").exists():
        print(f"[skip] {path.stem}: {run_dir / 'summary.json'} exists", file=sys.stderr, flush=True)
        return json.loads((run_dir / "summary.json").read_text())
    resume = (run_dir / "recipe.toml").exists()
    print(f"[{'resume' if resume else 'run'}] {path.stem} -> {run_dir}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    summary = run(path, out=run_dir, resume=resume, progress=False)
    wall = time.perf_counter() - t0
    bench = {"wall_s": round(wall, 1), "resumed": resume, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
             "loadavg_end": os.getloadavg(), "cpu": machine()}
    (run_dir / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    acc = summary["last"]["test"]["acc"]
    print(f"[done] {path.stem}: acc {_pm(acc)} in {wall:.0f}s", file=sys.stderr, flush=True)
    save_results(run_dir, SAVED / path.stem)
    return summary


def save_results(run_dir: Path, dest: Path) -> None:
    """Copy the files the table needs (no weights) out of a finished run directory."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        if (run_dir / name).exists():
            (dest / name).write_text((run_dir / name).read_text())


# --------------------------------------------------------------------------- the table


#: the table's ± is the population standard deviation over the folds (n in the denominator), as its rows were
#: first published; milzoo itself states the sample one (n - 1: summary.json since it records ``std_ddof``, the
#: report, model cards).  It is computed here from the folds' values, so summaries of either kind give one table.
TABLE_SD = "population standard deviation (n)"


def _population_sd(stat: dict) -> float:
    values = [v for v in stat.get("values") or [] if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return stat.get("std") if isinstance(stat.get("std"), (int, float)) else math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _pm(stat: dict | None, nd: int = 3) -> str:
    if not stat or stat.get("mean") is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        return "–"
    return f"{stat['mean']:.{nd}f} ± {_population_sd(stat):.{nd}f}"


def _repeat_std(summary: dict, split: str = "test", section: str = "last", metric: str = "acc") -> float | None:
    """Std over repeats of the per-repeat mean (the spread the ABMIL paper's 5 x 10-fold numbers describe)."""
    folds = summary.get("folds", [])
    proto = summary.get("_protocol", {})
    k, reps = proto.get("folds", 10), proto.get("repeats", 1)
    if reps < 2 or len(folds) != k * reps:
        return None
    means = []
    for r in range(reps):
        vals = [f[section][split][metric] for f in folds[r * k:(r + 1) * k]]
        means.append(sum(vals) / len(vals))
    mu = sum(means) / reps
    return math.sqrt(sum((m - mu) ** 2 for m in means) / reps)


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def collect(out_root: Path, paths: list[Path], saved: Path | None = SAVED) -> dict[tuple[str, str], dict]:
    """Finished runs under ``out_root``, else the copies committed under ``saved``."""
    rows = {}
    for p in paths:
        model, dataset = split_stem(p.stem)
        run_dir = out_root / p.stem
        sp = run_dir / "summary.json"
        if not sp.exists() and saved is not None:
            run_dir = saved / p.stem  # a run of an earlier machine, committed
            sp = run_dir / "summary.json"
        if not sp.exists():
            continue
        summary = json.loads(sp.read_text())
        raw = tomllib.loads((run_dir / "recipe.toml").read_text())
        summary["_protocol"] = raw.get("protocol", {})
        summary["_train"] = raw.get("train", {})
        bench = json.loads((run_dir / "bench.json").read_text()) if (run_dir / "bench.json").exists() else {}
        fold_time = sum(f.get("time_s", 0.0) for f in summary.get("folds", []))
        info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
        rows[(model, dataset)] = {"summary": summary, "bench": bench, "fold_time": fold_time, "stem": p.stem,
                                  "env": (bench.get("cpu"), info.get("python"), (info.get("libraries") or {}).get("torch"),
                                          info.get("git_sha", "")[:7], bench.get("finished", "")[:10])}
    return rows


def machine() -> str:
    """This machine's CPUs, recorded in each run's bench.json (the table may be rebuilt elsewhere)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu})"


def environments(rows: dict) -> str:
    """The machine and software each row was run with, from its bench.json and run.json (rows may come from
    several machines)."""
    envs: dict[tuple, int] = {}
    for r in rows.values():
        envs[r["env"]] = envs.get(r["env"], 0) + 1
    return "; ".join(f"{n} runs on {cpu or 'an unrecorded machine'} with Python {py}, torch {tv}, milzoo at "
                     f"{sha or '?'}, finished {day or '?'}"
                     for (cpu, py, tv, sha, day), n in sorted(envs.items(), key=lambda kv: -kv[1]))


def render(rows: dict, paths: list[Path], out_root: Path, command: str) -> str:
    lines = [START, "", f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} from {environments(rows)}.", "",
             "One torch thread per run (`train.threads = 1`). Wall times are per recipe, with other jobs (other",
             "recipes, other users) sharing the cores, so they vary with the load; they are not a speed benchmark.", ""]
    have_sel = any("selected" in r["summary"] for r in rows.values())
    for dataset in DATASETS:
        # every model with a recipe, in MODELS order, then models not (yet) in MODELS: a new plugin's recipes
        # show up in the table before anyone lists it here
        ds_models = [split_stem(p.stem)[0] for p in paths if split_stem(p.stem)[1] == dataset]
        ds_rows = [(m, rows[(m, dataset)]) for m in ds_models if (m, dataset) in rows]
        missing = [p.stem for p in paths if split_stem(p.stem)[1] == dataset and split_stem(p.stem) not in rows]
        if not ds_rows and not missing:
            continue
        lines.append(f"### {dataset.upper() if dataset != 'elephant' else 'Elephant'}")
        lines.append("")
        head = "| model | protocol | acc (last epoch) | AUC (last epoch) |"
        sep = "|---|---|---|---|"
        if have_sel:
            head += " acc (val-selected) |"
            sep += "---|"
        head += " published acc | best epoch on test (optimistic) ‡ | wall time |"
        sep += "---|---|---|"
        lines += [head, sep]
        for model, r in ds_rows:
            s = r["summary"]
            proto = s["_protocol"]
            reps = proto.get("repeats", 1)
            prot = f"{reps}×{proto.get('folds', 10)}-fold" if reps > 1 else f"{proto.get('folds', 10)}-fold"
            acc = _pm(s["last"]["test"].get("acc"))
            rstd = _repeat_std(s)
            if rstd is not None:
                acc += f" (runs ± {rstd:.3f})"
            goal = GOAL.get(dataset)
            if goal is not None and s["last"]["test"]["acc"]["mean"] < goal:
                acc += " ▽"
            cells = [f"`{model}`", prot, acc, _pm(s["last"]["test"].get("auc"))]
            if have_sel:
                cells.append(_pm((s.get("selected") or {}).get("test", {}).get("acc")))
            cells.append(PUBLISHED.get(model, {}).get(dataset, "–"))
            cells.append(_pm((s.get("best_epoch_on_test") or {}).get("acc")))
            wall = r["bench"].get("wall_s") if not r["bench"].get("resumed") else None
            cells.append(_fmt_time(wall if wall is not None else r["fold_time"]))
            lines.append("| " + " | ".join(cells) + " |")
        for stem in missing:
            blanks = len(sep.split("|")) - 4
            lines.append(f"| `{split_stem(stem)[0]}` | not run yet |" + " |" * blanks)
        lines.append("")
    lines += [
        f"Accuracy and AUC are the mean ± {TABLE_SD} over the test folds (each fold's model after its",
        "last epoch; nothing is selected on a test fold; the rest of milzoo states the sample standard deviation,",
        "n − 1). With repeated CV, `runs ±` is the population standard deviation of the per-repeat means, the",
        "spread the ABMIL paper's 5×10-fold numbers describe. ▽ marks a model below",
        "the ABMIL paper's attention accuracy (MUSK1 0.892, MUSK2 0.858), the goal for every model.",
        "",
        "† DSMIL paper: the best epoch per **test** fold (its `train_mil.py` reports the maximum test accuracy over",
        "epochs), so it is optimistic and not comparable with a last-epoch number ([methods.md 2.4](methods.md#24-settings),",
        "[2.7.4](methods.md#27-pitfalls), [9.1](methods.md#91-classic-mil-benchmarks)).",
        "",
        "‡ The best epoch chosen on each test fold itself, shown only to compare with protocols that report it",
        "(DSMIL, RGMIL and PSMIL's benchmark scripts). It is not an estimate of accuracy on new data.",
        "",
        "**Leaked label column.** Several later papers' MUSK/FOX/TIGER/ELEPHANT tables (RGMIL, and the PSMIL",
        "paper's Table 4 for every model in it) used `.mat` files with one extra last column (167 = 166 + 1 for",
        "MUSK, 231 = 230 + 1 for FOX/TIGER/ELEPHANT) that equals the bag label on every instance and separates the",
        "classes perfectly ([methods.md 6.6.1](methods.md#66-pitfalls) and [9.1](methods.md#91-classic-mil-benchmarks); the",
        "RGMIL and PSAMIL READMEs acknowledge it; a FOX",
        "accuracy near 0.95 is the tell-tale sign). Those numbers are not comparable with ours: milzoo reads the",
        "`mil` package's CSVs and checks for exactly 166 (MUSK) / 230 (Elephant) features.",
        "",
        "Rerun: the command above; it skips recipes whose run directory already holds `summary.json` and",
        f"resumes interrupted ones (run directories under `{out_root}`). Each finished run's summary, resolved",
        "recipe, versions and wall time are copied to `benchmarks/results/classic/<recipe>/` (committed), from",
        "which `--no-run` rebuilds this table when the run directories are gone.",
        "",
    ]
    todo = [p.stem for p in paths if split_stem(p.stem) not in rows]
    if todo:
        lines += [f"**Rows not run yet** ({len(todo)} of {len(paths)} recipes): "
                  + ", ".join(f"`{t}`" for t in todo) + ". Fill them with",
                  f"`python benchmarks/classic_table.py --only {' '.join(todo)}`.", ""]
    lines.append(END)
    return "\n".join(lines)


DEFAULT_DOC = """# Results: the classic MIL benchmarks

Every zoo model on MUSK1, MUSK2 and Elephant (the `mil` package's CSVs: 166 / 166 / 230 features, no label
column), with the recipes in `recipes/classic/`: stratified 10-fold cross-validation (repeated where the
recipe says so), features standardised per fold on the training bags only, and the **last epoch** reported.
No number below was selected on a test fold.

{table}
"""


def write_doc(doc: Path, table: str) -> None:
    if doc.exists():
        text = doc.read_text()
        if START in text and END in text:
            pre, rest = text.split(START, 1)
            _, post = rest.split(END, 1)
            doc.write_text(pre + table + post)
            return
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(DEFAULT_DOC.format(table=table))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=None,
                    help="recipe stems, models, datasets or globs (e.g. abmil, musk1, 'dsmil_*')")
    ap.add_argument("--out-root", default="/tmp/milzoo-classic")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--no-run", action="store_true", help="do not train; only rewrite the table")
    ap.add_argument("--no-doc", action="store_true", help="do not write the results page")
    args = ap.parse_args(argv)

    out_root = Path(args.out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    paths = recipe_paths(args.only)
    if not paths:
        ap.error(f"no recipe in {RECIPES} matches --only {args.only}")
    failed = []
    if not args.no_run:
        import torch

        torch.set_num_threads(1)
        for p in paths:
            try:
                run_one(p, out_root)
            except Exception as exc:  # keep going: one broken model must not stop the table
                failed.append(p.stem)
                print(f"[FAILED] {p.stem}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    if not args.no_doc:
        all_paths = recipe_paths(None)
        rows = collect(out_root, all_paths)
        cmd = "python benchmarks/classic_table.py"
        if args.out_root != "/tmp/milzoo-classic":
            cmd += f" --out-root {args.out_root}"
        write_doc(Path(args.doc), render(rows, all_paths, out_root, cmd))
        print(f"wrote {args.doc} ({len(rows)} of {len(all_paths)} recipes have results)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
