"""Representation maps: a trained encoder's instance features projected to 2-D.

A seeded sample of instances of one split is encoded with
``model.encode_instances`` (eval mode, no augmentation) and projected with
t-SNE (scikit-learn; PCA to 50 dimensions first) or PCA.  Points are coloured
by their instance label when the bags carry one, else by their bag label: the
picture that shows whether the encoder learned the classes or drifted (PSMIL
paper, Fig. 4 and 6-9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from milzoo.report.common import new_figure


@dataclass
class InstanceSample:
    x: torch.Tensor  # [M, *instance_shape]
    labels: np.ndarray  # [M] class index used for colour, -1 unknown
    label_kind: str  # "instance label" or "bag label"
    bag_labels: np.ndarray  # [M]
    bag_positions: np.ndarray  # [M] position of the bag in the split
    n_bags: int


@dataclass
class EmbeddingMap:
    xy: np.ndarray  # [M, 2]
    labels: np.ndarray
    label_kind: str
    class_names: list[str]
    method: str
    notes: list[str] = field(default_factory=list)
    knn_agreement: float | None = None
    majority_share: float | None = None
    explained: tuple[float, float] | None = None  # PCA explained variance ratios


def sample_instances(ds, max_instances: int = 2000, seed: int = 0) -> InstanceSample:
    """Up to ``max_instances`` instances spread over the bags of ``ds`` (seeded).

    Bags are visited in a seeded random order; each takes its share of the
    remaining budget (remaining / bags left), so small bags leave room for
    larger ones and the sample is spread over as many bags as possible.
    """
    if len(ds) == 0:
        raise ValueError("the split has no bags")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))
    xs, inst, bag_y, pos = [], [], [], []
    budget = int(max_instances)
    taken_bags = 0
    for j, b in enumerate(order.tolist()):
        if budget <= 0:
            break
        bag = ds[b]
        n = len(bag)
        quota = max(1, math.ceil(budget / (len(order) - j)))
        take = np.sort(rng.choice(n, size=min(n, quota, budget), replace=False))
        t = torch.from_numpy(take)
        xs.append(bag.x[t])
        if bag.inst_y is not None:
            inst.append(bag.inst_y[t].long().numpy())
        else:
            inst.append(np.full(len(take), -1, dtype=np.int64))
        bag_y.append(np.full(len(take), int(bag.y), dtype=np.int64))
        pos.append(np.full(len(take), b, dtype=np.int64))
        budget -= len(take)
        taken_bags += 1
    inst_y, bag_labels = np.concatenate(inst), np.concatenate(bag_y)
    if (inst_y >= 0).any():
        labels, kind = inst_y, "instance label"
    else:
        labels, kind = bag_labels, "bag label"
    return InstanceSample(torch.cat(xs), labels, kind, bag_labels, np.concatenate(pos), taken_bags)


@torch.no_grad()
def encode(model, x: torch.Tensor, chunk: int = 256) -> np.ndarray:
    model.check_instances(x, "the split's instances")  # data of another shape than the model's: a clear error
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i: i + chunk]
        if not xb.is_floating_point():
            xb = xb.float()
        out.append(model.encode_instances(xb.to(device)).float().cpu())
    return torch.cat(out).flatten(1).numpy().astype(np.float64)


def _pca(feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` principal components (numpy SVD) and their explained variance ratios."""
    x = feats - feats.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s**2
    total = var.sum() if var.sum() > 0 else 1.0
    z = x @ vt[:k].T
    ratios = var[:k] / total
    if z.shape[1] < k:  # 1-D features: pad
        z = np.concatenate([z, np.zeros((len(z), k - z.shape[1]))], axis=1)
        ratios = np.concatenate([ratios, np.zeros(k - len(ratios))])
    return z, ratios


def project(feats: np.ndarray, method: str = "tsne", seed: int = 0) -> tuple[np.ndarray, str, list[str], Any]:
    """``(xy [M, 2], method used, notes, PCA explained ratios or None)``."""
    notes: list[str] = []
    n = len(feats)
    if method not in ("tsne", "pca"):
        raise ValueError(f"unknown projection {method!r}; use tsne or pca")
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            TSNE = None
            notes.append("scikit-learn's TSNE is not available; PCA is shown instead.")
        if TSNE is not None and n < 6:
            notes.append(f"only {n} instances: too few for t-SNE; PCA is shown instead.")
            TSNE = None
        if TSNE is not None:
            z = feats
            if z.shape[1] > 50:
                z, _ = _pca(z, 50)
            perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
            tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
            return tsne.fit_transform(z.astype(np.float32)), "t-SNE", notes, None
    z, ratios = _pca(feats, 2)
    return z, "PCA", notes, (float(ratios[0]), float(ratios[1]))


def knn_agreement(feats: np.ndarray, labels: np.ndarray, k: int = 5) -> float | None:
    """Share of instances whose k nearest neighbours (in feature space, itself excluded) vote its label."""
    keep = labels >= 0
    f, y = feats[keep], labels[keep]
    if len(y) <= k or len(np.unique(y)) < 2:
        return None
    try:
        from sklearn.neighbors import NearestNeighbors
    except ImportError:
        return None
    nn = NearestNeighbors(n_neighbors=k + 1).fit(f)
    idx = nn.kneighbors(f, return_distance=False)[:, 1:]
    votes = y[idx]
    pred = np.array([np.bincount(v, minlength=y.max() + 1).argmax() for v in votes])
    return float((pred == y).mean())


def embedding_map(model, ds, max_instances: int = 2000, method: str = "tsne", seed: int = 0) -> EmbeddingMap:
    sample = sample_instances(ds, max_instances, seed)
    feats = encode(model, sample.x)
    xy, used, notes, explained = project(feats, method, seed)
    known = sample.labels[sample.labels >= 0]
    majority = float(np.bincount(known).max() / len(known)) if len(known) else None
    notes = [f"{len(feats)} instances from {sample.n_bags} of {len(ds)} bags", *notes]
    return EmbeddingMap(xy=xy, labels=sample.labels, label_kind=sample.label_kind,
                        class_names=list(getattr(ds, "class_names", None) or model.class_names),
                        method=used, notes=notes, knn_agreement=knn_agreement(feats, sample.labels),
                        majority_share=majority, explained=explained)


def class_colors(k: int) -> list:
    import matplotlib

    if k <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(k)]
    if k <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(k)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(i / max(1, k - 1)) for i in range(k)]


def plot_embedding(emb: EmbeddingMap, title: str = ""):
    k = max(len(emb.class_names), int(emb.labels.max()) + 1 if len(emb.labels) else 0)
    names = list(emb.class_names) + [str(i) for i in range(len(emb.class_names), k)]
    colors = class_colors(k)
    fig = new_figure(7.8, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    n = len(emb.xy)
    size = float(np.clip(4000.0 / max(n, 1), 6, 40))
    present = [c for c in range(k) if (emb.labels == c).any()]
    # draw large classes first so that rare (key) classes stay visible on top
    for c in sorted(present, key=lambda c: -(emb.labels == c).sum()):
        sel = emb.labels == c
        ax.scatter(emb.xy[sel, 0], emb.xy[sel, 1], s=size, color=colors[c], alpha=0.75, linewidths=0,
                   label=f"{names[c]} ({int(sel.sum())})")
    unknown = emb.labels < 0
    if unknown.any():
        ax.scatter(emb.xy[unknown, 0], emb.xy[unknown, 1], s=size, color="#b0b0b0", alpha=0.5, linewidths=0,
                   label=f"unknown ({int(unknown.sum())})")
    if emb.method == "PCA" and emb.explained is not None:
        ax.set_xlabel(f"PC 1 ({100 * emb.explained[0]:.1f}% of variance)", fontsize=9)
        ax.set_ylabel(f"PC 2 ({100 * emb.explained[1]:.1f}% of variance)", fontsize=9)
        ax.tick_params(labelsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("t-SNE 1", fontsize=9)
        ax.set_ylabel("t-SNE 2", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i].startswith("unknown"), i))
    # legend in class order
    by_class = {names[c]: c for c in present}
    order = sorted(order, key=lambda i: by_class.get(labels[i].rsplit(" (", 1)[0], 10**6))
    if len(labels) <= 24:
        ax.legend([handles[i] for i in order], [labels[i] for i in order], title=f"colour: {emb.label_kind}",
                  fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
                  markerscale=max(1.0, 30 / size) ** 0.5)
    else:
        ax.text(1.01, 0.5, f"{len(labels)} classes\n(colour: {emb.label_kind};\nlegend omitted)",
                transform=ax.transAxes, fontsize=8, va="center")
    lines = [title or "representation map", f"{emb.method} of encoder features · " + "; ".join(emb.notes)]
    if emb.knn_agreement is not None:
        ref = f" (largest class: {emb.majority_share:.2f})" if emb.majority_share is not None else ""
        lines.append(f"5-NN {emb.label_kind} agreement in feature space: {emb.knn_agreement:.3f}{ref}")
    ax.set_title("\n".join(lines), fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def run_embedding(ctx, fold: int = 0, split: str = "test", max_instances: int = 2000, method: str = "tsne",
                  seed: int = 0, label: str | None = None):
    """The representation-map figure of one fold's model on one split of a run (a :class:`RunContext`)."""
    model, which = ctx.model(fold)
    ds = ctx.dataset(fold, split)
    emb = embedding_map(model, ds, max_instances=max_instances, method=method, seed=seed)
    name = label or ctx.display_name
    fig = plot_embedding(emb, title=f"{name} · fold {fold} ({which} model) · split '{split}'")
    return fig, emb
