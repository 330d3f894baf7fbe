"""Reading run directories and drawing figures without a display.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, so
nothing here touches pyplot's global state or needs a display or a network.
"""

from __future__ import annotations

import io
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milzoo.errors import RunDirError

#: keys of metrics.jsonl records that are not curves
NOT_CURVES = {"fold", "epoch", "split", "time_s", "threshold"}
#: preferred order of metrics in curves and tables; others follow alphabetically
METRIC_ORDER = ["loss", "acc", "auc", "f1", "inst_acc"]
#: the one colour map of per-instance values (attention, instance scores) in every picture: slide heatmaps
#: (``milzoo localize``, ``milzoo attention``), the frames of image grids, GeoJSON patch colours.  Sequential
#: and perceptually uniform, readable in greyscale and by colour-blind readers (docs/report.md)
VALUE_CMAP = "viridis"
#: where a slide has no patch: white, a colour that is not on ``VALUE_CMAP`` (so no value looks like background);
#: over a slide image, cells without a patch are transparent instead
NO_PATCH_COLOR = "#ffffff"
#: the legend entry of those cells
NO_PATCH_LABEL = "no patch"
#: run colours (matplotlib's tab10 without the grey)
RUN_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def new_figure(width: float, height: float, dpi: int = 100):
    """A figure drawn by the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig, dpi: int | None = None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def figure_svg(fig) -> str:
    """The figure as one ``<svg>`` element to put inline in an HTML page: text stays text (small, searchable),
    and matplotlib escapes it (``<`` and ``&`` of a run's name cannot open a tag).  The ids inside are salted
    at random by matplotlib, so several figures can share a page."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": None}):
        fig.savefig(buf, format="svg", bbox_inches="tight", facecolor="white", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):].strip()


def plain_text(text: object) -> str:
    """``text`` for a matplotlib label, drawn as written: a ``$`` would start mathtext (and a stray ``$\\frac``
    in a run's name would stop the figure)."""
    return str(text).replace("$", r"\$")


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_sort_key(name: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(name) if name in METRIC_ORDER else len(METRIC_ORDER), name)


@dataclass
class RunData:
    """Everything of a run directory that the report shows (no model, no data)."""

    path: Path
    recipe: dict[str, Any]
    recipe_text: str
    info: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    label: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.path.name)

    @property
    def folds(self) -> list[int]:
        return sorted({int(r.get("fold", 0)) for r in self.records})

    @property
    def splits(self) -> list[str]:
        """Splits with records, ``train`` first, then in order of first appearance."""
        seen: list[str] = []
        for r in self.records:
            s = str(r.get("split", ""))
            if s and s not in seen:
                seen.append(s)
        return sorted(seen, key=lambda s: (s != "train", seen.index(s)))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a half-written last line (killed run) is skipped."""
    records = []
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def load_run(path: str | Path) -> RunData:
    """Read a run directory written by ``milzoo run``.

    A run without ``summary.json`` (still running, or some folds missing) is
    still readable: the report then shows its curves and notes the gap.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path} does not exist or is not a directory; pass a run directory written by `milzoo run`.")
    recipe_path = path / "recipe.toml"
    if not recipe_path.exists():
        raise RunDirError(
            f"{path} is not a milzoo run directory (no recipe.toml); pass the --out folder of a `milzoo run`."
        )
    text = recipe_path.read_text(encoding="utf-8")
    try:
        recipe = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, a 5000-digit integer, nesting too deep
        raise RunDirError(f"{recipe_path} is not a readable recipe ({str(exc).split(';')[0] or 'nested too deeply'}); "
                          "the run directory is damaged.") from None
    info: dict[str, Any] = {}
    if (path / "run.json").exists():
        try:
            info = json.loads((path / "run.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            info = {}
    records = read_metrics(path / "metrics.jsonl")
    summary = None
    notes = []
    if (path / "summary.json").exists():
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            notes.append("summary.json is unreadable; the final table is computed from metrics.jsonl.")
    else:
        notes.append("no summary.json (the run is incomplete or still running); the final table shows each "
                     "fold's latest epoch from metrics.jsonl.")
    if not records:
        notes.append("metrics.jsonl is empty or missing: no epoch has finished yet.")
    return RunData(path=path, recipe=recipe, recipe_text=text, info=info, records=records, summary=summary,
                   notes=notes)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists of tables get ``[i]``."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = d
    return out


def recipe_differences(runs: list[RunData]) -> dict[str, list[Any]]:
    """Recipe keys whose values differ between runs (``name``/``description`` left out)."""
    flats = [flatten(r.recipe) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    diff = {}
    for k in keys:
        if k in ("name", "description"):
            continue
        vals = [f.get(k, "—") for f in flats]
        if any(v != vals[0] for v in vals[1:]):
            diff[k] = vals
    return diff


def assign_labels(runs: list[RunData], labels: list[str] | None = None) -> None:
    """Legend names: given labels, else recipe names, else directory names, else paths (whichever is unique)."""
    if labels:
        if len(labels) != len(runs):
            raise RunDirError(f"{len(labels)} --label values for {len(runs)} run directories; give one per run.")
        for r, lab in zip(runs, labels):
            r.label = lab
        return
    for candidates in ([r.name for r in runs], [r.path.name for r in runs],
                       [str(r.path) for r in runs]):
        if len(set(candidates)) == len(candidates):
            for r, lab in zip(runs, candidates):
                r.label = lab
            return
    for i, r in enumerate(runs):
        r.label = f"{r.path.name} ({i + 1})"
