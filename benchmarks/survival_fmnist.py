"""Survival MIL on Fashion-MNIST bags with a known ceiling: ABMIL, TransMIL, DSMIL and PSAtt (discrete-time NLL)
and ABMIL with the Cox loss, against the oracle (the true hazard) on the same test bags, over several data draws.

The data (milzoo-survival's ``fmnist_survival``, docs/tasks.md): 800 training, 200 validation and 400 test bags
of 16 Fashion-MNIST images, K ~ U{0..4} of them "Trouser"; event time ~ Exponential(rate (1/48) exp(0.8 K)),
independent exponential censoring tuned to 30% censored.  Recipes: the shipped ``survival/fmnist_<pooling>``
(mlp encoder on flattened pixels, 20 epochs, 8 bags per step, the epoch chosen on validation C-index).

    .venv/bin/python benchmarks/survival_fmnist.py                      # every recipe, data seed 0, seed 0
    .venv/bin/python benchmarks/survival_fmnist.py --data-seeds 0 1 2 3 4 --seeds 0 1 2 3 4 --paired
    .venv/bin/python benchmarks/survival_fmnist.py --data-seeds 0 1 2 --seeds 0 1 2     # all 9 combinations
    .venv/bin/python benchmarks/survival_fmnist.py --only abmil --set train.epochs=5

Each run draws its own bags (``data.seed``, the data draw) and initialises its own model (``seed``); the oracle
is computed on each draw's test bags.  Resumable: a run directory with summary.json is read, not run again.  The
table (docs/results.md) gives the test metrics of the validation-selected epoch, mean ± sd over all runs; the
oracle row is the generative model's own risk (0.8 K), mean ± sd over the draws; "− oracle" is the paired gap
(a run's C-index minus the oracle's on the same draw).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fmnist_tasks import (  # noqa: E402
    POOLINGS, cpu_model, describe_design, mean_sd, paired_diff, parse_args, run_models, test_split,
    wall_cell, write_json,
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

    oracle, censored = {}, {}
    for d in dict.fromkeys(args.data_seeds):
        test = test_split("survival/fmnist_abmil", args.overrides, d)
        t, e, risk = test.labels[:, 0], test.labels[:, 1], test.oracle
        oracle[d] = {"c_index": sm.harrell_c(t, e, risk), "c_index_uno": sm.uno_c(t, e, risk),
                     "td_auc": sm.time_dependent_auc(t, e, risk)}
        censored[d] = 1.0 - float(e.mean())
    raw = run_models(args, "survival", names, TABLES, KEYS, oracle)

    print(f"\nFMNIST survival bags: {len(test)} test bags per draw, censored share "
          f"{mean_sd(list(censored.values()))}; CPU: {cpu_model()}; {describe_design(args)}")
    print("| model | C-index (Harrell) | Uno's C | td-AUC | IBS | C-index − oracle | s per run (median) |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = raw[name]
        if "refused" in r:
            print(f"| {LABELS[name]} | refused by milzoo: {r['refused'].split('. ')[0]} | | | | | |")
            continue
        cells = [mean_sd(r[k]) for k in KEYS] + [mean_sd(r["gap_c_index"], signed=True), wall_cell(r["wall_s"])]
        print(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    o = {k: [oracle[d][k] for d in oracle] for k in oracle[args.data_seeds[0]]}
    print(f"| **oracle** (true hazard 0.8 K) | {mean_sd(o['c_index'])} | {mean_sd(o['c_index_uno'])} | "
          f"{mean_sd(o['td_auc'])} | | | |")

    served = [n for n in names if "refused" not in raw[n]]
    ref = "abmil" if "abmil" in served else (served[0] if served else None)
    if ref is None:
        served = []
    print(f"\nPaired gaps (same draw, same seed): each metric minus the oracle's; C-index minus {LABELS.get(ref)}'s")
    print(f"| model | C-index − oracle | Uno's C − oracle | td-AUC − oracle | C-index − {LABELS.get(ref)} |")
    print("|---|---|---|---|---|")
    for name in served:
        r = raw[name]
        vs = mean_sd(paired_diff(r, raw[ref], "c_index"), signed=True) if name != ref else ""
        print(f"| {LABELS[name]} | " + " | ".join(mean_sd(r[f"gap_{k}"], signed=True) for k in oracle[
            args.data_seeds[0]]) + f" | {vs} |")
    write_json(args.json, args, {"runs": raw, "oracle": {str(d): v for d, v in oracle.items()},
                                 "test_censored": {str(d): v for d, v in censored.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
