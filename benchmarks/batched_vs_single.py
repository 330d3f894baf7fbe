"""Batched bags vs one bag per step: ABMIL on MUSK1/MUSK2 through the real runner.

For each dataset the same 10-fold stratified CV (standardised per fold, the
same epochs, seed and folds) is trained twice: with ``train.batch_size = B``
(bags zero-padded and masked) and with ``batch_size = 1``.  The two are
interleaved fold by fold (and the order alternates between folds) so that load
from other users of a shared machine hits both alike.  Every fold is a call of
``milzoo.runs.runner.run(..., fold=i)``, so the time includes everything a user
pays: dataset loading, model building, training, per-epoch evaluation and
checkpoints.  Both wall time and process CPU time are reported; on a busy
machine the CPU-time ratio is the steadier of the two.

Learning rate: with ``B`` bags per step there are ``B`` times fewer Adam steps
per epoch, so by default the batched run uses ``lr * sqrt(B)`` (Adam's usual
square-root scaling); ``--lr-batched`` overrides it.

    .venv/bin/python benchmarks/batched_vs_single.py                 # MUSK1 and MUSK2, B = 8
    .venv/bin/python benchmarks/batched_vs_single.py --datasets musk1 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch


def base_recipe(dataset: str, epochs: int, batch_size: int, lr: float, folds: int, seed: int) -> dict:
    """ABMIL with the ABMIL paper's MUSK embedding (fc-256, fc-128, dropout), as recipes/classic/abmil_*.toml."""
    return {
        "name": f"bvs_{dataset}_b{batch_size}",
        "seed": seed,
        "data": {"name": "classic", "dataset": dataset},
        "encoder": {"name": "mlp", "dims": [256, 128], "dropout": 0.2},
        "pooling": {"name": "abmil", "attn_hidden": 64, "gated": False},
        "loss": [{"name": "bag_ce"}],
        "optim": {"name": "adam", "lr": lr, "weight_decay": 5e-4},
        "train": {"epochs": epochs, "batch_size": batch_size, "threads": 1, "progress": False},
        "protocol": {"kind": "cv", "folds": folds, "standardize": True},
    }


def warm_up() -> None:
    """Pay one-time import costs (the first torch optimiser imports torch._dynamo) outside the timings."""
    torch.set_num_threads(1)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p], lr=1e-3, foreach=True)
    p.sum().backward()
    opt.step()
    import milzoo.runs.runner  # noqa: F401
    from milzoo import registry

    registry.get_component("pooling", "abmil")


def bench_dataset(dataset: str, args, out_root: Path) -> dict:
    from milzoo.runs.runner import run

    lr_b = args.lr_batched if args.lr_batched is not None else args.lr * math.sqrt(args.batch_size)
    modes = {
        "batched": base_recipe(dataset, args.epochs, args.batch_size, lr_b, args.folds, args.seed),
        "single": base_recipe(dataset, args.epochs, 1, args.lr, args.folds, args.seed),
    }
    wall = {m: 0.0 for m in modes}
    cpu = {m: 0.0 for m in modes}
    summaries: dict[str, dict] = {}
    for m in modes:
        shutil.rmtree(out_root / f"{dataset}-{m}", ignore_errors=True)
    for fold in range(args.folds):
        order = ["batched", "single"] if fold % 2 == 0 else ["single", "batched"]
        for m in order:
            t0, c0 = time.perf_counter(), time.process_time()
            s = run(modes[m], out=out_root / f"{dataset}-{m}", fold=fold, progress=False)
            wall[m] += time.perf_counter() - t0
            cpu[m] += time.process_time() - c0
            if s.get("complete", True) and "last" in s:
                summaries[m] = s
        print(f"  {dataset} fold {fold}: wall batched {wall['batched']:.1f}s single {wall['single']:.1f}s",
              file=sys.stderr, flush=True)
    res = {"dataset": dataset, "epochs": args.epochs, "folds": args.folds, "batch_size": args.batch_size,
           "lr_single": args.lr, "lr_batched": lr_b}
    for m in modes:
        t = summaries[m]["last"]["test"]
        res[m] = {"wall_s": round(wall[m], 2), "cpu_s": round(cpu[m], 2),
                  "acc": t["acc"]["mean"], "acc_std": t["acc"]["std"],
                  "auc": t["auc"]["mean"], "auc_std": t["auc"]["std"]}
    res["wall_ratio"] = wall["single"] / wall["batched"]
    res["cpu_ratio"] = cpu["single"] / cpu["batched"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["musk1", "musk2"])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4, help="learning rate of the one-bag-per-step run")
    ap.add_argument("--lr-batched", type=float, default=None, help="default: lr * sqrt(batch size)")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-root", default="/tmp/milzoo-bvs")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    out_root = Path(args.out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    warm_up()
    results = [bench_dataset(d, args, out_root) for d in args.datasets]

    print(f"ABMIL, {args.folds}-fold CV, {args.epochs} epochs, torch {torch.__version__}, "
          f"{platform.machine()} with {torch.get_num_threads()} torch thread(s)")
    print("| dataset | mode | bags/step | lr | wall s | CPU s | acc (last epoch) | AUC |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for m, bs, lr in (("batched", r["batch_size"], r["lr_batched"]), ("single", 1, r["lr_single"])):
            x = r[m]
            print(f"| {r['dataset']} | {m} | {bs} | {lr:.3g} | {x['wall_s']:.1f} | {x['cpu_s']:.1f} | "
                  f"{x['acc']:.3f} ± {x['acc_std']:.3f} | {x['auc']:.3f} ± {x['auc_std']:.3f} |")
    for r in results:
        print(f"{r['dataset']}: batched is {r['wall_ratio']:.2f}x faster (wall), {r['cpu_ratio']:.2f}x (CPU); "
              f"acc {r['batched']['acc']:.3f} vs {r['single']['acc']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
