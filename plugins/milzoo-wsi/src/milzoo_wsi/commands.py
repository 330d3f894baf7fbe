"""``milzoo features convert`` and ``milzoo localize``: the WSI plugin's commands.

Both raise :class:`milzoo.errors.UserError` subclasses for anything a user can
fix; the core's command group prints the message and exits with code 2.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import click

from milzoo.errors import UserError

_FORMATS = ["auto", "h5", "pt", "csv", "safetensors"]
_SHOWN_SLIDES = 20  # slides whose decision `localize` prints one per line


# --------------------------------------------------------------------------- features


@click.group("features")
def features_group():
    """Pre-extracted slide features (milzoo-wsi): conversion for fast training."""


@features_group.command("convert")
@click.argument("src")
@click.argument("dst")
@click.option("--format", "fmt", type=click.Choice(_FORMATS), default="auto", show_default=True,
              help="format of the files in SRC (auto: from the extensions)")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="dtype of the converted features")
@click.option("--overwrite", is_flag=True, help="convert again slides whose output exists already")
@click.option("--csv-header", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="CSV sources: detect a header row, or force it")
def convert_cmd(src, dst, fmt, dtype, overwrite, csv_header):
    """Convert the slide feature files under SRC to one <slide_id>.safetensors each in DST.

    SRC and DST are folders or fsspec URLs.  Re-running skips the slides
    already converted; a slide that fails does not stop the others, and all
    failures are listed at the end (exit code 2).
    """
    from milzoo_wsi.convert import convert_features

    summary = convert_features(src, dst, fmt=fmt, dtype=dtype, overwrite=overwrite, csv_header=csv_header)
    click.echo(str(summary) + (f"; D = {summary.dim}, {summary.patches} patches written" if summary.dim else ""))


@features_group.command("split")
@click.argument("recipe")
@click.argument("out")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe value (repeatable)")
def split_cmd(recipe, out, overrides):
    """Write the train/test split of RECIPE's slides as a slide table OUT (CSV with a split column).

    Reads the slide table only (no feature file), and draws the split exactly as
    a run of RECIPE does (test_fraction, split_seed, grouped by patient).
    Publish OUT with your results; given as `table`, it reproduces the split.
    """
    from milzoo.recipe import load_recipe
    from milzoo_wsi.dataset import SlidesSource
    from milzoo_wsi.table import write_split_table

    r = load_recipe(recipe, list(overrides))
    if r.root.data.name != SlidesSource.name:
        raise UserError(f"{recipe} reads the {r.root.data.name!r} dataset; `features split` needs data.name = \"slides\".")
    cfg = r.components["data"]
    source = SlidesSource(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source._split(source.read_table())  # the table as the recipe reads it: patients, target columns
    write_split_table(source.split_rows, out)
    info = source.split_info
    click.echo(f"wrote {out}: {info['train']} train and {info['test']} test slides ({info['method']})")


# --------------------------------------------------------------------------- localize


def _is_run_dir(path: Path) -> bool:
    return (path / "recipe.toml").is_file() and any(p.is_dir() for p in path.glob("fold-*"))


def _fold_checkpoint(run_dir: Path, fold: int, checkpoint: str) -> Path:
    from milzoo import checkpoint as ckpt

    fdir = run_dir / f"fold-{fold:02d}"
    if not fdir.is_dir():
        have = sorted(p.name for p in run_dir.glob("fold-*"))
        raise UserError(f"{run_dir} has no {fdir.name} (it has {', '.join(have) or 'no folds'}); pick one with --fold.")
    best, last = fdir / "best", fdir / "last"
    if checkpoint == "best" or (checkpoint == "auto" and (best / ckpt.WEIGHTS).exists()):
        chosen = best
    else:
        chosen = last
    if not (chosen / ckpt.WEIGHTS).exists():
        raise UserError(f"{chosen} holds no trained model yet; train the fold first (`milzoo run ... --out {run_dir}`)"
                        + (" or use --checkpoint last" if chosen == best else "") + ".")
    return chosen


def _data_overrides(features: str | None, table: str | None, overrides: tuple[str, ...]) -> list[str]:
    out = list(overrides)
    if features:
        out.append(f"data.features={_toml_str(features)}")
    if table:
        out.append(f"data.table={_toml_str(table)}")
    return out


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run_splits(run_dir: Path, fold: int, overrides: list[str]) -> tuple[dict[str, Any], Any]:
    """The splits fold ``fold`` of the run saw: train, val, test (rebuilt from the run's recipe)."""
    from milzoo.datasets import folds_for
    from milzoo.recipe import load_recipe

    recipe = load_recipe(run_dir / "recipe.toml", overrides)
    folds = folds_for(recipe)
    if not 0 <= fold < len(folds):
        raise UserError(f"--fold {fold} is out of range; the run has folds 0..{len(folds) - 1}.")
    data = folds[fold]
    return {"train": data.train, **data.evals}, recipe


def _loose_splits(recipe_path: str | None, features: str | None, table: str | None,
                  overrides: tuple[str, ...], model: Any = None) -> dict[str, Any]:
    """Splits for a model that comes without a run directory: from --recipe, or --features/--table (read with the
    labels of the model's task: ``target = "survival"`` with the default columns, or ``"regression"`` with the
    model's target names)."""
    from milzoo.datasets import build_dataset
    from milzoo.recipe import load_recipe

    if recipe_path:
        return build_dataset(load_recipe(recipe_path, _data_overrides(features, table, overrides)))
    if not (features and table):
        raise UserError(
            "this model comes without a run directory, so say which slides to localise: --features DIR --table "
            "CSV (every slide of the table), or --recipe RECIPE (its [data] section and splits)."
        )
    from milzoo_wsi.dataset import SlidesSource

    cfg = SlidesSource.Config(features=features, table=table, test_fraction=0.0, **_table_target(model))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*test_fraction.*")
        return SlidesSource(cfg).load()


def _table_target(model: Any) -> dict[str, Any]:
    """The slide table options that read the labels of ``model``'s task (none for classes)."""
    from milzoo.model.decision import predicts_classes, task_of

    if model is None or predicts_classes(model):
        return {}
    name = getattr(task_of(model), "name", None)
    if name == "survival":
        return {"target": "survival"}
    if name == "regression":
        return {"target": "regression", "target_columns": list(model.class_names)}
    return {}


def _load_model(source: str, fold: int | None, checkpoint: str) -> tuple[Any, float | None]:
    """A model (or ensemble) from a checkpoint folder or any reference ``milzoo.hub.load_pretrained`` knows."""
    from milzoo import checkpoint as ckpt

    from milzoo.model.decision import apply_recorded_threshold, recorded_threshold

    path = Path(source).expanduser()
    if path.is_dir() and (path / ckpt.CONFIG).is_file() and (path / ckpt.WEIGHTS).is_file():
        cfg = ckpt.read_config(path)
        if cfg.get("format") == ckpt.FORMAT:
            return apply_recorded_threshold(ckpt.load_model(path), cfg), recorded_threshold(cfg)
    try:
        from milzoo.hub import load_pretrained
    except ImportError:
        load_pretrained = None
    if load_pretrained is None:
        raise UserError(
            f"{source} is neither a run directory (recipe.toml + fold-XX/) nor a checkpoint folder (config.json + "
            "model.safetensors), and this milzoo cannot load pretrained references (no milzoo.hub)."
        )
    return load_pretrained(source, fold=fold, checkpoint=checkpoint), None


def _write_index(out_dir: str, rows: list[dict[str, Any]], class_names: list[str], model: Any = None) -> str:
    """The index ``slides.csv``: ``split, slide_id, label, pred, p_<class>, decision, ...`` for class models; the
    task's label and prediction columns (``time, event, risk, S_bin0, ...``) for a ``model`` without classes."""
    from milzoo.model.decision import label_columns, predicts_classes, prediction_columns
    from milzoo_wsi.localization import _write_bytes

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    files = ["csv", "png", "geojson", "slide_image"]
    if model is not None and not predicts_classes(model):
        labels, preds = label_columns(model), prediction_columns(model)
        w.writerow(["split", "slide_id", *labels, *preds, *files])
        for r in rows:
            values = list(r["prediction"].values) if r.get("prediction") is not None else []
            w.writerow([r["split"], r["slide_id"], *_cells(r["label"], len(labels)), *_cells(values, len(preds)),
                        r["csv"], r["png"] or "", r.get("geojson") or "", r.get("slide_image") or ""])
    else:
        w.writerow(["split", "slide_id", "label", "pred", *[f"p_{c}" for c in class_names], "decision", *files])
        for r in rows:
            w.writerow([r["split"], r["slide_id"], class_names[r["label"]], class_names[r["pred"]],
                        *[f"{p:.6g}" for p in r["probs"]], r["decision"].reason, r["csv"], r["png"] or "",
                        r.get("geojson") or "", r.get("slide_image") or ""])
    url = out_dir.rstrip("/") + "/slides.csv"
    _write_bytes(url, buf.getvalue().encode("utf-8"))
    return url


def _cells(values: list[float], n: int) -> list[str]:
    """``n`` CSV cells of numbers (empty where a value is missing)."""
    cells = [f"{float(v):.6g}" for v in list(values)[:n]]
    return cells + [""] * (n - len(cells))


@click.command("localize")
@click.argument("source")
@click.option("--fold", type=int, default=None,
              help="run directory: the fold whose model to use (default 0). Pretrained ensembles: pick one member")
@click.option("--split", "split", default=None,
              help="which slides: train, val or test of that fold (default test), or 'all'. Without a run "
                   "directory: the splits of --recipe/--table (default all)")
@click.option("--out", "out", default=None, help="output folder (default RUN_DIR/localization/fold-XX/SPLIT)")
@click.option("--checkpoint", type=click.Choice(["auto", "best", "last"]), default="auto", show_default=True,
              help="auto: the validation-selected best/ when the fold has one, else last/")
@click.option("--recipe", "recipe_path", default=None, help="recipe whose [data] gives the slides (pretrained models)")
@click.option("--features", default=None, help="feature folder (overrides data.features)")
@click.option("--table", default=None, help="slide table CSV (overrides data.table)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe value (repeatable)")
@click.option("--slide", "slides", multiple=True, help="only this slide id (repeatable)")
@click.option("--heatmap-value", type=click.Choice(["auto", "attention", "score"]), default="auto",
              show_default=True, help="what the heatmaps draw (auto: attention when the model has it; tasks "
                                      "without classes: attention only)")
@click.option("--heatmap-class", type=int, default=None,
              help="class index drawn for per-class outputs (default: each slide's predicted class; tasks without "
                   "classes: the head output, default 0)")
@click.option("--patch-size", type=float, default=None, help="patch size in pixels (default: from the coordinates)")
@click.option("--no-heatmaps", is_flag=True, help="write the per-patch tables only (no PNG, no GeoJSON)")
@click.option("--slides", "slide_dir", default=None, metavar="DIR",
              help="folder of the slide images (matched by slide id, with or without extension): heatmaps are "
                   "drawn over each slide's thumbnail (needs openslide-python + openslide-bin, or tiffslide)")
@click.option("--geojson/--no-geojson", default=True, show_default=True,
              help="also write SLIDE.geojson: one polygon per patch with its scores, for QuPath")
@click.option("--object-type", type=click.Choice(["detection", "annotation", "tile"]), default="detection",
              show_default=True, help="QuPath object type of the GeoJSON patches")
def localize_cmd(source, fold, split, out, checkpoint, recipe_path, features, table, overrides, slides,
                 heatmap_value, heatmap_class, patch_size, no_heatmaps, slide_dir, geojson, object_type):
    """Per-patch attention/instance-score tables and heatmaps of every slide, from a trained model.

    SOURCE is a run directory (the fold's model; the slides are rebuilt from
    RUN_DIR/recipe.toml with the same folds and splits), a checkpoint folder, or
    a pretrained reference (zoo name, hf-hub:org/name, Hub folder; an ensemble
    averages its members' attention and votes) given the slides with --features
    and --table or --recipe.  Writes SLIDE.csv, SLIDE.png and SLIDE.geojson per
    slide and an index slides.csv.  Each slide's class comes from the model's
    validation threshold when its checkpoint recorded one, else the argmax (an
    ensemble: the members' vote); the rule is printed.  A model whose task has
    no classes (regression, survival) draws the attention and gives each slide
    the task's prediction (risk, pred) next to its label instead of a class.
    """
    from milzoo.model.decision import apply_recorded_threshold, no_classes_text, predicts_classes
    from milzoo_wsi.localization import decision_rule, write_localization

    path = Path(source).expanduser()
    if _is_run_dir(path):
        f = 0 if fold is None else fold
        splits, _ = _run_splits(path, f, _data_overrides(features, table, overrides))
        from milzoo import checkpoint as ckpt

        model_dir = _fold_checkpoint(path, f, checkpoint)
        model = apply_recorded_threshold(ckpt.load_model(model_dir), ckpt.read_config(model_dir))
        threshold = model.decision_threshold
        split = split or ("test" if "test" in splits else "val" if "val" in splits else "train")
        out = out or str(path / "localization" / f"fold-{f:02d}" / split)
        where = f"fold {f} of {path}"
    else:
        if recipe_path is None and overrides:
            raise UserError("--set applies to a recipe; give --recipe (or a run directory as SOURCE).")
        model, threshold = _load_model(source, fold, checkpoint)
        splits = _loose_splits(recipe_path, features, table, overrides, model)
        split = split or "all"
        if out is None:
            raise UserError("give --out DIR: where to write the tables and heatmaps of this model.")
        where = source
    if split == "all":
        chosen = list(splits)
    elif split in splits:
        chosen = [split]
    else:
        raise UserError(f"--split {split!r} is not available; {where} has the splits {sorted(splits)} (or 'all').")
    in_shape = tuple(getattr(model, "in_shape", ()))
    first = splits[chosen[0]]
    if in_shape and tuple(first.instance_shape) != in_shape:
        raise UserError(
            f"the model expects instances of shape {in_shape} but the slides have {tuple(first.instance_shape)}; "
            "localise slides from the same feature extractor the model was trained on."
        )
    model.eval()
    rows: list[dict[str, Any]] = []
    found: set[str] = set()
    for name in chosen:
        ds = splits[name]
        idx = None
        if slides:
            idx = [i for i, sid in enumerate(ds.bag_ids) if sid in set(slides)]
            found.update(ds.bag_ids[i] for i in idx)
            if not idx:
                continue
        res = write_localization(model, ds, out, heatmaps=not no_heatmaps, heatmap_value=heatmap_value,
                                 heatmap_class=heatmap_class, patch_size=patch_size, indices=idx,
                                 threshold=threshold, slides=slide_dir, geojson=geojson and not no_heatmaps,
                                 object_type=object_type)
        rows += [{"split": name, **r} for r in res]
    missing = [s for s in slides if s not in found]
    if missing:
        raise UserError(f"slide(s) {missing} are not in the split(s) {chosen}; check --slide and --split.")
    classes = predicts_classes(model)
    index = _write_index(out, rows, list(model.class_names), model)
    n_png = sum(1 for r in rows if r["png"])
    n_geo = sum(1 for r in rows if r.get("geojson"))
    n_img = sum(1 for r in rows if r.get("slide_image"))
    over = f" ({n_img} over the slide image)" if slide_dir else ""
    click.echo(f"localised {len(rows)} slide(s) of {', '.join(chosen)} with {where}: {len(rows)} tables, "
               f"{n_png} heatmaps{over}, {n_geo} GeoJSON files in {out} (index {index})")
    if classes:
        click.echo(f"decision rule: {decision_rule(model, threshold)}")
    else:
        click.echo(no_classes_text(model))
    for r in rows[:_SHOWN_SLIDES]:
        if classes:
            click.echo(f"  {r['slide_id']}: {r['decision'].text}")
        else:
            said = r["prediction"].text if r.get("prediction") is not None else "no prediction"
            click.echo(f"  {r['slide_id']}: {said}; label {r['label_text']}")
    if len(rows) > _SHOWN_SLIDES:
        click.echo(f"  ... {len(rows) - _SHOWN_SLIDES} more in {index}")
    notes = list(dict.fromkeys(r["note"] for r in rows if r.get("note")))
    for note in notes[:5]:
        click.echo(f"note: {note}")
    if len(notes) > 5:
        click.echo(f"note: ... and {len(notes) - 5} more slides without an image")


def add_commands(cli) -> None:
    cli.add_command(features_group)
    cli.add_command(localize_cmd)
