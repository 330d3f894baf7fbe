"""The static HTML report: one self-contained page, PNGs embedded as base64.

Every number of the final-metrics tables is also written, unrounded, in the
cell's ``data-*`` attributes (``data-run``, ``data-section``, ``data-split``,
``data-metric``, ``data-mean``, ``data-std``, ``data-n``), so a script can read
the tables back.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from milzoo.errors import MilzooError
from milzoo.metrics import mean_std
from milzoo.report.common import (
    RUN_COLORS,
    RunData,
    assign_labels,
    figure_png,
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

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;color:#222;
padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:32px;border-bottom:1px solid #ddd;
padding-bottom:4px}h3{font-size:1.05em}
table{border-collapse:collapse;margin:8px 0;font-size:0.9em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.optimistic td{background:#fff4e5}tr.optimistic td.section{color:#a04000;font-weight:600}
.note{color:#666;font-size:0.9em}.warn{color:#a04000}
img{max-width:100%;height:auto;border:1px solid #eee;margin:6px 0}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:0.85em}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:middle}
details{margin:8px 0}summary{cursor:pointer}
"""


def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def png_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if is_number(v) else "–"


# --------------------------------------------------------------------------- final metrics


def _stat(v: Any) -> dict[str, Any] | None:
    """``{"mean", "std", "n"}`` from a summary entry (``{"mean", "std", "values"}``) or a plain number."""
    if isinstance(v, dict) and "mean" in v:
        vals = [x for x in v.get("values", []) if is_number(x)]
        return {"mean": v.get("mean"), "std": v.get("std"), "n": len(vals) if vals else None}
    if is_number(v):
        return {"mean": float(v), "std": None, "n": 1}
    return None


def _from_records(run: RunData) -> dict[str, Any]:
    """A summary-like ``{"last": {split: {metric: stat}}}`` from each fold's latest epoch (incomplete runs)."""
    latest: dict[tuple[int, str], dict] = {}
    for r in run.records:
        if r.get("split") in (None, "train"):
            continue
        key = (int(r.get("fold", 0)), str(r["split"]))
        if key not in latest or int(r.get("epoch", -1)) >= int(latest[key].get("epoch", -1)):
            latest[key] = r
    per: dict[str, dict[str, list]] = {}
    for (_, split), r in sorted(latest.items()):
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


def _cell(stat: dict[str, Any] | None, attrs: dict[str, Any]) -> str:
    if stat is None:
        return '<td class="num">–</td>'
    mean, std, n = stat.get("mean"), stat.get("std"), stat.get("n")
    text = fmt(mean)
    if is_number(std) and (n or 0) > 1:
        text += f" ± {fmt(std)}"
    data = {**attrs, "mean": repr(float(mean)) if is_number(mean) else "nan",
            "std": repr(float(std)) if is_number(std) else "", "n": n if n is not None else ""}
    data_s = " ".join(f'data-{k}="{esc(v)}"' for k, v in data.items())
    return f'<td class="num" {data_s}>{esc(text)}</td>'


def final_table(runs: list[RunData]) -> str:
    several = len(runs) > 1
    all_rows = [(run, r) for run in runs for r in final_rows(run)]
    if not all_rows:
        return '<p class="note">No evaluation has finished yet.</p>'
    metrics = sorted({m for _, r in all_rows for m in r["metrics"]}, key=lambda m: (m == "loss", metric_sort_key(m)))
    head = (["run"] if several else []) + ["selection", "split", "folds"] + metrics + ["epoch"]
    out = ['<table class="final"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    order = {k: i for i, (k, _, _) in enumerate(SECTIONS)}
    all_rows.sort(key=lambda t: (order[t[1]["section"]], t[1]["split"] != "test", t[1]["split"], runs.index(t[0])))
    for run, r in all_rows:
        cls = ' class="optimistic"' if r["section"] == "best_epoch_on_test" else ""
        cells = []
        if several:
            color = RUN_COLORS[runs.index(run) % len(RUN_COLORS)]
            cells.append(f'<td><span class="swatch" style="background:{color}"></span>{esc(run.label)}</td>')
        title = f' title="{esc(r["note"])}"' if r["note"] else ""
        cells.append(f'<td class="section"{title}>{esc(r["label"])}</td>')
        cells.append(f"<td>{esc(r['split'])}</td>")
        cells.append(f'<td class="num">{esc(r["folds"]) if r["folds"] else "–"}</td>')
        for m in metrics:
            cells.append(_cell(r["metrics"].get(m), {"run": run.label, "section": r["section"], "split": r["split"],
                                                      "metric": m}))
        ep = r["epoch"]
        cells.append(f'<td class="num">{esc(fmt(ep["mean"] + 1, 1)) if ep and is_number(ep["mean"]) else ""}</td>')
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out.append(
        '<p class="note">Mean ± standard deviation over folds. <b>last epoch</b>: the model after the final epoch. '
        "<b>validation-selected</b>: each fold's epoch with the best validation score. "
        '<span class="warn"><b>best epoch on test — OPTIMISTIC</b>: each fold\'s epoch chosen on its own test '
        "split, as some papers report; it uses the test labels for selection and overestimates.</span> "
        "<b>ensemble</b>: the fold models' vote on the shared test split. The epoch column is the mean chosen "
        "epoch, counted from 1.</p>"
    )
    return "\n".join(out)


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


def decision_rules(runs: list[RunData]) -> str:
    """The note under the final table: each run's decision rule (runs whose table has accuracy or F1)."""
    runs = [r for r in runs if any({"acc", "f1"} & set(row["metrics"]) for row in final_rows(r))]
    if not runs:
        return ""
    items = [f"{esc(r.label)}: {esc(run_decision_rule(r))}" if len(runs) > 1 else esc(run_decision_rule(r))
             for r in runs]
    return ('<p class="note decision-rule"><b>Classes behind acc and F1</b> (the validation-selected and last '
            "epochs; the ensemble votes the members' classes): " + "; ".join(items) + ".</p>")


def fold_table(run: RunData) -> str:
    """Each fold's last-epoch metrics per split, straight from metrics.jsonl."""
    latest: dict[tuple[int, str], dict] = {}
    for r in run.records:
        if r.get("split") in (None, "train"):
            continue
        key = (int(r.get("fold", 0)), str(r["split"]))
        if key not in latest or int(r.get("epoch", -1)) >= int(latest[key].get("epoch", -1)):
            latest[key] = r
    if not latest:
        return ""
    metrics = sorted({k for r in latest.values() for k, v in r.items()
                      if k not in ("fold", "epoch", "split", "threshold") and is_number(v)}, key=metric_sort_key)
    head = ["fold", "split", "epoch"] + metrics
    out = ['<table class="folds"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for (fold, split), r in sorted(latest.items()):
        cells = [f"<td>{fold}</td>", f"<td>{esc(split)}</td>", f'<td class="num">{int(r.get("epoch", -1)) + 1}</td>']
        for m in metrics:
            v = r.get(m)
            data = (f' data-run="{esc(run.label)}" data-fold="{fold}" data-split="{esc(split)}" data-metric="{esc(m)}"'
                    f' data-value="{esc(repr(float(v)))}"') if is_number(v) else ""
            cells.append(f'<td class="num"{data}>{esc(fmt(v))}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


# --------------------------------------------------------------------------- run details


def overview_table(runs: list[RunData]) -> str:
    head = ["", "run", "directory", "recipe", "data", "encoder", "pooling", "loss", "protocol", "epochs", "started"]
    out = ['<table class="overview"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
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
        cells = [f'<span class="swatch" style="background:{RUN_COLORS[i % len(RUN_COLORS)]}"></span>', run.label,
                 str(run.path), run.name, dname, rc.get("encoder", {}).get("name", "identity"),
                 rc.get("pooling", {}).get("name", "?"), losses, ptxt, rc.get("train", {}).get("epochs", "?"),
                 run.info.get("started", "?")]
        out.append("<tr>" + "".join(f"<td>{c if j == 0 else esc(c)}</td>" for j, c in enumerate(cells)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def differences_table(runs: list[RunData]) -> str:
    diff = recipe_differences(runs)
    if not diff:
        return '<p class="note">The runs\' recipes are identical (apart from name and description).</p>'
    out = ["<table><tr><th>recipe key</th>" + "".join(f"<th>{esc(r.label)}</th>" for r in runs) + "</tr>"]
    for k, vals in diff.items():
        out.append(f"<tr><td><code>{esc(k)}</code></td>" +
                   "".join(f"<td><code>{esc(json.dumps(v) if not isinstance(v, str) else v)}</code></td>" for v in vals)
                   + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def versions_table(run: RunData) -> str:
    info = run.info
    if not info:
        return '<p class="note">No run.json in this run directory.</p>'
    rows = [("milzoo", info.get("milzoo")), ("python", info.get("python")), ("platform", info.get("platform")),
            ("git commit", info.get("git_sha")), ("started", info.get("started")),
            ("command", " ".join(map(str, info.get("command") or [])))]
    if info.get("outcome"):  # how the latest start ended (run.json of runs before this field have none)
        rows.append(("ended", f"{info.get('ended', '')}: {info['outcome']}"
                              f"{' - ' + str(info['error']) if info.get('error') else ''}"))
    rows += [(k, v) for k, v in (info.get("libraries") or {}).items()]
    out = ["<table><tr><th>what</th><th>version</th></tr>"]
    out += [f"<tr><td>{esc(k)}</td><td>{esc(v if v is not None else '–')}</td></tr>" for k, v in rows]
    out.append("</table>")
    plugins = info.get("plugins") or []
    if plugins:
        out.append("<table><tr><th>plugin</th><th>distribution</th><th>version</th><th>status</th></tr>")
        for p in plugins:
            status = p.get("status", "") + (f": {p['error']}" if p.get("error") else "")
            out.append(f"<tr><td>{esc(p.get('name'))}</td><td>{esc(p.get('distribution'))}</td>"
                       f"<td>{esc(p.get('version'))}</td><td>{esc(status)}</td></tr>")
        out.append("</table>")
    hist = info.get("history") or []
    if len(hist) > 1:
        out.append('<p class="note">Sessions: ' + "; ".join(
            f"{esc(h.get('started'))}{' (resume)' if h.get('resume') else ''}"
            f"{' fold ' + str(h['fold']) if h.get('fold') is not None else ''}"
            f"{' → ' + str(h['outcome']) if h.get('outcome') else ''}" for h in hist) + "</p>")
    return "\n".join(out)


# --------------------------------------------------------------------------- the page


def _try(what: str, fn: Callable[[], str]) -> str:
    """Run one optional part of the report; a failure becomes a note, never a broken report."""
    try:
        return fn()
    except MilzooError as exc:
        return f'<p class="note warn">{esc(what)} skipped: {esc(exc)}</p>'
    except Exception as exc:  # noqa: BLE001 - a report must survive whatever one part hits
        log.debug("report: %s failed\n%s", what, traceback.format_exc())
        return f'<p class="note warn">{esc(what)} skipped: {esc(type(exc).__name__)}: {esc(exc)}</p>'


def task_figures(runs: list[RunData], fold: int) -> list[str]:
    """The figures each run's task draws (``Task.report_figures``: survival's Kaplan-Meier curves), as HTML."""
    out: list[str] = []
    for run in runs:
        table = run.recipe.get("task") if isinstance(run.recipe.get("task"), dict) else None
        if not table or table.get("name") in (None, "classification"):
            continue

        def one(run=run, table=table):
            from milzoo.registry import get_component

            cls = get_component("task", table["name"])
            task = cls(cls.Config(**{k: v for k, v in table.items() if k != "name"}))
            return "".join(f"<h3>{esc(run.label)}: {esc(title)}</h3>" + png_tag(png, title)
                           + f'<p class="note">{esc(caption)}</p>' for title, png, caption in
                           task.report_figures(run.path, fold))
        html = _try(f"the {table['name']} task's figures", one)
        if html:
            out.append(f'<h2 id="task-{esc(table["name"])}">{esc(table["name"]).capitalize()} figures</h2>' + html)
    return out


def _report_split(ctx, fold: int, split: str) -> str:
    """``split`` when the fold has it, else its first evaluated split other than val, else val or train."""
    names = ctx.split_names(fold)
    if split in names:
        return split
    others = [n for n in names if n not in ("train", "val")]
    return (others or [n for n in names if n == "val"] or ["train"])[0]


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
    title = "milzoo report: " + " vs ".join(r.label for r in runs)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f'<p class="note">Written {esc(time.strftime("%Y-%m-%d %H:%M"))} by milzoo {esc(milzoo_version())}.</p>']
    parts.append("<h2>Runs</h2>" + overview_table(runs))
    for run in runs:
        for note in run.notes:
            parts.append(f'<p class="note warn">{esc(run.label)}: {esc(note)}</p>')
    if len(runs) > 1:
        parts.append("<h3>Recipe differences</h3>" + differences_table(runs))
    parts.append('<h2 id="final">Final metrics</h2>' + final_table(runs) + decision_rules(runs))

    parts.append('<h2 id="curves">Curves per epoch</h2>')
    figs = curve_figures(runs)
    if not figs:
        parts.append('<p class="note">No epoch has finished yet.</p>')
    for split_name, fig in figs:
        parts.append(f'<h3>{esc(split_name)}</h3>' + png_tag(figure_png(fig), f"curves of split {split_name}"))
    parts.extend(task_figures(runs, fold))

    if embed or attention:
        from milzoo.report.context import RunContext

        contexts = {}

        def ctx(run):
            if run.label not in contexts:
                contexts[run.label] = RunContext(run.path)
            return contexts[run.label]

        if embed:
            from milzoo.report.embedding import run_embedding

            parts.append('<h2 id="embedding">Representation maps</h2><p class="note">'
                         f"Encoder features of a seeded sample of up to {max_instances} instances of fold {fold}'s "
                         f"'{esc(split)}' split, projected to 2-D; the model is the validation-selected one when the "
                         "run has it, else the last. Same command: <code>milzoo embed RUN_DIR</code>.</p>")
            for run in runs:
                def one(run=run):
                    c = ctx(run)
                    fig, _ = run_embedding(c, fold=fold, split=_report_split(c, fold, split),
                                           max_instances=max_instances, method=method, label=run.label)
                    return png_tag(figure_png(fig), f"representation map of {run.label}")
                parts.append(f"<h3>{esc(run.label)}</h3>" + _try("the representation map", one))
        if attention:
            from milzoo.report.attention import run_attention

            parts.append('<h2 id="attention">Attention view</h2><p class="note">One bag of fold '
                         f"{fold}'s '{esc(split)}' split (the first bag not of class 0; for survival the first with an "
                         "event, for regression the first bag). Other bags: "
                         "<code>milzoo attention RUN_DIR --bag ID</code>.</p>")
            for run in runs:
                def one(run=run):
                    from milzoo.report.attention import prediction_text

                    c = ctx(run)
                    png, _, view = run_attention(c, fold=fold, split=_report_split(c, fold, split), label=run.label,
                                                 slides=slides)
                    notes = "".join(f'<p class="note warn">{esc(n)}</p>' for n in dict.fromkeys(view.notes))
                    return (png_tag(png, f"attention view of {run.label}")
                            + f'<p class="decision">bag {esc(view.bag.bag_id or view.position)}: '
                            f"{esc(prediction_text(view))}; "
                            f"{'decision rule: ' if getattr(view, 'classes', True) else ''}{esc(view.rule)}</p>"
                            + notes)
                parts.append(f"<h3>{esc(run.label)}</h3>" + _try("the attention view", one))

    parts.append('<h2 id="details">Recipes and versions</h2>')
    for run in runs:
        parts.append(f"<h3>{esc(run.label)}</h3>")
        parts.append(f"<details{' open' if len(runs) == 1 else ''}><summary>resolved recipe "
                     f"({esc(run.path / 'recipe.toml')})</summary>"
                     f"<pre>{esc(run.recipe_text)}</pre></details>")
        parts.append(f"<details><summary>versions (run.json)</summary>{versions_table(run)}</details>")
        ft = fold_table(run)
        if ft:
            parts.append(f"<details><summary>each fold's last epoch (metrics.jsonl)</summary>{ft}</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


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

