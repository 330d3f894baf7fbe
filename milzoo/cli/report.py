"""``milzoo report``, ``milzoo embed`` and ``milzoo attention``: pictures of runs."""

from __future__ import annotations

from pathlib import Path

import click

_FOLD = click.option("--fold", type=int, default=0, show_default=True, help="which fold's model and bags")
_SPLIT = click.option("--split", default="test", show_default=True,
                      help="which split of that fold (train, val, test, or another split the dataset has)")
_SLIDES = click.option("--slides", "slides", default=None, metavar="DIR",
                       help="slides: folder of the slide images (matched by slide id, with or without extension); "
                            "the heatmap is drawn over the slide's thumbnail (needs milzoo-wsi[slides])")


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR [RUN_DIR ...]")
@click.option("--out", default=None,
              help="HTML file to write (default RUN_DIR/report.html; report.html here for several runs)")
@click.option("--label", "labels", multiple=True,
              help="legend name of each run, in order (repeatable; default: recipe or directory names)")
@click.option("--embed/--no-embed", default=True, show_default=True,
              help="include representation maps (rebuilds the data and loads the models)")
@click.option("--attention/--no-attention", default=True, show_default=True, help="include an attention view")
@_FOLD
@_SPLIT
@click.option("--max-instances", type=click.IntRange(min=2), default=1000, show_default=True,
              help="instances in each representation map")
@click.option("--method", type=click.Choice(["tsne", "pca"]), default="tsne", show_default=True)
@_SLIDES
def report_cmd(run_dirs, out, labels, embed, attention, fold, split, max_instances, method, slides):
    """Write a self-contained HTML report of one or several runs (several: overlaid for comparison).

    It holds the loss and metric curves per epoch and split (thin line per fold,
    thick mean), the final metrics table (last, validation-selected, optimistic
    best-epoch-on-test, ensemble), representation maps, an attention view, and
    each run's resolved recipe and versions.  Images are embedded, so the page
    can be mailed or archived as one file.
    """
    from milzoo.report.html import write_report

    path = write_report(list(run_dirs), out, labels=list(labels) or None, embed=embed, attention=attention,
                        fold=fold, split=split, max_instances=max_instances, method=method, slides=slides)
    click.echo(f"wrote {path}")


@click.command("embed")
@click.argument("run_dir")
@_FOLD
@_SPLIT
@click.option("--max-instances", type=click.IntRange(min=2), default=2000, show_default=True,
              help="instances sampled (seeded, spread over the bags)")
@click.option("--method", type=click.Choice(["tsne", "pca"]), default="tsne", show_default=True,
              help="projection (t-SNE falls back to PCA when scikit-learn's TSNE is unavailable)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the sample and of t-SNE")
@click.option("--out", default=None, help="PNG to write (default RUN_DIR/embedding-fold<I>-<split>.png)")
def embed_cmd(run_dir, fold, split, max_instances, method, seed, out):
    """Draw a representation map: instance features of a trained model, projected to 2-D.

    Loads the fold's model (best/ when present, else last/), rebuilds its bags from
    RUN_DIR/recipe.toml, encodes a seeded sample of instances and colours them by
    instance label (or bag label when instances have none).
    """
    from milzoo.report.common import figure_png, write_bytes
    from milzoo.report.context import RunContext
    from milzoo.report.embedding import run_embedding

    fig, emb = run_embedding(RunContext(run_dir), fold=fold, split=split, max_instances=max_instances,
                             method=method, seed=seed)
    path = Path(out) if out else Path(run_dir) / f"embedding-fold{fold:02d}-{split}.png"
    write_bytes(path, figure_png(fig))
    extra = f"; 5-NN {emb.label_kind} agreement {emb.knn_agreement:.3f}" if emb.knn_agreement is not None else ""
    click.echo(f"wrote {path} ({emb.method}, {len(emb.xy)} instances{extra})")


@click.command("attention")
@click.argument("run_dir")
@click.option("--bag", "bag_id", default=None, help="bag id to show")
@click.option("--index", type=int, default=None, help="position of the bag in the split (instead of --bag)")
@_FOLD
@_SPLIT
@click.option("--order", type=click.Choice(["attention", "bag"]), default=None,
              help="instance order (default: images by attention, bars in bag order)")
@click.option("--max-show", type=click.IntRange(min=1), default=None,
              help="most instances drawn (default 64 images / 300 bars; the highest attention first)")
@click.option("--out", default=None, help="PNG to write (default RUN_DIR/attention-fold<I>-<split>-<bag>.png)")
@_SLIDES
@click.option("--geojson/--no-geojson", default=True, show_default=True,
              help="slides: also write the patches with their attention as GeoJSON for QuPath (beside the PNG)")
def attention_cmd(run_dir, bag_id, index, fold, split, order, max_show, out, slides, geojson):
    """Draw one bag's attention: an image grid, a bar chart, or a slide heatmap.

    Without --bag/--index the first bag not of class 0 is shown (survival: the
    first bag with an observed event).  Image bags get
    a grid of their instances titled with attention and instance prediction;
    feature bags a bar chart; slides (bags with coordinates) the heatmap of the
    milzoo-wsi plugin, over the slide image with --slides, and a GeoJSON of the
    patches for QuPath.  The bag's class comes from the checkpoint's validation
    threshold when it recorded one, else the argmax; the rule is printed.  A
    model whose task has no classes (regression, survival) shows the attention
    and prints the task's prediction (risk, pred) and the bag's label instead.
    """
    import re

    from milzoo.report.common import write_bytes
    from milzoo.report.context import RunContext
    from milzoo.report.attention import attention_geojson, prediction_text, run_attention

    png, kind, view = run_attention(RunContext(run_dir), fold=fold, split=split, bag_id=bag_id, index=index,
                                    max_show=max_show, order=order, slides=slides)
    safe = re.sub(r"[^0-9A-Za-z_.-]+", "_", str(view.bag.bag_id or view.position))[:80]
    path = Path(out) if out else Path(run_dir) / f"attention-fold{fold:02d}-{split}-{safe}.png"
    write_bytes(path, png)
    over = f", over {view.slide_image}" if view.slide_image else ""
    click.echo(f"wrote {path} ({kind}, bag {view.bag.bag_id or view.position}, {len(view.bag)} instances{over})")
    if geojson and kind == "heatmap":
        text = attention_geojson(view)
        if text is not None:
            geo = path.with_suffix(".geojson")
            write_bytes(geo, text.encode("utf-8"))
            click.echo(f"wrote {geo} (one polygon per patch, for QuPath)")
    if view.classes:
        click.echo(prediction_text(view))
        click.echo(f"decision rule: {view.rule}")
    else:  # a task without classes (regression, survival): its prediction and the label, no decision rule
        click.echo(f"{prediction_text(view)}; label {view.label}")
        click.echo(view.rule)
    for note in dict.fromkeys(view.notes):
        click.echo(f"note: {note}")


COMMANDS = [report_cmd, embed_cmd, attention_cmd]


def add_commands(cli: click.Group) -> None:
    """Add ``report``, ``embed`` and ``attention`` to the ``milzoo`` command group (idempotent)."""
    for cmd in COMMANDS:
        if cmd.name not in cli.commands:
            cli.add_command(cmd)
