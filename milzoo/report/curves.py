"""Loss and metric curves per epoch from ``metrics.jsonl``.

One figure per split; one panel per metric; one colour per run.  Each fold is
a thin line and the mean over folds a thick line.  Where folds stopped early,
the mean at an epoch is over the folds that reached it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from milzoo.report.common import (
    NOT_CURVES,
    RUN_COLORS,
    RunData,
    is_number,
    metric_sort_key,
    new_figure,
    plain_text,
)

#: train-record keys not drawn (lr is drawn only when it changes)
_TRAIN_SKIP = {"time_s"}


def curves(run: RunData, split: str) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """``{metric: {fold: (epochs, values)}}`` of one split of a run (NaN/None dropped)."""
    table: dict[str, dict[int, dict[int, float]]] = {}
    for r in run.records:
        if r.get("split") != split or "epoch" not in r:
            continue
        fold, epoch = int(r.get("fold", 0)), int(r["epoch"])
        for k, v in r.items():
            if k in NOT_CURVES or (split == "train" and k in _TRAIN_SKIP) or not is_number(v):
                continue
            table.setdefault(k, {}).setdefault(fold, {})[epoch] = float(v)  # a resumed epoch: the later record wins
    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for metric, folds in table.items():
        out[metric] = {}
        for fold, pts in sorted(folds.items()):
            ep = np.array(sorted(pts), dtype=np.int64)
            out[metric][fold] = (ep, np.array([pts[e] for e in ep], dtype=np.float64))
    parts = [m for m in out if m not in ("loss", "lr")]
    if split == "train" and len(parts) == 1 and "loss" in out:  # a single loss: its part repeats the total
        a, b = out["loss"], out[parts[0]]
        if a.keys() == b.keys() and all(np.allclose(a[f][1], b[f][1]) for f in a):
            del out[parts[0]]
    if "lr" in out:
        vals = np.concatenate([v for _, v in out["lr"].values()])
        if vals.size == 0 or np.allclose(vals, vals[0]):
            del out["lr"]
    return out


def fold_mean(per_fold: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over folds at each epoch (over the folds that have that epoch)."""
    sums: dict[int, list[float]] = {}
    for ep, vals in per_fold.values():
        for e, v in zip(ep.tolist(), vals.tolist()):
            sums.setdefault(e, []).append(v)
    epochs = np.array(sorted(sums), dtype=np.int64)
    return epochs, np.array([float(np.mean(sums[e])) for e in epochs.tolist()])


def _panel_title(split: str, metric: str) -> str:
    nice = {"loss": "loss", "acc": "accuracy", "auc": "AUC", "f1": "F1", "inst_acc": "instance accuracy",
            "lr": "learning rate"}
    if metric == "loss":
        return "training loss (total)" if split == "train" else "loss (bag cross-entropy)"
    return nice.get(metric, metric)


def plot_split(runs: list[RunData], split: str, ncols: int | None = None, panel_size: tuple[float, float] = (4.2, 3.0)):
    """The figure of one split for one or several runs, or None when no run has numbers for it."""
    data = [(i, run, curves(run, split)) for i, run in enumerate(runs)]
    metrics = sorted({m for _, _, c in data for m in c}, key=metric_sort_key)
    if split == "train" and "lr" in metrics:  # learning rate last
        metrics = [m for m in metrics if m != "lr"] + ["lr"]
    if not metrics:
        return None
    if ncols is None:
        ncols = len(metrics) if len(metrics) <= 4 else 3
    ncols = max(1, min(ncols, len(metrics)))
    nrows = math.ceil(len(metrics) / ncols)
    fig = new_figure(panel_size[0] * ncols, panel_size[1] * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    many = len(runs) > 1
    for ax, metric in zip(axes.flat, metrics):
        for i, run, c in data:
            per_fold = c.get(metric)
            if not per_fold:
                continue
            color = RUN_COLORS[i % len(RUN_COLORS)]
            if len(per_fold) > 1:
                for ep, vals in per_fold.values():
                    ax.plot(ep + 1, vals, color=color, lw=0.8, alpha=0.3)
            ep, mean = fold_mean(per_fold)
            label = plain_text(run.label) if many else ("mean over folds" if len(per_fold) > 1 else None)
            ax.plot(ep + 1, mean, color=color, lw=2.2, label=label, marker="o" if len(ep) <= 12 else None, ms=3)
        ax.set_title(plain_text(_panel_title(split, metric)), fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if metric in ("acc", "auc", "f1", "inst_acc"):
            lo, hi = ax.get_ylim()
            ax.set_ylim(max(lo, -0.02), min(hi, 1.02))
        if metric == "lr":
            ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if many:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 4), fontsize=9, frameon=False,
                   bbox_to_anchor=(0.5, 1.0))
    elif handles:
        axes.flat[0].legend(fontsize=8, loc="best")
    nfolds = sorted({len(c.get(m, {})) for _, _, c in data for m in metrics} - {0})
    sub = ("" if many else f"{runs[0].label or runs[0].name} · ") + f"split '{split}'"
    if nfolds and max(nfolds) > 1:
        sub += " · thin lines: folds, thick: mean"
    fig.suptitle(plain_text(sub), fontsize=11, y=1.06 if many else 1.0)
    fig.tight_layout()
    return fig


def all_splits(runs: list[RunData]) -> list[str]:
    seen: list[str] = []
    for r in runs:
        for s in r.splits:
            if s not in seen:
                seen.append(s)
    return sorted(seen, key=lambda s: (s != "train", seen.index(s)))


def curve_figures(runs: list[RunData]) -> list[tuple[str, Any]]:
    """``[(split, figure)]`` for every split with numbers, ``train`` first."""
    out = []
    for split in all_splits(runs):
        fig = plot_split(runs, split)
        if fig is not None:
            out.append((split, fig))
    return out
