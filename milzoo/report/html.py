"""The static HTML report: one self-contained page, rendered from Jinja2 templates with autoescape on.

The page is ``templates/report.html.j2``, its pieces the macros of ``templates/parts.html.j2`` and its style
``templates/report.css`` (package data).  This module only gathers the numbers, texts and pictures into plain
dicts; every string reaches the page through the templates, escaped.  The pictures are PNGs embedded as base64,
and the ROC curves inline SVG (:mod:`milzoo.report.roc`).

Every number of the final-metrics tables is also written, unrounded, in the cell's ``data-*`` attributes
(``data-run``, ``data-section``, ``data-split``, ``data-metric``, ``data-mean``, ``data-std``, ``data-n``), and
every count of a confusion matrix in ``data-run``, ``data-model``, ``data-split``, ``data-true``, ``data-pred``
and ``data-count``, so a script can read the tables back.

One standard deviation: the sample one over the folds (``n - 1``, :func:`milzoo.metrics.mean_std`), recomputed
from the folds' values so that a ``summary.json`` written before milzoo recorded ``std_ddof`` (the population
one) is shown the same way.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import logging
import time
import traceback
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from milzoo.errors import MilzooError
from milzoo.metrics import mean_std, std_words
from milzoo.report.common import (
    RUN_COLORS,
    RunData,
    assign_labels,
    figure_png,
    figure_svg,
    is_number,
    load_run,
    metric_sort_key,
    recipe_differences,
)

log = logging.getLogger(__name__)

SECTIONS = [
    ("last", "last epoch", ""),
    ("selected", "validation-selected", "the epoch with the best validation score, chosen without the test set"),
    ("best_epoch_on_test", "best epoch on test — OPTIMISTIC",
     "each fold's epoch chosen on its own test split, as some papers report; not a fair estimate"),
    ("ensemble", "ensemble of the fold models (vote)", "the fold models' majority vote on the shared test split"),
]
_HIDDEN_METRICS = {"epoch", "threshold"}
_TEMPLATES = "templates"
#: the page's style sheet (``templates/report.css``)
CSS = resources.files("milzoo.report").joinpath(_TEMPLATES, "report.css").read_text(encoding="utf-8")


@functools.cache
def _env():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(loader=PackageLoader("milzoo.report", _TEMPLATES), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _parts():
    """The macros of ``parts.html.j2``, callable from Python."""
    return _env().get_template("parts.html.j2").module


def esc(s: Any) -> str:
    """``s`` escaped for HTML text and attributes (what the templates' autoescape does)."""
    return html.escape(str(s), quote=True)


def png_src(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_tag(png: bytes, alt: str) -> str:
    return str(_parts().img(png_src(png), alt))


def fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if is_number(v) else "–"


# --------------------------------------------------------------------------- final metrics


def _stat(v: Any) -> dict[str, Any] | None:
    """``{"mean", "std", "n"}`` from a summary entry (``{"mean", "std", "values"}``) or a plain number; the
    standard deviation is the sample one of the entry's values (:func:`milzoo.metrics.mean_std`)."""
    if isinstance(v, dict) and "mean" in v:
        vals = [float(x) for x in v.get("values", []) if is_number(x)]
        std = mean_std(vals)[1] if vals else v.get("std")
        return {"mean": v.get("mean"), "std": std, "n": len(vals) if vals else None}
    if is_number(v):
        return {"mean": float(v), "std": None, "n": 1}
    return None


def _latest(run: RunData) -> dict[tuple[int, str], dict]:
    """Each fold's latest evaluation record per split (not train), from metrics.jsonl."""
    latest: dict[tuple[int, str], dict] = {}
    for r in run.records:
        if r.get("split") in (None, "train"):
            continue
        key = (int(r.get("fold", 0)), str(r["split"]))
        if key not in latest or int(r.get("epoch", -1)) >= int(latest[key].get("epoch", -1)):
            latest[key] = r
    return latest


def _from_records(run: RunData) -> dict[str, Any]:
    """A summary-like ``{"last": {split: {metric: stat}}}`` from each fold's latest epoch (incomplete runs)."""
    per: dict[str, dict[str, list]] = {}
    for (_, split), r in sorted(_latest(run).items()):
        for k, v in r.items():
            if k in ("fold", "epoch", "split", "threshold") or not is_number(v):
                continue
            per.setdefault(split, {}).setdefault(k, []).append(float(v))
    last = {}
    for split, metrics in per.items():
        last[split] = {}
        for k, vals in metrics.items():
            m, s = mean_std(vals)
            last[split][k] = {"mean": m, "std": s, "values": vals}
    return {"last": last}


def final_rows(run: RunData) -> list[dict[str, Any]]:
    """Rows ``{section, label, note, split, metrics: {name: stat}, epoch}`` of a run's final table."""
    summary = run.summary if run.summary is not None else _from_records(run)
    rows = []
    for key, label, note in SECTIONS:
        block = summary.get(key)
        if not isinstance(block, dict):
            continue
        if key == "best_epoch_on_test":  # one split, the metrics sit at the top level
            splits = {str(block.get("split", "test")): {k: v for k, v in block.items() if k not in ("note", "split")}}
        else:
            splits = {k: v for k, v in block.items() if isinstance(v, dict)}
        for split, metrics in splits.items():
            stats = {k: _stat(v) for k, v in metrics.items() if k not in _HIDDEN_METRICS}
            stats = {k: s for k, s in stats.items() if s is not None}
            if not stats:
                continue
            ns = {st["n"] for st in stats.values() if st.get("n")}
            folds = summary.get("num_folds") if key == "ensemble" else (max(ns) if ns else None)
            rows.append({"section": key, "label": label, "note": note, "split": split, "metrics": stats,
                         "epoch": _stat(metrics.get("epoch")), "folds": folds})
    monitors = {str((f.get("selected") or {}).get("monitor"))
                for f in (run.summary or {}).get("folds") or [] if f.get("selected")}
    if len(monitors) == 1:
        for r in rows:
            if r["section"] == "selected":
                r["label"] = f"validation-selected ({next(iter(monitors))})"
    return rows


def _cell(stat: dict[str, Any] | None, attrs: dict[str, Any]) -> dict[str, Any] | None:
    if stat is None:
        return None
    mean, std, n = stat.get("mean"), stat.get("std"), stat.get("n")
    text = fmt(mean)
    if is_number(std) and (n or 0) > 1:
        text += f" ± {fmt(std)}"
    data = {**attrs, "mean": repr(float(mean)) if is_number(mean) else "nan",
            "std": repr(float(std)) if is_number(std) else "", "n": n if n is not None else ""}
    return {"text": text, "data": data}


def final_table_data(runs: list[RunData]) -> dict[str, Any]:
    """The final-metrics table: header, rows of cells, and which standard deviation it shows."""
    several = len(runs) > 1
    all_rows = [(run, r) for run in runs for r in final_rows(run)]
    metrics = sorted({m for _, r in all_rows for m in r["metrics"]}, key=lambda m: (m == "loss", metric_sort_key(m)))
    order = {k: i for i, (k, _, _) in enumerate(SECTIONS)}
    all_rows.sort(key=lambda t: (order[t[1]["section"]], t[1]["split"] != "test", t[1]["split"], runs.index(t[0])))
    rows = []
    for run, r in all_rows:
        ep = r["epoch"]
        rows.append({
            "optimistic": r["section"] == "best_epoch_on_test", "run": run.label,
            "color": RUN_COLORS[runs.index(run) % len(RUN_COLORS)], "note": r["note"], "label": r["label"],
            "split": r["split"], "folds": r["folds"],
            "cells": [_cell(r["metrics"].get(m), {"run": run.label, "section": r["section"], "split": r["split"],
                                                  "metric": m}) for m in metrics],
            "epoch": fmt(ep["mean"] + 1, 1) if ep and is_number(ep["mean"]) else ""})
    head = (["run"] if several else []) + ["selection", "split", "folds"] + metrics + ["epoch"]
    return {"several": several, "head": head, "rows": rows, "std_words": std_words()}


def final_table(runs: list[RunData]) -> str:
    return str(_parts().final_table(final_table_data(runs)))


def run_decision_rule(run: RunData) -> str:
    """How the classes behind a run's accuracy and F1 were chosen (milzoo.model.decision)."""
    from milzoo.model.decision import summary_rule_text

    if run.summary is not None:
        return summary_rule_text(run.summary)
    folds = {}
    for r in run.records:
        if r.get("split") not in (None, "train"):
            folds.setdefault(int(r.get("fold", 0)), is_number(r.get("threshold")))
    if folds and all(folds.values()):
        return "p(class 1) >= each fold's threshold chosen on validation"
    if any(folds.values()):
        return "p(class 1) >= the fold's threshold chosen on validation where one was, else argmax"
    return "argmax"


def _rules(runs: list[RunData]) -> list[dict[str, str]]:
    """Each run's decision rule (runs whose table has accuracy or F1)."""
    runs = [r for r in runs if any({"acc", "f1"} & set(row["metrics"]) for row in final_rows(r))]
    return [{"run": r.label, "rule": run_decision_rule(r)} for r in runs]


def decision_rules(runs: list[RunData]) -> str:
    """The note under the final table: each run's decision rule (runs whose table has accuracy or F1)."""
    return str(_parts().decision_rules(_rules(runs))).strip()


def _fold_table_data(run: RunData) -> dict[str, Any] | None:
    latest = _latest(run)
    if not latest:
        return None
    metrics = sorted({k for r in latest.values() for k, v in r.items()
                      if k not in ("fold", "epoch", "split", "threshold") and is_number(v)}, key=metric_sort_key)
    rows = []
    for (fold, split), r in sorted(latest.items()):
        cells = []
        for m in metrics:
            v = r.get(m)
            data = ({"run": run.label, "fold": fold, "split": split, "metric": m, "value": repr(float(v))}
                    if is_number(v) else {})
            cells.append({"text": fmt(v), "data": data})
        rows.append({"fold": fold, "split": split, "epoch": int(r.get("epoch", -1)) + 1, "cells": cells})
    return {"head": ["fold", "split", "epoch"] + metrics, "rows": rows}


def fold_table(run: RunData) -> str:
    """Each fold's last-epoch metrics per split, straight from metrics.jsonl."""
    data = _fold_table_data(run)
    return str(_parts().fold_table(data)) if data else ""


# --------------------------------------------------------------------------- run details


def _overview_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    rows = []
    for i, run in enumerate(runs):
        rc = run.recipe
        proto = rc.get("protocol", {})
        kind = proto.get("kind", "holdout")
        ptxt = kind + (f", {proto.get('folds')} folds" if kind != "holdout" else "")
        if kind == "cv" and int(proto.get("repeats", 1) or 1) > 1:
            ptxt += f" × {proto['repeats']}"
        data = rc.get("data", {})
        dname = data.get("name", "?") + (f" ({data['dataset']})" if data.get("dataset") else "")
        losses = ", ".join(l.get("name", "?") for l in rc.get("loss", [])) or "(pooling default)"
        rows.append({"color": RUN_COLORS[i % len(RUN_COLORS)], "cells": [
            run.label, str(run.path), run.name, dname, rc.get("encoder", {}).get("name", "identity"),
            rc.get("pooling", {}).get("name", "?"), losses, ptxt, rc.get("train", {}).get("epochs", "?"),
            run.info.get("started", "?")]})
    return rows


def overview_table(runs: list[RunData]) -> str:
    return str(_parts().overview_table(_overview_rows(runs)))


def _differences(runs: list[RunData]) -> dict[str, Any]:
    rows = [(k, [v if isinstance(v, str) else json.dumps(v) for v in vals])
            for k, vals in recipe_differences(runs).items()]
    return {"labels": [r.label for r in runs], "rows": rows}


def differences_table(runs: list[RunData]) -> str:
    return str(_parts().differences_table(_differences(runs)))


def _versions(run: RunData) -> dict[str, Any] | None:
    info = run.info
    if not info:
        return None
    rows = [("milzoo", info.get("milzoo")), ("python", info.get("python")), ("platform", info.get("platform")),
            ("git commit", info.get("git_sha")), ("started", info.get("started")),
            ("command", " ".join(map(str, info.get("command") or [])))]
    if info.get("outcome"):  # how the latest start ended (run.json of runs before this field have none)
        rows.append(("ended", f"{info.get('ended', '')}: {info['outcome']}"
                              f"{' - ' + str(info['error']) if info.get('error') else ''}"))
    rows += [(k, v) for k, v in (info.get("libraries") or {}).items()]
    rows = [(k, v if v is not None else "–") for k, v in rows]
    plugins = [{"name": p.get("name"), "distribution": p.get("distribution"), "version": p.get("version"),
                "status": p.get("status", "") + (f": {p['error']}" if p.get("error") else "")}
               for p in info.get("plugins") or []]
    hist = info.get("history") or []
    sessions = [f"{h.get('started')}{' (resume)' if h.get('resume') else ''}"
                f"{' fold ' + str(h['fold']) if h.get('fold') is not None else ''}"
                f"{' → ' + str(h['outcome']) if h.get('outcome') else ''}" for h in hist] if len(hist) > 1 else []
    return {"rows": rows, "plugins": plugins, "sessions": sessions}


def versions_table(run: RunData) -> str:
    return str(_parts().versions_table(_versions(run)))


# --------------------------------------------------------------------------- the page


def _try(what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one optional part of the report: its dict, or ``{"what", "error"}`` (a note, never a broken report)."""
    try:
        return {"error": None, **fn()}
    except MilzooError as exc:
        return {"what": what, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a report must survive whatever one part hits
        log.debug("report: %s failed\n%s", what, traceback.format_exc())
        return {"what": what, "error": f"{type(exc).__name__}: {exc}"}


def task_figures(runs: list[RunData], fold: int) -> list[dict[str, Any]]:
    """The figures each run's task draws (``Task.report_figures``: survival's Kaplan-Meier curves)."""
    out: list[dict[str, Any]] = []
    for run in runs:
        table = run.recipe.get("task") if isinstance(run.recipe.get("task"), dict) else None
        if not table or table.get("name") in (None, "classification"):
            continue

        def one(run=run, table=table):
            from milzoo.registry import get_component

            cls = get_component("task", table["name"])
            task = cls(cls.Config(**{k: v for k, v in table.items() if k != "name"}))
            return {"figures": [{"run": run.label, "title": title, "src": png_src(png), "caption": caption}
                                for title, png, caption in task.report_figures(run.path, fold)]}
        part = _try(f"the {table['name']} task's figures", one)
        if part["error"] or part["figures"]:
            out.append({"name": str(table["name"]), **part})
    return out


def _roc_run(run: RunData, index: int, split: str) -> dict[str, Any]:
    """One run's ROC curves and confusion matrices (``models`` empty: no class predictions)."""
    from milzoo.report.roc import roc_figure, run_predictions

    def one():
        models = run_predictions(run.path, split)
        if not models:
            return {"models": []}
        notes = [f"{m.title}: fold(s) {', '.join(map(str, c.one_class))} hold no bag of class '{c.class_name}' "
                 f"or only such bags in split '{m.split}': no ROC curve there"
                 for m in models for c in m.roc() if c.one_class]
        svg = figure_svg(roc_figure(models, RUN_COLORS[index % len(RUN_COLORS)], run.label))
        return {"models": [_confusion(run, m) for m in models], "notes": notes, "split": models[0].split,
                "svg": svg, "files": f"fold-XX/{{best,last}}/predictions-{models[0].split}.csv",
                "folds_text": "; ".join(f"{m.title}: {len(m.folds)} fold(s), {m.num_bags} bags" for m in models)}
    return {"label": run.label, **_try("the ROC curves and confusion matrices", one)}


def _confusion(run: RunData, m) -> dict[str, Any]:
    counts = m.confusion()
    total, correct = int(counts.sum()), int(counts.trace())
    rows = [{"name": name, "total": int(counts[i].sum()), "cells": [
        {"count": int(counts[i, j]), "diag": i == j,
         "data": {"run": run.label, "model": m.which, "split": m.split, "true": i, "pred": j,
                  "count": int(counts[i, j])}} for j in range(len(m.class_names))]}
        for i, name in enumerate(m.class_names)]
    return {"title": m.title, "which": m.which, "classes": m.class_names, "rows": rows, "total": total,
            "correct": correct, "accuracy": fmt(correct / total if total else None), "rule": m.rule()}


def _report_split(ctx, fold: int, split: str) -> str:
    """``split`` when the fold has it, else its first evaluated split other than val, else val or train."""
    names = ctx.split_names(fold)
    if split in names:
        return split
    others = [n for n in names if n not in ("train", "val")]
    return (others or [n for n in names if n == "val"] or ["train"])[0]


class _Contexts(dict):
    """Each run's :class:`~milzoo.report.context.RunContext`, made once."""

    def of(self, run: RunData):
        from milzoo.report.context import RunContext

        if run.label not in self:
            self[run.label] = RunContext(run.path)
        return self[run.label]


def _embedding(runs, contexts: _Contexts, fold: int, split: str, max_instances: int, method: str) -> dict:
    from milzoo.report.embedding import run_embedding

    def one(run):
        c = contexts.of(run)
        fig, _ = run_embedding(c, fold=fold, split=_report_split(c, fold, split), max_instances=max_instances,
                               method=method, label=run.label)
        return {"src": png_src(figure_png(fig)), "alt": f"representation map of {run.label}"}
    return {"fold": fold, "split": split, "max_instances": max_instances,
            "runs": [{"label": run.label, **_try("the representation map", lambda run=run: one(run))}
                     for run in runs]}


def _attention(runs, contexts: _Contexts, fold: int, split: str, slides: str | None) -> dict:
    from milzoo.report.attention import prediction_text, run_attention

    def one(run):
        c = contexts.of(run)
        png, _, view = run_attention(c, fold=fold, split=_report_split(c, fold, split), label=run.label,
                                     slides=slides)
        return {"src": png_src(png), "alt": f"attention view of {run.label}",
                "bag": view.bag.bag_id or view.position, "prediction": prediction_text(view),
                "rule": ("decision rule: " if getattr(view, "classes", True) else "") + str(view.rule),
                "notes": list(dict.fromkeys(view.notes))}
    return {"fold": fold, "split": split,
            "runs": [{"label": run.label, **_try("the attention view", lambda run=run: one(run))} for run in runs]}


def build_report(
    run_dirs: list[str | Path],
    labels: list[str] | None = None,
    embed: bool = True,
    attention: bool = True,
    fold: int = 0,
    split: str = "test",
    max_instances: int = 1000,
    method: str = "tsne",
    slides: str | None = None,
) -> str:
    """The HTML text of the report on one or several run directories.

    ``slides``: a folder of slide images, for attention views of slides drawn over the slide's thumbnail.
    """
    from milzoo.report.curves import curve_figures
    from milzoo._version import milzoo_version

    runs = [load_run(p) for p in run_dirs]
    assign_labels(runs, labels)
    roc = [_roc_run(run, i, split) for i, run in enumerate(runs)]
    contexts = _Contexts()
    context = {
        "title": "milzoo report: " + " vs ".join(r.label for r in runs),
        "written": time.strftime("%Y-%m-%d %H:%M"),
        "version": milzoo_version(),
        "overview": _overview_rows(runs),
        "notes": [f"{run.label}: {note}" for run in runs for note in run.notes],
        "differences": _differences(runs) if len(runs) > 1 else None,
        "final": final_table_data(runs),
        "rules": _rules(runs),
        "std_words": std_words(),
        "roc": [r for r in roc if r["error"] or r["models"]],
        "curves": [{"split": s, "src": png_src(figure_png(fig)), "alt": f"curves of split {s}"}
                   for s, fig in curve_figures(runs)],
        "task_figures": task_figures(runs, fold),
        "embedding": _embedding(runs, contexts, fold, split, max_instances, method) if embed else None,
        "attention": _attention(runs, contexts, fold, split, slides) if attention else None,
        "details": [{"label": run.label, "open": len(runs) == 1, "recipe_path": str(run.path / "recipe.toml"),
                     "recipe_text": run.recipe_text, "versions": _versions(run), "folds": _fold_table_data(run)}
                    for run in runs],
    }
    return _env().get_template("report.html.j2").render(**context)


def write_report(run_dirs: list[str | Path], out: str | Path | None = None, **kwargs) -> Path:
    """Write the report; default ``RUN_DIR/report.html`` for one run, ``./report.html`` for several."""
    if not run_dirs:
        raise ValueError("no run directory given")
    if out is None:
        out = Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1 else Path("report.html")
    text = build_report(run_dirs, **kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
