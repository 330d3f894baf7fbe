"""Summarise the FMNIST reproduction runs (runs/fmnist/*) into docs/results-psmil.md's table.

Reads each run directory's ``metrics.jsonl`` (complete epochs only: a run that is
still going or was interrupted shows the epochs it finished) and prints a
Markdown table: epochs completed, last-epoch and best-epoch (optimistic: chosen
on the test split itself) single-instance test accuracy, the paper's number,
and the exact command.  It never extrapolates.

    .venv/bin/python benchmarks/psmil_fmnist_table.py                  # print
    .venv/bin/python benchmarks/psmil_fmnist_table.py --write          # also replace the table in the doc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- table:begin -->", "<!-- table:end -->"
LR_BEGIN, LR_END = "<!-- lr:begin -->", "<!-- lr:end -->"

#: (run dir under runs/fmnist, label, recipe, paper's Table 2 FMNIST number)
ROWS = [
    ("psmil", "PSMIL", "recipes/psmil_fmnist.toml", "77.62"),
    ("supervised", "supervised ceiling (same CNN)", "recipes/psmil/fmnist/supervised.toml", "-"),
    ("abmil", "ABMIL", "recipes/psmil/fmnist/abmil.toml", "80.81"),
    ("demil", "DEMIL", "recipes/psmil/fmnist/demil.toml", "80.48"),
    ("transmil", "TransMIL", "recipes/psmil/fmnist/transmil.toml", "74.14"),
    ("dtfd", "DTFD-MIL", "recipes/psmil/fmnist/dtfd.toml", "81.27"),
    ("psmil_lam0", "ablation: lambda_T = 0 (PSAtt only)", "recipes/psmil/fmnist/psmil_lam0.toml", "-"),
    ("psmil_lam001", "ablation: lambda_T = 0.01", "recipes/psmil/fmnist/psmil_lam001.toml", "-"),
    ("psmil_lam01", "ablation: lambda_T = 0.1", "recipes/psmil/fmnist/psmil_lam01.toml", "-"),
    ("abmil_pp", "ablation: ABMIL++ (ABMIL + PSAli)", "recipes/psmil/fmnist/abmil_pp.toml", "-"),
    ("demil_pp", "ablation: DEMIL++ (DEMIL + PSAli)", "recipes/psmil/fmnist/demil_pp.toml", "-"),
]


def read_run(run_dir: Path, split: str = "test_instances", key: str = "acc") -> dict | None:
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        return None
    if not path.exists():
        return {"epochs": 0, "train_s": 0.0}
    per_epoch: dict[int, float] = {}
    train_s = 0.0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written line of a killed run
        if rec.get("split") == split and rec.get(key) is not None:
            per_epoch[int(rec["epoch"])] = float(rec[key])
        if rec.get("split") == "train":
            train_s += float(rec.get("time_s") or 0.0)
    if not per_epoch:
        return {"epochs": 0, "train_s": train_s}
    last = max(per_epoch)
    best = max(per_epoch, key=lambda e: per_epoch[e])
    recipe = run_dir / "recipe.toml"
    total = None
    if recipe.exists():
        import tomllib

        total = tomllib.loads(recipe.read_text()).get("train", {}).get("epochs")
    return {"epochs": len(per_epoch), "of": total, "last_epoch": last, "last": per_epoch[last],
            "best_epoch": best, "best": per_epoch[best], "train_s": train_s}


#: the small text files of a run directory that are committed (checkpoints are not: tens of MB each)
SNAPSHOT_FILES = ("metrics.jsonl", "run.json", "recipe.toml", "summary.json")


def snapshot(runs: Path, snap: Path) -> list[str]:
    """Copy each run's small text files to ``snap/<run>/`` (committed to git, so the numbers outlive the
    machine the run was on; a run directory itself is git-ignored and cannot be resumed elsewhere)."""
    import shutil

    copied = []
    for sub, *_ in ROWS:
        src = runs / sub
        if not (src / "metrics.jsonl").exists():
            continue
        (snap / sub).mkdir(parents=True, exist_ok=True)
        for name in SNAPSHOT_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, snap / sub / name)
        copied.append(sub)
    return copied


def table(runs: Path, snap: Path | None = None) -> str:
    head = ("| model | epochs done | test acc, last epoch | test acc, best epoch (optimistic) | paper | "
            "train time | command (latest invocation) |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for sub, label, recipe, paper in ROWS:
        where = runs / sub
        if not where.is_dir() and snap is not None and (snap / sub).is_dir():
            where = snap / sub  # the committed copy of a run that finished (or stopped) on another machine
        r = read_run(where)
        cmd = f"`milzoo run {recipe} --out runs/fmnist/{sub}`"
        info = where / "run.json"
        if info.exists():  # the exact command line of the run's latest invocation
            argv = json.loads(info.read_text()).get("command") or []
            if argv:
                cmd = "`milzoo " + " ".join(argv[1:]) + "`"
        if r is None:
            lines.append(f"| {label} | not started | - | - | {paper} | - | {cmd} |")
            continue
        done = f"{r['epochs']}/{r.get('of') or '?'}"
        t = f"{r['train_s'] / 60:.0f} min"
        if r["epochs"] == 0:
            lines.append(f"| {label} | 0/20 (started; no epoch finished) | - | - | {paper} | - | {cmd} |")
            continue
        lines.append(f"| {label} | {done} | {100 * r['last']:.2f} (epoch {r['last_epoch']}) | "
                     f"{100 * r['best']:.2f} (epoch {r['best_epoch']}) | {paper} | {t} | {cmd} |")
    return head + "\n".join(lines) + "\n"


def lr_table(lr_runs: Path) -> str:
    """The learning-rate selection runs (``lr/<model>-<lr>``): validation single-instance accuracy per epoch."""
    out = ["| model | lr | epochs done | val_instances acc per epoch | last |", "|---|---|---|---|---|"]
    for d in sorted(p for p in lr_runs.glob("*-*") if p.is_dir()):
        model, lr = d.name.rsplit("-", 1)
        accs = {}
        for line in (d / "metrics.jsonl").read_text().splitlines() if (d / "metrics.jsonl").exists() else []:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("split") == "val_instances":
                accs[int(rec["epoch"])] = 100 * float(rec["acc"])
        seq = ", ".join(f"{accs[e]:.1f}" for e in sorted(accs)) or "-"
        last = f"{accs[max(accs)]:.2f}" if accs else "-"
        out.append(f"| {model} | {lr} | {len(accs)} | {seq} | {last} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "fmnist")
    p.add_argument("--write", action="store_true",
                   help="replace the table between the markers in --doc and copy each run's metrics to --snapshot")
    p.add_argument("--snapshot", type=Path, default=ROOT / "benchmarks" / "results" / "fmnist",
                   help="committed copies of the runs' metrics, read when runs/fmnist/<run> is absent")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "results-psmil.md")
    p.add_argument("--lr", action="store_true", help="print the learning-rate selection table (runs/fmnist/lr)")
    args = p.parse_args(argv)
    if args.lr:
        print(lr_table(args.runs / "lr"), end="")
        return 0
    if args.write:
        snapshot(args.runs, args.snapshot)
    text = table(args.runs, args.snapshot)
    print(text, end="")
    if args.write:
        doc = args.doc.read_text()
        if BEGIN not in doc or END not in doc:
            print(f"{args.doc} has no {BEGIN} ... {END} markers", file=sys.stderr)
            return 1
        import time

        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        doc = _replace(doc, BEGIN, END, text + f"\nRefreshed {stamp} from `runs/fmnist/` and its committed copy "
                       "`benchmarks/results/fmnist/` (runs may still be going).\n")
        if LR_BEGIN in doc and LR_END in doc and (args.runs / "lr").is_dir():
            doc = _replace(doc, LR_BEGIN, LR_END, lr_table(args.runs / "lr"))
        args.doc.write_text(doc)
    return 0


def _replace(doc: str, begin: str, end: str, text: str) -> str:
    a, rest = doc.split(begin, 1)
    _, b = rest.split(end, 1)
    return a + begin + "\n" + text + end + b


if __name__ == "__main__":
    sys.exit(main())
