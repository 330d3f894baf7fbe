"""Regression MIL on Fashion-MNIST bags with a known ceiling: ABMIL, TransMIL, DSMIL and PSAtt (mse on
standardised targets) against the oracle (the noise-free target) on the same test bags, over several data draws.

The data (milzoo-survival's ``fmnist_regression``, docs/tasks.md): 800 training, 200 validation and 400 test bags
of 16 Fashion-MNIST images, K ~ U{0..4} of them "Trouser"; target = K / 16 + N(0, 0.03²).  The oracle predicts
K / 16: its R² and RMSE are the noise-limited ceiling.  Recipes: the shipped ``regression/fmnist_<pooling>``
(mlp encoder on flattened pixels, 20 epochs, 8 bags per step, the epoch chosen on validation R²).

    .venv/bin/python benchmarks/regression_fmnist.py                    # every recipe, data seed 0, seed 0
    .venv/bin/python benchmarks/regression_fmnist.py --data-seeds 0 1 2 3 4 --seeds 0 1 2 3 4 --paired
    .venv/bin/python benchmarks/regression_fmnist.py --data-seeds 0 1 2 --seeds 0 1 2   # all 9 combinations

Each run draws its own bags (``data.seed``, the data draw) and initialises its own model (``seed``); the oracle
and the training-free floor are computed on each draw's test bags.  Rows: mean ± sd over all runs (the oracle and
the floor: over the draws); "− oracle" is the paired gap (a run's metric minus the oracle's on the same draw).
Resumable: a run directory with summary.json is read, not run again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fmnist_tasks import (  # noqa: E402
    POOLINGS, cpu_model, describe_design, mean_sd, paired_diff, parse_args, run_models, test_split,
    wall_cell, write_json,
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

    oracle, floor = {}, {}
    for d in dict.fromkeys(args.data_seeds):
        test = test_split("regression/fmnist_abmil", args.overrides, d)
        y, truth = test.labels.reshape(-1, 1), test.oracle.reshape(-1, 1)
        oracle[d] = {k: float(v) for k, v in regression_metrics(y, truth).items()}
        floor[d] = {k: float(v) for k, v in regression_metrics(y, np.full_like(y, y.mean())).items()}
    raw = run_models(args, "regression", names, TABLES, KEYS, oracle)

    print(f"\nFMNIST regression bags: {len(test)} test bags per draw; CPU: {cpu_model()}; {describe_design(args)}")
    print("| model | R² | RMSE | MAE | Pearson r | R² − oracle | RMSE − oracle | s per run (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        r = raw[name]
        if "refused" in r:
            print(f"| {LABELS[name]} | refused by milzoo: {r['refused'].split('. ')[0]} | | | | | | |")
            continue
        cells = [mean_sd(r["r2"]), mean_sd(r["rmse"], 4), mean_sd(r["mae"], 4), mean_sd(r["pearson"]),
                 mean_sd(r["gap_r2"], signed=True), mean_sd(r["gap_rmse"], 4, signed=True), wall_cell(r["wall_s"])]
        print(f"| {LABELS[name]} | " + " | ".join(cells) + " |")

    def col(rows, k):
        return [rows[d][k] for d in rows]

    print(f"| **oracle** (K / 16, noise-limited) | {mean_sd(col(oracle, 'r2'))} | {mean_sd(col(oracle, 'rmse'), 4)} | "
          f"{mean_sd(col(oracle, 'mae'), 4)} | {mean_sd(col(oracle, 'pearson'))} | | | |")
    print(f"| training-free floor (test mean) | {mean_sd(col(floor, 'r2'))} | {mean_sd(col(floor, 'rmse'), 4)} | "
          f"{mean_sd(col(floor, 'mae'), 4)} | | | | |")

    served = [n for n in names if "refused" not in raw[n]]
    if served:
        ref = "abmil" if "abmil" in served else served[0]
        print(f"\nPaired gaps (same draw, same seed): each metric minus the oracle's; R² minus {LABELS[ref]}'s")
        print("| model | R² − oracle | RMSE − oracle | MAE − oracle | Pearson r − oracle | "
              f"R² − {LABELS[ref]} |")
        print("|---|---|---|---|---|---|")
        for name in served:
            r = raw[name]
            vs = mean_sd(paired_diff(r, raw[ref], "r2"), signed=True) if name != ref else ""
            print(f"| {LABELS[name]} | {mean_sd(r['gap_r2'], signed=True)} | {mean_sd(r['gap_rmse'], 4, signed=True)}"
                  f" | {mean_sd(r['gap_mae'], 4, signed=True)} | {mean_sd(r['gap_pearson'], signed=True)} | {vs} |")
    write_json(args.json, args, {"runs": raw, "oracle": {str(d): v for d, v in oracle.items()},
                                 "test_mean_floor": {str(d): v for d, v in floor.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
