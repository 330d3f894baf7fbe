"""Bag accuracy against single-image accuracy of finished FMNIST runs (docs/results-psmil.md).

The reduced FMNIST protocol scores every model on one-image bags (``val_instances``/``test_instances``). For a
pooling with no instance classifier (TransMIL) that is the whole transformer run on a one-token bag, a bag it
never saw in training. This prints, for each run directory, the last model's accuracy on the 64-image
*validation* bags (the same construction as the training bags) next to its recorded ``val_instances`` accuracy
of the same epoch, so that the gap between them can be read off one run. Validation only: no test data.

    .venv/bin/python benchmarks/fmnist_bag_vs_instance.py runs/fmnist/transmil runs/fmnist/abmil
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from milzoo.datasets.batch import collate_bags
from milzoo.model.build import build_dataset
from milzoo.report.common import read_metrics
from milzoo.report.context import RunContext


def recorded_accuracy(run_dir: Path, split: str) -> tuple[int, float] | None:
    """(epoch, accuracy) of the last ``split`` record in the run's metrics."""
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") == split]
    return (records[-1]["epoch"], records[-1]["acc"]) if records else None


@torch.no_grad()
def bag_accuracy(model, ds, batch: int = 64) -> float:
    correct = 0
    for start in range(0, len(ds), batch):
        b = collate_bags([ds[i] for i in range(start, min(len(ds), start + batch))])
        correct += int((model.predict(b).bag_probs.argmax(-1) == b.y).sum())
    return correct / len(ds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| run | model | val bags (64 images) | val one-image bags (recorded) |")
    print("|---|---|---|---|")
    for run in args.runs:
        ctx = RunContext(run)
        model, which = ctx.model(0)
        val = build_dataset(ctx.recipe)["val"]
        inst = recorded_accuracy(run, "val_instances")
        inst_txt = f"{100 * inst[1]:.2f} (epoch {inst[0]})" if inst else "-"
        print(f"| {run} | {which} | {100 * bag_accuracy(model, val):.2f} ({len(val)} bags) | {inst_txt} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
