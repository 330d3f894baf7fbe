"""Attention views of one bag.

- image bags (instances ``[C, H, W]``): a grid of the instances, each titled
  with its attention weight and instance prediction (and the true instance
  label when known), framed in a colour that grows with the attention;
- feature bags: a bar chart of attention per instance, coloured by the
  instance prediction;
- slides (bags with ``coords``): the WSI plugin's heatmap
  (``milzoo_wsi.localization.draw_heatmap``) when it is installed, over the
  slide's thumbnail when its image is given and a slide reader is installed,
  else a simple scatter of the patches; plus a GeoJSON of the patches for QuPath.

Numbers come from one eval-mode forward of the bag alone.  The bag's class is
decided by the one rule of :mod:`milzoo.model.decision` (the checkpoint's
validation threshold, else argmax), and the header says which rule gave it.
Per-class attention (``[N, k]``) is shown for the bag's predicted class.  A
pooling without attention is shown through its instance probability of the
predicted class.  Values are drawn in :data:`~milzoo.report.common.VALUE_CMAP`.

A model whose task has no classes (regression, survival) shows the attention
(its instance scores are no class probabilities, so it has no instance
predictions), and the header gives the task's prediction and the label in the
label's units (``risk -0.432 (survival, discrete head)``, ``label time 14,
event 1``) instead of a class.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from milzoo.datasets.batch import Bag, collate_bags
from milzoo.errors import ComponentError, UserError
from milzoo.model.decision import (
    Decision,
    TaskPrediction,
    decide_output,
    label_text,
    model_threshold,
    no_classes_text,
    predicts_classes,
    rule_text,
    task_of,
    task_prediction,
)
from milzoo.report.common import NO_PATCH_COLOR, NO_PATCH_LABEL, VALUE_CMAP, figure_png, new_figure
from milzoo.report.embedding import class_colors

_OK, _WRONG = "#1a7f37", "#c62828"


@dataclass
class BagView:
    bag: Bag
    position: int  # index of the bag in its split
    values: np.ndarray  # [n] attention (or instance score)
    value_name: str  # "attention" or "p(<class>)"
    inst_pred: np.ndarray | None  # [n] argmax of inst_probs
    inst_conf: np.ndarray | None  # [n] probability of that class
    bag_pred: int
    bag_prob: float
    class_names: list[str]
    decision: Decision | None = None  # how bag_pred was chosen (milzoo.model.decision)
    rule: str = "argmax"  # the model's rule in words
    patch_size: float | None = None  # slides: the patches' side in level-0 pixels (None: the grid step)
    slide_image: str | None = None  # slides: the image drawn under the heatmap
    notes: list[str] = field(default_factory=list)  # e.g. why the slide image was not used
    #: a model whose task has no classes: its prediction of the bag (``bag_pred`` is -1, ``decision`` None)
    prediction: TaskPrediction | None = None
    #: such a model: the bag's label in words (``time 14, event 1``)
    label_words: str | None = None

    @property
    def classes(self) -> bool:
        """Whether the model predicts classes (False: regression, survival)."""
        return self.prediction is None and self.label_words is None

    @property
    def label(self) -> str:
        """The bag's label in words: its class name, or ``time 14, event 1`` for a task without classes."""
        return self.name(int(self.bag.y)) if self.classes else str(self.label_words)

    def inst_name(self, c: int) -> str:
        """The name of instance label ``c``: its class, or ``label c`` for a task without classes."""
        return self.name(c) if self.classes else f"label {c}"

    @property
    def inst_true(self) -> np.ndarray | None:
        if self.bag.inst_y is None:
            return None
        t = self.bag.inst_y.long().numpy()
        return t if (t >= 0).any() else None

    def name(self, c: int) -> str:
        return self.class_names[c] if 0 <= c < len(self.class_names) else str(c)


def choose_bag(ds, bag_id: str | None = None, index: int | None = None, task=None) -> int:
    """Position of the bag to show: by id, by position, or the first bag not of class 0 (else the first).

    For a ``task`` without classes the default is the first bag whose event was observed (a label column
    ``event`` equal to 1, as survival labels have), else the first bag.
    """
    if bag_id is not None and index is not None:
        raise UserError("give either --bag or --index, not both.")
    if bag_id is not None:
        ids = list(ds.bag_ids)
        if str(bag_id) in ids:
            return ids.index(str(bag_id))
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        raise UserError(
            f"no bag {bag_id!r} in this split ({len(ids)} bags: {shown}); use --index I or another --split."
        )
    if index is not None:
        if not -len(ds) <= index < len(ds):
            raise UserError(f"--index {index} is out of range; the split has {len(ds)} bags (0..{len(ds) - 1}).")
        return index % len(ds)
    labels = np.asarray(ds.labels)
    if task is not None and not getattr(task, "classes", True):
        cols = list(task.label_columns())
        if "event" in cols and labels.ndim == 2 and labels.shape[1] == len(cols):
            observed = np.flatnonzero(labels[:, cols.index("event")] == 1)
            return int(observed[0]) if len(observed) else 0
        return 0
    if labels.ndim != 1:
        return 0
    nonzero = np.flatnonzero(labels != 0)
    return int(nonzero[0]) if len(nonzero) else 0


@torch.no_grad()
def bag_view(model, ds, position: int) -> BagView:
    bag = ds[position]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch = collate_bags([bag]).to(device)
    out = model.predict(batch)
    n = len(bag)
    names = list(getattr(ds, "class_names", None) or model.class_names)
    if not predicts_classes(model):
        return _task_view(model, out, batch, bag, position, names)
    decision = decide_output(out, 0, model_threshold(model), names, getattr(model, "thresholds", None))
    pred = decision.index
    ip = out.inst_probs
    inst_pred = inst_conf = None
    if ip is not None:
        p = ip[0, :n].float().cpu().numpy()
        inst_pred = p.argmax(1)
        inst_conf = p[np.arange(n), inst_pred]
    att = out.attention
    if att is not None:
        a = att[0, :n].float().cpu().numpy()
        if a.ndim == 2:
            a = a[:, pred] if a.shape[1] > pred else a[:, -1]
        values, name = a, "attention"
    elif ip is not None:
        values, name = ip[0, :n, pred].float().cpu().numpy(), f"p({model.class_names[pred]})"
    else:
        raise ComponentError(
            f"pooling {getattr(model.pooling, 'name', '?')!r} exports neither attention nor instance scores, so "
            "there is nothing to show per instance; use a pooling that fills MILOutput.attention or inst_logits."
        )
    return BagView(bag=bag, position=position, values=values, value_name=name, inst_pred=inst_pred,
                   inst_conf=inst_conf, bag_pred=pred, bag_prob=decision.prob, class_names=names,
                   decision=decision, rule=rule_text(model, names))


def _task_view(model, out, batch, bag: Bag, position: int, names: list[str]) -> BagView:
    """The view of a bag by a model whose task has no classes: the attention and the task's prediction."""
    n = len(bag)
    att = out.attention
    if att is None:
        raise ComponentError(
            f"pooling {getattr(getattr(model, 'pooling', None), 'name', '?')!r} exports no attention, and the "
            f"{getattr(task_of(model), 'name', '?')} task has no classes, so its instance scores are no class "
            "probabilities: there is nothing to show per instance. Use a pooling with attention (abmil, transmil)."
        )
    a = att[0, :n].float().cpu().numpy()
    name = "attention"
    if a.ndim == 2:  # attention per head output: the first output's
        a = a[:, 0]
        name = "attention (output 0)"
    prediction = task_prediction(model, out, 0, batch)
    return BagView(bag=bag, position=position, values=a, value_name=name, inst_pred=None, inst_conf=None,
                   bag_pred=-1, bag_prob=math.nan, class_names=names, decision=None, rule=no_classes_text(model),
                   prediction=prediction, label_words=label_text(model, bag.y))


def prediction_text(v: BagView) -> str:
    """``predicted tumor (p(tumor)=0.432 >= threshold 0.310 chosen on validation)``: the class and its rule; for a
    task without classes its prediction, ``risk -0.432 (survival, discrete head)``."""
    if not v.classes:
        return v.prediction.text if v.prediction is not None else v.rule
    if v.decision is not None:
        return v.decision.text
    return f"predicted {v.name(v.bag_pred)} (p={v.bag_prob:.3f}, argmax)"


def _mark(v: BagView) -> str:
    """`` ✓`` / `` ✗``: whether the predicted class is the label (nothing for a task without classes)."""
    if not v.classes:
        return ""
    return " ✓" if v.bag_pred == int(v.bag.y) else " ✗"


def _header(v: BagView) -> str:
    return (f"bag {v.bag.bag_id or v.position!s} · label {v.label} · {prediction_text(v)}{_mark(v)} · "
            f"{len(v.bag)} instances")


def _image(x: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """``[C, H, W]`` -> something imshow draws (values brought to [0, 1])."""
    a = x.float().cpu().numpy()
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-3 or hi > 1 + 1e-3:  # not in [0, 1] pixel space: stretch per image
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    a = np.clip(a, 0, 1)
    if a.shape[0] == 3:
        return a.transpose(1, 2, 0), None
    return a[0], "gray"


def plot_image_grid(v: BagView, max_show: int = 64, order: str = "attention", title: str = ""):
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n = len(v.bag)
    idx = np.argsort(-v.values, kind="stable") if order == "attention" else np.arange(n)
    shown = idx[:max_show]
    m = len(shown)
    ncols = min(8, m) if m > 4 else m
    nrows = math.ceil(m / ncols)
    cell_w, cell_h = 1.4, 1.85
    fig = new_figure(cell_w * ncols + 1.0, cell_h * nrows + 0.9)
    vmax = float(v.values.max()) if n else 1.0
    cmap = matplotlib.colormaps[VALUE_CMAP]
    norm = Normalize(0.0, vmax if vmax > 0 else 1.0)
    true = v.inst_true
    grid = fig.add_gridspec(nrows, ncols + 1, width_ratios=[1] * ncols + [0.12], hspace=0.55, wspace=0.15)
    for k, i in enumerate(shown.tolist()):
        ax = fig.add_subplot(grid[k // ncols, k % ncols])
        img, cm = _image(v.bag.x[i])
        ax.imshow(img, cmap=cm, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        edge = cmap(norm(float(v.values[i])))
        for s in ax.spines.values():
            s.set_edgecolor(edge)
            s.set_linewidth(3.5)
        lines = [f"#{i}  {'a' if v.value_name == 'attention' else 's'} = {v.values[i]:.3f}"]
        color = "black"
        known = true is not None and true[i] >= 0
        if v.inst_pred is not None:
            p = int(v.inst_pred[i])
            mark = ""
            if known:
                ok = p == int(true[i])
                color, mark = (_OK, " ✓") if ok else (_WRONG, " ✗")
            lines.append(f"pred {_short(v.name(p))}{mark}")
        if known:
            lines.append(f"true {_short(v.inst_name(int(true[i])))}")
        ax.set_title("\n".join(lines), fontsize=6.5, color=color, pad=2, linespacing=1.15)
    cax = fig.add_subplot(grid[:, ncols])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax).set_label(v.value_name, fontsize=8)
    cax.tick_params(labelsize=7)
    sub = ("sorted by " + v.value_name if order == "attention" else "in bag order")
    if m < n:
        sub += f"; the top {m} of {n} shown"
    if v.inst_pred is not None:
        legend = "frame colour: attention · pred: instance prediction (✓ right, ✗ wrong)"
    else:
        legend = ("frame colour: attention · no instance predictions from this pooling" if v.classes
                  else "frame colour: attention · no instance classes (the task has none)")
    fig.suptitle(f"{title + ' · ' if title else ''}{_header(v)}\n{sub} · {legend}", fontsize=9)
    return fig


def _short(s: str, n: int = 14) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def plot_bars(v: BagView, max_show: int = 300, order: str = "bag", title: str = ""):
    from matplotlib.patches import Patch

    n = len(v.bag)
    if n > max_show or order == "attention":
        idx = np.argsort(-v.values, kind="stable")[:max_show]
        sub = (f"the {max_show} highest of {n} instances" if n > max_show else "instances") + \
            f", sorted by {v.value_name}"
    else:
        idx = np.arange(n)
        sub = "instances in bag order"
    m = len(idx)
    fig = new_figure(float(np.clip(0.22 * m + 2.5, 6.5, 16.0)), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(m)
    k = len(v.class_names)
    colors = class_colors(max(k, 1))
    true = v.inst_true
    if v.inst_pred is not None:
        bar_colors = [colors[int(v.inst_pred[i]) % len(colors)] for i in idx]
    else:
        bar_colors = ["#4c72b0"] * m
    edge = ["none"] * m
    if true is not None and v.inst_pred is not None:
        edge = ["black" if true[i] >= 0 and int(v.inst_pred[i]) != int(true[i]) else "none" for i in idx]
    ax.bar(xs, v.values[idx], color=bar_colors, edgecolor=edge, linewidth=1.2, width=0.8)
    if v.value_name == "attention" and n > 0:
        ax.axhline(1.0 / n, color="#555555", ls="--", lw=1)
    top = float(v.values[idx].max()) if m else 1.0
    handles = []
    if true is not None:
        ys = np.full(m, -0.06 * top)
        tc = [colors[int(true[i]) % len(colors)] if true[i] >= 0 else "#b0b0b0" for i in idx]
        ax.scatter(xs, ys, marker="s", s=max(6, min(40, 2000 / max(m, 1))), c=tc, clip_on=False)
        ax.set_ylim(-0.1 * top, top * 1.12)
        ax.axhline(0, color="black", lw=0.6)
    present = sorted(set(int(c) for c in v.inst_pred[idx])) if v.inst_pred is not None else []
    if true is not None:
        present = sorted(set(present) | {int(t) for t in true[idx] if t >= 0})
    for c in present:
        handles.append(Patch(color=colors[c % len(colors)], label=v.inst_name(c)))
    from matplotlib.lines import Line2D

    if v.value_name == "attention" and n > 0:
        handles.append(Line2D([], [], color="#555555", ls="--", label="uniform 1/n"))
    if true is not None and v.inst_pred is not None:
        handles.append(Patch(facecolor="white", edgecolor="black", label="prediction wrong"))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  title="instance class" if v.inst_pred is not None else
                  ("instance label" if not v.classes and true is not None else None), title_fontsize=8)
    ax.set_ylabel(v.value_name, fontsize=9)
    if m <= 60:
        ax.set_xticks(xs)
        ax.set_xticklabels([str(i) for i in idx], fontsize=7, rotation=90 if m > 30 else 0)
    ax.set_xlabel("instance" + (" (squares below the axis: true instance label)" if true is not None else ""),
                  fontsize=9)
    ax.set_xlim(-0.7, m - 0.3)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    colour_note = "bar colour: instance prediction" if v.inst_pred is not None else "no instance predictions"
    ax.set_title(f"{title + ' · ' if title else ''}{_header(v)}\n{sub} · {colour_note}", fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def _side_by_side(pngs: list[bytes]) -> bytes:
    """PNG images next to each other on white (top-aligned)."""
    import io

    from PIL import Image

    imgs = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    out = Image.new("RGB", (sum(i.width for i in imgs), max(i.height for i in imgs)), "white")
    x = 0
    for i in imgs:
        out.paste(i, (x, 0))
        x += i.width
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def heatmap_png(v: BagView, title: str = "", slides: str | None = None) -> bytes:
    """The slide heatmap: the WSI plugin's ``draw_heatmap`` when installed (over the slide's thumbnail when
    ``slides`` holds its image and a slide reader is installed), else a patch scatter.

    With known patch labels, a second map of the true labels is drawn beside it.  Notes (why the slide image
    was not used) go to ``v.notes``; the image drawn under the values to ``v.slide_image``.
    """
    coords = v.bag.coords.float().cpu().numpy()
    lines = [title] if title else []
    lines += [f"bag {v.bag.bag_id or v.position!s} · label {v.label} · {len(v.bag)} instances",
              f"{prediction_text(v)}{_mark(v)}", f"colour: {v.value_name}"]
    head = "\n".join(lines)
    true = v.inst_true
    panels = [(v.values, head, None)]
    if true is not None:
        labels = np.where(true >= 0, true, np.nan).astype(np.float64)
        present = sorted({int(t) for t in true if t >= 0})
        cats = {c: v.inst_name(c) for c in range(max(max(present), 1) + 1)} if present else {0: v.inst_name(0)}
        panels.append((labels, "true patch labels\n(white: no patch, or label unknown)\n", cats))
    try:
        from milzoo_wsi.localization import draw_heatmap, slide_image_for
    except ImportError:
        draw_heatmap = slide_image_for = None
    image = None
    if draw_heatmap is not None and slides:
        sid = str((v.bag.meta or {}).get("slide_id", v.bag.bag_id))
        image, note = slide_image_for(slides, sid)
        if note:
            v.notes.append(note)
    elif slides:
        v.notes.append("the slide image needs the milzoo-wsi plugin (pip install \"milzoo-wsi[slides]\"); the "
                       "heatmap is a scatter of the patches")
    pngs = []
    for values, text, cats in panels:
        if draw_heatmap is not None:
            fd, tmp = tempfile.mkstemp(suffix=".png")
            os.close(fd)
            try:
                kw = dict(title=text, patch_size=v.patch_size, categories=cats,
                          value_label=None if cats else v.value_name)
                try:
                    drawn = draw_heatmap(coords, values, tmp, slide=image, **kw)
                except UserError as exc:  # an unreadable slide image: the grid, and say why
                    v.notes.append(f"{exc}; the heatmap is drawn on the patch grid")
                    image = None
                    drawn = draw_heatmap(coords, values, tmp, **kw)
                v.slide_image = v.slide_image or drawn
                with open(tmp, "rb") as fh:
                    pngs.append(fh.read())
            finally:
                os.unlink(tmp)
            continue
        fig = new_figure(8.0, 6.5)
        ax = fig.add_subplot(1, 1, 1)
        ax.set_facecolor(NO_PATCH_COLOR)
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=values, cmap=VALUE_CMAP, marker="s", s=8, linewidths=0)
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(text + f"\n(white: {NO_PATCH_LABEL}; install milzoo-wsi for the slide heatmap)", fontsize=9)
        pngs.append(figure_png(fig))
    return pngs[0] if len(pngs) == 1 else _side_by_side(pngs)


def attention_geojson(v: BagView, object_type: str = "detection") -> str | None:
    """The GeoJSON text of a slide bag's patches with their values (QuPath objects), or None when the bag has
    no coordinates or the WSI plugin is not installed."""
    if v.bag.coords is None:
        return None
    try:
        from milzoo_wsi.geojson import dumps, patch_features
        from milzoo_wsi.localization import _grid_step
    except ImportError:
        return None
    coords = v.bag.coords.float().cpu().numpy().astype(np.float64)
    measures = {v.value_name: v.values}
    if v.inst_pred is not None:
        measures["instance class"] = v.inst_pred.astype(np.float64)
        measures["instance p"] = v.inst_conf
    if v.inst_true is not None:
        measures["true label"] = np.where(v.inst_true >= 0, v.inst_true, np.nan).astype(np.float64)
    size = v.patch_size or _grid_step(coords)
    fc = patch_features(coords, size, measures, color_by=v.value_name, object_type=object_type,
                        slide_id=str((v.bag.meta or {}).get("slide_id", v.bag.bag_id)))
    return dumps(fc)


def attention_png(v: BagView, title: str = "", max_show: int | None = None,
                  order: str | None = None, slides: str | None = None) -> tuple[bytes, str]:
    """``(PNG bytes, kind)`` with kind ``images``, ``bars`` or ``heatmap``.

    ``order``: ``attention`` (highest first) or ``bag``; by default images are
    sorted by attention and bars keep the bag order.  ``slides``: a folder of
    slide images (heatmaps over the slide; see :func:`heatmap_png`).
    """
    if order not in (None, "attention", "bag"):
        raise UserError(f"order {order!r} is not known; use attention or bag.")
    if v.bag.coords is not None:
        return heatmap_png(v, title, slides), "heatmap"
    if v.bag.x.dim() == 4:
        return figure_png(plot_image_grid(v, max_show or 64, order or "attention", title)), "images"
    return figure_png(plot_bars(v, max_show or 300, order or "bag", title)), "bars"


def run_attention(ctx, fold: int = 0, split: str = "test", bag_id: str | None = None, index: int | None = None,
                  max_show: int | None = None, order: str | None = None, label: str | None = None,
                  slides: str | None = None):
    """``(PNG bytes, kind, BagView)`` for one bag of one fold of a run (a :class:`RunContext`).

    ``slides``: a folder of slide images; a slide bag's heatmap is drawn over its thumbnail when a slide
    reader is installed (``milzoo-wsi[slides]``), else on the patch grid with a note in ``BagView.notes``.
    """
    model, which = ctx.model(fold)
    ds = ctx.dataset(fold, split)
    pos = choose_bag(ds, bag_id, index, task_of(model))
    v = bag_view(model, ds, pos)
    if v.bag.coords is not None:
        try:
            from milzoo_wsi.localization import bag_patch_size, patch_size_of
        except ImportError:
            pass
        else:
            v.patch_size = bag_patch_size(v.bag) or patch_size_of(ds, pos)
    title = f"{label or ctx.display_name} · fold {fold} ({which}) · '{split}'"
    png, kind = attention_png(v, title, max_show, order, slides)
    return png, kind, v
