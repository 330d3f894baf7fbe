"""Survival MIL on Fashion-MNIST bags with a known ceiling: ABMIL, TransMIL, DSMIL and PSAtt (discrete-time NLL)
and ABMIL with the Cox loss, against the oracle (the true hazard) on the same test bags.

The data (milzoo-survival's ``fmnist_survival``, docs/tasks.md): 800 training, 200 validation and 400 test bags
of 16 Fashion-MNIST images, K ~ U{0..4} of them "Trouser"; event time ~ Exponential(rate (1/48) exp(0.8 K)),
independent exponential censoring tuned to 30% censored.  Recipes: the shipped ``survival/fmnist_<pooling>``
(mlp encoder on flattened pixels, 20 epochs, 8 bags per step, the epoch chosen on validation C-index).

    .venv/bin/python benchmarks/survival_fmnist.py                      # every recipe, seed 0
    .venv/bin/python benchmarks/survival_fmnist.py --seeds 0 1 2        # mean ± sd over model seeds
    .venv/bin/python benchmarks/survival_fmnist.py --only abmil --set train.epochs=5

Resumable: a run directory with summary.json is read, not run again.  The table (docs/results.md) gives the
test metrics of the validation-selected epoch; the oracle row is the generative model's own risk (0.8 K).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fmnist_tasks import (  # noqa: E402
    POOLINGS, cpu_model, mean_sd, metric, parse_args, recipe_source, run_recipe, test_split,
)

EXTRA = ("abmil_cox",)
LABELS = {"abmil": "ABMIL", "transmil": "TransMIL", "dsmil": "DSMIL", "psatt": "PSAtt", "abmil_cox": "ABMIL (Cox)"}
KEYS = ("c_index", "c_index_uno", "td_auc", "ibs")
#: poolings without a shipped survival recipe, tried in the ABMIL recipe with this pooling table (their refusal
#: is the result: DSMIL declares itself classification-only, docs/tasks.md)
TABLES = {"dsmil": {"name": "dsmil", "mode": "multiclass"}}


def main() -> int:
    args = parse_args(__doc__, "runs/bench/survival_fmnist", EXTRA)
    names = [p for p in POOLINGS + EXTRA if not args.only or p in args.only]
    from milzoo_survival import metrics as sm

    test, src = test_split("survival/fmnist_abmil", args.overrides)
    t, e, oracle = test.labels[:, 0], test.labels[:, 1], test.oracle
    oracle_row = {"c_index": sm.harrell_c(t, e, oracle), "c_index_uno": sm.uno_c(t, e, oracle),
                  "td_auc": sm.time_dependent_auc(t, e, oracle)}
    rows, raw = [], {}
    for name in names:
        per_seed: dict[str, list[float]] = {k: [] for k in KEYS}
        walls, refused = [], ""
        source = recipe_source("survival", name, TABLES)
        for seed in args.seeds:
            out = Path(args.out_root) / f"{name}-seed{seed}"
            summary, wall, refused = run_recipe(source, out, [*args.overrides, f"seed={seed}"])
            if refused:
                break
            walls.append(wall)
            for k in KEYS:
                per_seed[k].append(metric(summary, "selected", "test", k))
        if refused:
            raw[name] = {"refused": refused}
            rows.append((LABELS[name], f"refused by milzoo: {refused.split('. ')[0]}", *[""] * (len(KEYS))))
            continue
        raw[name] = {"seeds": args.seeds, **per_seed, "wall_s": walls}
        rows.append((LABELS[name], *(mean_sd(per_seed[k]) for k in KEYS), f"{sum(walls) / len(walls):.0f}"))
    censored = 1.0 - float(e.mean())
    print(f"\nFMNIST survival bags: {len(test)} test bags, {censored:.1%} censored; CPU: {cpu_model()}; "
          f"seeds {args.seeds}")
    print("| model | C-index (Harrell) | Uno's C | td-AUC | IBS | s per run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"| **oracle** (true hazard 0.8 K) | {oracle_row['c_index']:.3f} | {oracle_row['c_index_uno']:.3f} | "
          f"{oracle_row['td_auc']:.3f} | | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "overrides": args.overrides, "runs": raw,
                                               "oracle": oracle_row, "test_censored": censored}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
