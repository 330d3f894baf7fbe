"""Patch-level localisation: per-slide tables of attention and instance scores, and heatmaps.

The numbers come from one eval-mode forward of the whole slide
(``model.predict(collate_bags([bag]))``): ``MILOutput.attention`` (``[B, N]``
or per class ``[B, N, k]``) and ``MILOutput.inst_probs`` (``[B, N, k]``,
softmax of the instance logits or the method's own instance probabilities).  A slide's class comes from
the one decision rule of :mod:`milzoo.model.decision` (the checkpoint's validation threshold, else argmax;
an ensemble's vote), and every output says which rule gave it.

A model whose task has no classes (regression, survival) has no class to decide and no instance class
probabilities: its outputs are the attention and the task's prediction of the slide in the label's units
(``risk``, ``pred``: :func:`milzoo.model.decision.task_prediction`).

Heatmaps are drawn in the one colour map of :data:`milzoo.report.common.VALUE_CMAP` (viridis); cells without
a patch are white (not on the map) on the patch grid, and transparent over a slide image
(:mod:`milzoo_wsi.slide_images`, when a reader is installed).  Each slide with coordinates also gets a
GeoJSON file of its patches that QuPath opens (:mod:`milzoo_wsi.geojson`).
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
from milzoo.datasets.files import check_data_file
from milzoo.errors import ComponentError, DataError
from milzoo.model.decision import (
    Decision,
    TaskPrediction,
    decide_output,
    label_text,
    label_values,
    model_threshold,
    no_classes_text,
    prediction_columns,
    predicts_classes,
    rule_text,
    task_of,
    task_prediction,
    valid_threshold,
)
from milzoo.report.common import NO_PATCH_COLOR, NO_PATCH_LABEL, VALUE_CMAP

_MAX_CELLS = 4_000_000  # heatmap grid cells before the grid is coarsened
_OVERLAY_ALPHA = 0.6  # opacity of the values drawn over a slide image


def _device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _task_name(model) -> str:
    return str(getattr(task_of(model), "name", "?"))


def _colnames(prefix: str, k: int, class_names: Sequence[str]) -> list[str]:
    if len(class_names) == k:
        names = [re.sub(r"[^0-9A-Za-z_.-]+", "_", str(c)) for c in class_names]
        if len(set(names)) == k:
            return [f"{prefix}_{n}" for n in names]
    return [f"{prefix}_{i}" for i in range(k)]


def instance_outputs(model, bag: Bag, threshold: float | None = None) -> dict[str, Any]:
    """One eval forward of ``bag``: ``attention`` ([n] or [n, k]), ``scores`` ([n, k]), ``bag_probs`` ([k]),
    ``pred``, ``decision`` and ``prediction``.

    ``decision`` (:class:`milzoo.model.decision.Decision`) is the ensemble's vote when the model returns one
    (``extras["vote"]`` of :class:`milzoo.hub.Ensemble`), else ``p1 >= threshold`` for a binary model with a
    threshold (``threshold``, or the one its checkpoint recorded: ``model.decision_threshold``), else the
    argmax; ``pred`` is its class index.  Missing outputs are None.  Raises :class:`ComponentError` when the
    model exports neither attention nor instance probabilities.

    A model whose task has no classes (regression, survival) gets ``prediction``, a
    :class:`~milzoo.model.decision.TaskPrediction` (``risk -0.43 (survival, discrete head)``), and None for
    ``scores``, ``bag_probs``, ``pred`` and ``decision``: its instance "probabilities" are a softmax over
    regression targets or time bins, not classes.  Such a model needs attention (a :class:`ComponentError`
    otherwise).  For class models ``prediction`` is None.
    """
    batch = collate_bags([bag]).to(_device(model))
    out = model.predict(batch)
    n = len(bag)
    att = None if out.attention is None else out.attention[0, :n].detach().float().cpu().numpy()
    if not predicts_classes(model):
        if att is None:
            raise ComponentError(
                f"pooling {getattr(getattr(model, 'pooling', None), 'name', '?')!r} exports no attention, and the "
                f"{_task_name(model)} task has no classes, so its instance scores are no class "
                "probabilities: there is nothing per patch to localise. Use a pooling with attention (abmil, "
                "transmil)."
            )
        return {"attention": att, "scores": None, "bag_probs": None, "pred": None, "decision": None,
                "prediction": task_prediction(model, out, 0, batch)}
    ip = out.inst_probs
    scores = None if ip is None else ip[0, :n].detach().float().cpu().numpy()
    if att is None and scores is None:
        raise ComponentError(
            f"pooling {getattr(model.pooling, 'name', '?')!r} exports neither attention nor instance scores, "
            "so it cannot localise; use a pooling that fills MILOutput.attention or inst_logits."
        )
    probs = out.bag_probs[0].detach().float().cpu().numpy()
    thr = valid_threshold(threshold)
    decision = decide_output(out, 0, thr if thr is not None else model_threshold(model), list(model.class_names),
                             getattr(model, "thresholds", None))
    return {"attention": att, "scores": scores, "bag_probs": probs, "pred": decision.index, "decision": decision,
            "prediction": None}


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
    probabilities) when it exports instance scores (class models only: a task
    without classes has none).  ``x``/``y`` are empty without coordinates.
    ``patch`` is the patch's row in the slide's file.
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


def patch_size_of(dataset, index: int) -> float | None:
    """The side of slide ``index``'s patches in level-0 pixels, from its feature file's attributes, or None.

    TRIDENT writes ``patch_size_level0`` on the ``coords`` dataset of its h5 files; CLAM writes ``patch_size``
    at ``patch_level`` with that level's ``downsample``; converted safetensors files keep them as metadata.
    The header is read through ``milzoo_wsi.stores.probe_slide`` (its ``patching``), and h5 attributes
    directly where that says nothing.  None when the file says nothing: the coordinates' grid step is used.
    """
    records = getattr(dataset, "records", None)
    try:
        sf = records[int(index)].file
    except (TypeError, IndexError, AttributeError, KeyError):
        return None
    try:
        from milzoo_wsi.stores import probe_slide

        size = (getattr(probe_slide(sf), "patching", None) or {}).get("patch_size_level0")
        if isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0:
            return float(size)
    except Exception:  # noqa: BLE001 - a header we cannot read is a size we do not know
        pass
    if getattr(sf, "fmt", None) != "h5":
        return None
    try:
        import h5py

        url = sf.url
        local = url if "://" not in url else (url[len("file://"):] if url.startswith("file://") else None)
        if local is not None:
            check_data_file(local, "feature file", must_exist=False)  # never open a pipe or a device
            with h5py.File(local, "r") as f:
                return _h5_patch_size(f)
        with fsspec.open(url, "rb") as fh, h5py.File(fh, "r") as f:
            return _h5_patch_size(f)
    except Exception:  # noqa: BLE001
        return None


def bag_patch_size(bag: Bag) -> float | None:
    """The patch side in level-0 pixels that the ``slides`` dataset put in ``bag.meta["patching"]``, or None."""
    patching = (bag.meta or {}).get("patching") if isinstance(bag.meta, dict) else None
    size = patching.get("patch_size_level0") if isinstance(patching, dict) else None
    if isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0:
        return float(size)
    return None


def _h5_patch_size(f) -> float | None:
    for attrs in ([f["coords"].attrs] if "coords" in f else []) + [f.attrs]:
        if "patch_size_level0" in attrs:
            value = float(np.ravel(attrs["patch_size_level0"])[0])
            return value if value > 0 else None
        if "patch_size" in attrs:
            size = float(np.ravel(attrs["patch_size"])[0])
            level = int(np.ravel(attrs.get("patch_level", [0]))[0])
            if "downsample" in attrs:
                size *= float(np.ravel(attrs["downsample"])[0])
            elif level != 0:
                return None  # a size at another level, without its downsample
            return size if size > 0 else None
    return None


def _legend_patch(face, label):
    from matplotlib.patches import Patch

    return Patch(facecolor=face, edgecolor="#888888", linewidth=0.8, label=label)


def draw_heatmap(
    coords,
    values,
    out_png: str,
    patch_size: float | None = None,
    *,
    title: str | None = None,
    cmap: str = VALUE_CMAP,
    slide=None,
    categories: dict[int, str] | None = None,
    value_label: str | None = None,
) -> str | None:
    """Draw per-patch ``values`` at their slide ``coords`` (top-left corners, level-0 pixels) as a PNG.

    Patches are painted on a grid of ``patch_size`` pixels (default: the smallest spacing between distinct
    coordinates); where patches share a cell the largest value shows.  Very large grids are coarsened to at
    most 4M cells.  The colour map is :data:`~milzoo.report.common.VALUE_CMAP` (viridis); cells without a
    patch are white (not on the map), with a legend entry.

    ``slide``: a slide image path or a :class:`~milzoo_wsi.slide_images.SlideThumbnail`; the values are
    then drawn over its thumbnail (cells without a patch let the slide show through).  ``categories``
    (value -> name) draws a categorical map (e.g. patch labels) with a legend instead of a colour bar.
    Uses matplotlib's Agg canvas (no display, no pyplot state); ``out_png`` may be any fsspec URL.  Returns
    the path of the slide image drawn under the values, or None.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    img, (x0, y0, step) = heatmap_grid(coords, values, patch_size)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    h, w = img.shape
    if categories:
        vmin, vmax = 0.0, float(max(max(categories), 1))
    else:
        finite = v[np.isfinite(v)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmax <= vmin:
            vmax = vmin + 1e-12
    thumb = None
    if slide is not None:
        from milzoo_wsi.slide_images import SlideThumbnail, read_thumbnail

        thumb = slide if isinstance(slide, SlideThumbnail) else read_thumbnail(slide)
    grid_extent = (x0, x0 + w * step, y0 + h * step, y0)
    if thumb is not None:
        sw, sh = thumb.dimensions
        left, top = min(0.0, x0), min(0.0, y0)
        right, bottom = max(float(sw), grid_extent[1]), max(float(sh), grid_extent[2])
    else:
        left, right, bottom, top = grid_extent
    aspect = (bottom - top) / max(right - left, 1e-9)
    width = 8.0
    fig = Figure(figsize=(width, max(2.0, min(12.0, width * aspect)) + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    base = matplotlib.colormaps[cmap]
    norm = Normalize(vmin, vmax)
    if thumb is not None:
        ax.imshow(thumb.image, extent=thumb.extent, interpolation="bilinear")
        ax.imshow(np.ma.masked_invalid(img), cmap=base.with_extremes(bad=(0, 0, 0, 0)), norm=norm,
                  interpolation="nearest", extent=grid_extent, alpha=_OVERLAY_ALPHA)
        no_patch = _legend_patch("none", f"{NO_PATCH_LABEL}: the slide shows through")
    else:
        ax.imshow(np.ma.masked_invalid(img), cmap=base.with_extremes(bad=NO_PATCH_COLOR), norm=norm,
                  interpolation="nearest", extent=grid_extent)
        no_patch = _legend_patch(NO_PATCH_COLOR, NO_PATCH_LABEL)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_edgecolor("#888888")
        sp.set_linewidth(0.8)
    if title:
        import textwrap

        lines = [textwrap.fill(line, 80) if line else line for line in title.split("\n")]
        ax.set_title("\n".join(lines), fontsize=9)
    handles = [no_patch]
    if categories:
        handles = [_legend_patch(base(norm(c)), str(name)) for c, name in sorted(categories.items())] + handles
    else:
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap=base), ax=ax, fraction=0.046, pad=0.02)
        if value_label:
            cb.set_label(value_label + (f" (drawn {_OVERLAY_ALPHA:.0%} opaque over the slide)" if thumb is not None
                                        else ""), fontsize=8)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=min(len(handles), 4),
              fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    _write_bytes(out_png, buf.getvalue())
    return thumb.path if thumb is not None else None


def slide_image_for(slides: str | None, slide_id: str) -> tuple[str | None, str | None]:
    """``(image path, note)`` for drawing ``slide_id`` over its image from the folder ``slides``.

    The path is None, and the note says why, when no reader is installed or the folder holds no image of the
    slide; both are None without ``slides``.
    """
    if not slides:
        return None, None
    from milzoo_wsi.slide_images import INSTALL_HINT, available_reader, find_slide_image

    if available_reader() is None:
        return None, f"the heatmaps are drawn on the patch grid: {INSTALL_HINT}"
    path = find_slide_image(slides, slide_id)
    if path is None:
        return None, f"no image of slide {slide_id!r} in {slides}; its heatmap is drawn on the patch grid"
    return path, None


def _safe_name(slide_id: str) -> str:
    name = re.sub(r"[^0-9A-Za-z_.-]+", "_", slide_id).strip(".")
    return name or "slide"


def _value_column(kind: str, vals: np.ndarray, cls: int, class_names: Sequence[str]) -> str:
    prefix = "attention" if kind == "attention" else "score"
    if vals.ndim == 2:
        return _colnames(prefix, vals.shape[1], class_names)[cls]
    return prefix


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
    slides: str | None = None,
    geojson: bool = True,
    object_type: str = "detection",
) -> list[dict[str, Any]]:
    """Write ``<slide_id>.csv`` (see :func:`localization_table`), ``<slide_id>.png`` (heatmap) and
    ``<slide_id>.geojson`` (QuPath objects) per slide.

    ``heatmap_value``: ``"attention"``, ``"score"`` (instance probability) or
    ``"auto"`` (attention when the model has it, else the score).  The class
    shown (for per-class attention and for scores) is ``heatmap_class``, or the
    slide's predicted class when None.  Slides without coordinates get no PNG and no GeoJSON.
    ``threshold``: the binary decision threshold (default: the model's recorded one,
    ``model.decision_threshold``; see :func:`instance_outputs`; an ensemble's vote needs none).
    ``patch_size``: the patches' side in level-0 pixels (default: what the feature file says,
    ``bag.meta["patching"]`` or its header, else the coordinates' grid step).
    ``slides``: a folder of slide images; with a slide reader installed each heatmap is drawn over its slide's
    thumbnail (:mod:`milzoo_wsi.slide_images`).  ``geojson``/``object_type``: see :mod:`milzoo_wsi.geojson`.
    Returns one dict per slide: ``slide_id, label, pred, probs, decision, prediction, csv, png, geojson,
    slide_image, note`` (``decision``: the :class:`~milzoo.model.decision.Decision`; ``note``: why a slide
    image was not used).

    A model whose task has no classes (regression, survival) draws the attention (``heatmap_value`` ``"auto"``
    or ``"attention"``; ``"score"`` is refused: its instance scores are no class probabilities), and
    ``heatmap_class`` picks the head output of per-output attention (default 0).  Its dicts hold ``label``, the
    label's values in the order of ``task.label_columns()`` (``[time, event]``, ``[target]``), ``label_text``
    (``time 14, event 1``) and ``prediction``, a :class:`~milzoo.model.decision.TaskPrediction` (``.text``:
    ``risk -0.43 (survival, discrete head)``; ``.values`` in the order of ``task.columns``); ``pred``,
    ``probs`` and ``decision`` are None.  For class models ``prediction`` is None.
    """
    if heatmap_value not in ("auto", "attention", "score"):
        raise ValueError("heatmap_value must be auto, attention or score")
    classes = predicts_classes(model)
    if not classes and heatmap_value == "score":
        raise ComponentError(
            f"heatmap_value 'score' draws instance class probabilities, but the {_task_name(model)} task has no "
            f"classes (it predicts {', '.join(prediction_columns(model))}), so its instance scores are no class "
            "probabilities; draw the attention (heatmap_value 'attention' or 'auto'; --heatmap-value attention)."
        )
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    base = out_dir.rstrip("/")
    idx = range(len(dataset)) if indices is None else indices
    summary = []
    used: set[str] = set()
    class_names = list(model.class_names)
    for i in idx:
        bag = dataset[int(i)]
        outs = instance_outputs(model, bag, threshold)
        rows = _rows(bag, outs, class_names)
        sid = rows[0]["slide_id"]
        name = _safe_name(sid)
        while name in used:
            name += "_"
        used.add(name)
        csv_url = f"{base}/{name}.csv"
        _write_bytes(csv_url, rows_to_csv(rows).encode("utf-8"))
        probs = outs["bag_probs"]
        decision: Decision | None = outs["decision"]
        prediction: TaskPrediction | None = outs["prediction"]
        pred = decision.index if decision is not None else None
        said = decision.text if decision is not None else _prediction_words(model, bag, prediction)
        png_url = geo_url = image = note = None
        if bag.coords is not None:
            coords = bag.coords.cpu().numpy()
            size = (patch_size or bag_patch_size(bag) or patch_size_of(dataset, int(i))
                    or _grid_step(np.asarray(coords, np.float64)))
            cls = (pred if classes else 0) if heatmap_class is None else int(heatmap_class)
            kind = heatmap_value
            if kind == "auto":
                kind = "attention" if outs["attention"] is not None else "score"
            vals = outs[{"attention": "attention", "score": "scores"}[kind]]
            if vals is None:
                raise ComponentError(f"the model exports no {kind} values to draw; use heatmap_value='auto'.")
            label = kind
            if vals.ndim == 2 and not 0 <= cls < vals.shape[1]:
                raise ValueError(
                    f"slide {sid!r}: class {cls} is not among the {vals.shape[1]} {kind} columns; pass heatmap_class"
                )
            column = _value_column(kind, vals, cls, class_names)
            if vals.ndim == 2:
                k = vals.shape[1]
                vals = vals[:, cls]
                if classes:
                    cname = class_names[cls] if cls < len(class_names) else str(cls)
                else:  # per-output attention of a task without classes (e.g. one per regression target)
                    cname = class_names[cls] if len(class_names) == k else f"output {cls}"
                label = f"{kind} ({cname})"
            if heatmaps:
                png_url = f"{base}/{name}.png"
                image, note = slide_image_for(slides, sid)
                title = f"{sid}: {label}\n{said}"
                try:
                    image = draw_heatmap(coords, vals, png_url, patch_size=size, title=title, slide=image,
                                         value_label=label)
                except DataError as exc:  # an unreadable slide image: the grid, and say why
                    note = f"{exc}; its heatmap is drawn on the patch grid"
                    image = draw_heatmap(coords, vals, png_url, patch_size=size, title=title, value_label=label)
            if geojson:
                from milzoo_wsi.geojson import dumps, patch_features

                measures = {k: [r[k] for r in rows] for k in rows[0] if k.startswith(("attention", "score_"))}
                fc = patch_features(coords, size, measures, color_by=column, object_type=object_type,
                                    slide_id=sid)
                geo_url = f"{base}/{name}.geojson"
                _write_bytes(geo_url, dumps(fc).encode("utf-8"))
        if classes:
            summary.append({"slide_id": sid, "label": int(bag.y), "pred": pred, "probs": [float(p) for p in probs],
                            "decision": decision, "prediction": None, "csv": csv_url, "png": png_url,
                            "geojson": geo_url, "slide_image": image, "note": note})
        else:
            summary.append({"slide_id": sid, "label": label_values(bag.y), "label_text": label_text(model, bag.y),
                            "pred": None, "probs": None, "decision": None, "prediction": prediction,
                            "csv": csv_url, "png": png_url, "geojson": geo_url, "slide_image": image,
                            "note": note})
    return summary


def _prediction_words(model, bag: Bag, prediction: TaskPrediction | None) -> str:
    """``risk -0.43 (survival, discrete head) · label time 14, event 1``: what a model without classes says of a
    slide."""
    said = prediction.text if prediction is not None else no_classes_text(model)
    return f"{said} · label {label_text(model, bag.y)}"


def decision_rule(model, threshold: float | None = None) -> str:
    """The rule ``write_localization`` decides each slide's class by, in words (a model whose task has no classes:
    ``no classes: the task predicts risk, S_bin0, S_bin1 (survival, discrete head)``)."""
    if not predicts_classes(model):
        return no_classes_text(model)
    thr = valid_threshold(threshold)
    return rule_text(thr if thr is not None and not hasattr(model, "members") else model, list(model.class_names))
