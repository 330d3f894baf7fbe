"""``milzoo clam convert``: an official CLAM checkpoint into a milzoo Hub folder (``milzoo convert clam`` with the
options as flags)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("clam")
def clam_group():
    """CLAM (milzoo-clam): convert checkpoints trained with the official code."""


@clam_group.command("convert")
@click.argument("official", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="a recipe whose [pooling] table gives the options the weights do not fix (dropout, k_sample, "
                   "subtyping)")
@click.option("--dropout", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="pooling.dropout (default 0.25, the official --drop_out)")
@click.option("--k-sample", "k_sample", type=click.IntRange(min=1), default=None,
              help="pooling.k_sample (the official --B, default 8)")
@click.option("--subtyping/--no-subtyping", default=None, help="pooling.subtyping (the official --subtyping)")
@click.option("--class-names", default=None,
              help="comma-separated class names in the order of the official label dictionary")
@click.option("--overwrite", is_flag=True, help="replace OUT_DIR when it is an earlier Hub folder")
def convert_cmd(official: Path, out_dir: Path, recipe: Path | None, dropout: float | None, k_sample: int | None,
                subtyping: bool | None, class_names: str | None, overwrite: bool):
    """Convert OFFICIAL (a state dict saved by the official CLAM code, read with weights_only=True) into the
    milzoo Hub folder OUT_DIR (model.safetensors + config.json + README.md; load it with milzoo.load_pretrained or
    milzoo.load_model). The same as `milzoo convert clam OFFICIAL OUT_DIR`.

    The size preset, the gate, SB or MB, the feature dimension and the number of classes are read from the
    weights; the encoder is 'identity' (the official models read pre-extracted features).
    """
    from milzoo_clam.convert import convert_checkpoint

    names = [n.strip() for n in class_names.split(",")] if class_names else None
    out = convert_checkpoint(official, out_dir, recipe=recipe, class_names=names, dropout=dropout,
                             k_sample=k_sample, subtyping=subtyping, overwrite=overwrite)
    click.echo(f"wrote {out}")
