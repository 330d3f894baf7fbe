"""Regression MIL on Fashion-MNIST bags with a known ceiling: ABMIL, TransMIL, DSMIL and PSAtt (mse on
standardised targets) against the oracle (the noise-free target) on the same test bags.

The data (milzoo-survival's ``fmnist_regression``, docs/tasks.md): 800 training, 200 validation and 400 test bags
of 16 Fashion-MNIST images, K ~ U{0..4} of them "Trouser"; target = K / 16 + N(0, 0.03²).  The oracle predicts
K / 16: its R² and RMSE are the noise-limited ceiling.  Recipes: the shipped ``regression/fmnist_<pooling>``
(mlp encoder on flattened pixels, 20 epochs, 8 bags per step, the epoch chosen on validation R²).

    .venv/bin/python benchmarks/regression_fmnist.py                    # every recipe, seed 0
    .venv/bin/python benchmarks/regression_fmnist.py --seeds 0 1 2      # mean ± sd over model seeds

Resumable: a run directory with summary.json is read, not run again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fmnist_tasks import (  # noqa: E402
    POOLINGS, cpu_model, mean_sd, metric, parse_args, recipe_source, run_recipe, test_split,
)

LABELS = {"abmil": "ABMIL", "transmil": "TransMIL", "dsmil": "DSMIL", "psatt": "PSAtt"}
KEYS = ("r2", "rmse", "mae", "pearson")
#: poolings without a shipped regression recipe, tried in the ABMIL recipe with this pooling table (their refusal
#: is the result: DSMIL is classification-only, PSAtt's attention is constant with a one-output head; docs/tasks.md)
TABLES = {"dsmil": {"name": "dsmil", "mode": "multiclass"}, "psatt": {"name": "psatt", "proto_update": "all"}}


def main() -> int:
    args = parse_args(__doc__, "runs/bench/regression_fmnist")
    names = [p for p in POOLINGS if not args.only or p in args.only]
    from milzoo.metrics import regression_metrics

    test, src = test_split("regression/fmnist_abmil", args.overrides)
    y, oracle = test.labels.reshape(-1, 1), test.oracle.reshape(-1, 1)
    oracle_row = regression_metrics(y, oracle)
    mean_row = regression_metrics(y, np.full_like(y, y.mean()))
    rows, raw = [], {}
    for name in names:
        per_seed: dict[str, list[float]] = {k: [] for k in KEYS}
        walls, refused = [], ""
        source = recipe_source("regression", name, TABLES)
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
    print(f"\nFMNIST regression bags: {len(test)} test bags; CPU: {cpu_model()}; seeds {args.seeds}")
    print("| model | R² | RMSE | MAE | Pearson r | s per run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"| **oracle** (K / 16, noise-limited) | {oracle_row['r2']:.3f} | {oracle_row['rmse']:.4f} | "
          f"{oracle_row['mae']:.4f} | {oracle_row['pearson']:.3f} | |")
    print(f"| training-free floor (test mean) | {mean_row['r2']:.3f} | {mean_row['rmse']:.4f} | "
          f"{mean_row['mae']:.4f} | | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "overrides": args.overrides, "runs": raw,
                                               "oracle": oracle_row}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
