"""Patch-level localisation: per-slide tables of attention and instance scores, and heatmaps.

The numbers come from one eval-mode forward of the whole slide
(``model.predict(collate_bags([bag]))``): ``MILOutput.attention`` (``[B, N]``
or per class ``[B, N, k]``) and ``MILOutput.inst_probs`` (``[B, N, k]``,
softmax of the instance logits or the method's own instance probabilities).
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any, Sequence

import fsspec
import numpy as np
import torch

from milzoo.datasets.batch import Bag, collate_bags
from milzoo.model.ensemble import fold_predictions
from milzoo.errors import ComponentError

_MAX_CELLS = 4_000_000  # heatmap grid cells before the grid is coarsened


def _device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _colnames(prefix: str, k: int, class_names: Sequence[str]) -> list[str]:
    if len(class_names) == k:
        names = [re.sub(r"[^0-9A-Za-z_.-]+", "_", str(c)) for c in class_names]
        if len(set(names)) == k:
            return [f"{prefix}_{n}" for n in names]
    return [f"{prefix}_{i}" for i in range(k)]


def instance_outputs(model, bag: Bag, threshold: float | None = None) -> dict[str, Any]:
    """One eval forward of ``bag``: ``attention`` ([n] or [n, k]), ``scores`` ([n, k]), ``bag_probs`` ([k])
    and ``pred``.

    ``pred`` is the ensemble's vote when the model returns one (``extras["vote"]``
    of :class:`milzoo.hub.Ensemble`), else ``p1 >= threshold`` for a binary
    model given a threshold (its validation-chosen Youden threshold), else the
    argmax.  Missing outputs are None.  Raises :class:`ComponentError` when the
    model exports neither attention nor instance probabilities.
    """
    batch = collate_bags([bag]).to(_device(model))
    out = model.predict(batch)
    n = len(bag)
    att = None if out.attention is None else out.attention[0, :n].detach().float().cpu().numpy()
    ip = out.inst_probs
    scores = None if ip is None else ip[0, :n].detach().float().cpu().numpy()
    if att is None and scores is None:
        raise ComponentError(
            f"pooling {getattr(model.pooling, 'name', '?')!r} exports neither attention nor instance scores, "
            "so it cannot localise; use a pooling that fills MILOutput.attention or inst_logits."
        )
    probs = out.bag_probs[0].detach().float().cpu().numpy()
    vote = (out.extras or {}).get("vote")
    if vote is not None:
        pred = int(vote[0])
    else:
        pred = int(fold_predictions(probs[None].astype(np.float64), threshold)[0])
    return {"attention": att, "scores": scores, "bag_probs": probs, "pred": pred}


def _rows(bag: Bag, outs: dict[str, Any], class_names: Sequence[str]) -> list[dict[str, Any]]:
    n = len(bag)
    sid = str(bag.meta.get("slide_id", bag.bag_id)) if bag.meta else bag.bag_id
    coords = None if bag.coords is None else bag.coords.cpu().numpy()
    att, scores = outs["attention"], outs["scores"]
    att_cols = None
    if att is not None and att.ndim == 2:
        att_cols = _colnames("attention", att.shape[1], class_names)
    score_cols = None if scores is None else _colnames("score", scores.shape[1], class_names)
    rows = []
    for i in range(n):
        r: dict[str, Any] = {"slide_id": sid, "patch": i}
        r["x"] = coords[i, 0].item() if coords is not None else ""
        r["y"] = coords[i, 1].item() if coords is not None else ""
        if att is not None:
            if att_cols is None:
                r["attention"] = float(att[i])
            else:
                r.update({c: float(v) for c, v in zip(att_cols, att[i])})
        if scores is not None:
            r.update({c: float(v) for c, v in zip(score_cols, scores[i])})
        rows.append(r)
    return rows


def localization_table(model, bag: Bag) -> list[dict[str, Any]]:
    """One row per patch: ``slide_id, patch, x, y``, the attention, and the instance score per class.

    Columns: ``attention`` (or ``attention_<class>`` for per-class attention)
    when the pooling exports attention; ``score_<class>`` (instance class
    probabilities) when it exports instance scores.  ``x``/``y`` are empty
    without coordinates.  ``patch`` is the patch's row in the slide's file.
    """
    return _rows(bag, instance_outputs(model, bag), model.class_names)


def _write_bytes(url: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def _grid_step(c: np.ndarray) -> float:
    steps = []
    for axis in (0, 1):
        u = np.unique(c[:, axis])
        d = np.diff(u)
        d = d[d > 0]
        if d.size:
            steps.append(float(d.min()))
    return min(steps) if steps else 1.0


def heatmap_grid(coords, values, patch_size: float | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The ``[rows, cols]`` image of per-patch values (NaN where no patch) and ``(x0, y0, cell size)``.

    Row 0 is the top of the slide (smallest y).  Patches sharing a cell show their largest value.
    """
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(c) != len(v):
        raise ValueError(f"{len(c)} coordinates for {len(v)} values")
    if len(c) == 0:
        raise ValueError("nothing to draw")
    step = float(patch_size) if patch_size else _grid_step(c)
    x0, y0 = c.min(axis=0)
    while True:
        ix = np.floor((c[:, 0] - x0) / step + 1e-6).astype(np.int64)
        iy = np.floor((c[:, 1] - y0) / step + 1e-6).astype(np.int64)
        w, h = int(ix.max()) + 1, int(iy.max()) + 1
        if w * h <= _MAX_CELLS:
            break
        step *= 2
    img = np.full((h, w), np.nan)
    np.fmax.at(img, (iy, ix), v)
    return img, (float(x0), float(y0), step)


def draw_heatmap(
    coords,
    values,
    out_png: str,
    patch_size: float | None = None,
    *,
    title: str | None = None,
    cmap: str = "coolwarm",
) -> None:
    """Draw per-patch ``values`` at their slide ``coords`` (top-left corners, level-0 pixels) as a PNG.

    Patches are painted on a grid of ``patch_size`` pixels (default: the
    smallest spacing between distinct coordinates); where patches share a cell
    the largest value shows.  Very large grids are coarsened to at most 4M
    cells.  Uses matplotlib's Agg canvas (no display, no pyplot state);
    ``out_png`` may be any fsspec URL.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img, (x0, y0, step) = heatmap_grid(coords, values, patch_size)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    h, w = img.shape
    finite = v[np.isfinite(v)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1e-12

    aspect = h / max(w, 1)
    width = 8.0
    fig = Figure(figsize=(width, max(2.0, min(12.0, width * aspect)) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="#f0f0f0")
    im = ax.imshow(
        np.ma.masked_invalid(img), cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest",
        extent=(x0, x0 + w * step, y0 + h * step, y0),
    )
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _write_bytes(out_png, buf.getvalue())


def _safe_name(slide_id: str) -> str:
    name = re.sub(r"[^0-9A-Za-z_.-]+", "_", slide_id).strip(".")
    return name or "slide"


def write_localization(
    model,
    dataset,
    out_dir: str,
    *,
    heatmaps: bool = True,
    heatmap_value: str = "auto",
    heatmap_class: int | None = None,
    patch_size: float | None = None,
    indices: Sequence[int] | None = None,
    threshold: float | None = None,
) -> list[dict[str, Any]]:
    """Write ``<slide_id>.csv`` (see :func:`localization_table`) and ``<slide_id>.png`` per slide.

    ``heatmap_value``: ``"attention"``, ``"score"`` (instance probability) or
    ``"auto"`` (attention when the model has it, else the score).  The class
    shown (for per-class attention and for scores) is ``heatmap_class``, or the
    slide's predicted class when None.  Slides without coordinates get no PNG.
    ``threshold``: the binary decision threshold of the model (see
    :func:`instance_outputs`; an ensemble's vote needs none).
    Returns one dict per slide: ``slide_id, label, pred, probs, csv, png``.
    """
    if heatmap_value not in ("auto", "attention", "score"):
        raise ValueError("heatmap_value must be auto, attention or score")
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    base = out_dir.rstrip("/")
    idx = range(len(dataset)) if indices is None else indices
    summary = []
    used: set[str] = set()
    for i in idx:
        bag = dataset[int(i)]
        outs = instance_outputs(model, bag, threshold)
        rows = _rows(bag, outs, model.class_names)
        sid = rows[0]["slide_id"]
        name = _safe_name(sid)
        while name in used:
            name += "_"
        used.add(name)
        csv_url = f"{base}/{name}.csv"
        _write_bytes(csv_url, rows_to_csv(rows).encode("utf-8"))
        probs = outs["bag_probs"]
        pred = outs["pred"]
        png_url = None
        if heatmaps and bag.coords is not None:
            cls = pred if heatmap_class is None else int(heatmap_class)
            kind = heatmap_value
            if kind == "auto":
                kind = "attention" if outs["attention"] is not None else "score"
            vals = outs[{"attention": "attention", "score": "scores"}[kind]]
            if vals is None:
                raise ComponentError(f"the model exports no {kind} values to draw; use heatmap_value='auto'.")
            label = kind
            if vals.ndim == 2:
                if not 0 <= cls < vals.shape[1]:
                    raise ValueError(
                        f"slide {sid!r}: class {cls} is not among the {vals.shape[1]} {kind} columns; "
                        "pass heatmap_class"
                    )
                vals = vals[:, cls]
                cname = model.class_names[cls] if cls < len(model.class_names) else str(cls)
                label = f"{kind} ({cname})"
            png_url = f"{base}/{name}.png"
            draw_heatmap(
                bag.coords.cpu().numpy(), vals, png_url, patch_size=patch_size,
                title=f"{sid}: {label}, predicted {model.class_names[pred] if pred < len(model.class_names) else pred}"
                f" (p={float(probs[pred]):.3f})",
            )
        summary.append({"slide_id": sid, "label": int(bag.y), "pred": pred, "probs": [float(p) for p in probs],
                        "csv": csv_url, "png": png_url})
    return summary
