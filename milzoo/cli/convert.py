"""``milzoo convert FORMAT SOURCE OUT_DIR``: weights trained by another toolkit into a milzoo Hub folder."""

from __future__ import annotations

import logging
import tomllib
from typing import Any

import click

from milzoo.errors import ConversionError

log = logging.getLogger(__name__)


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value``: the value read as a TOML value (``0.1``, ``true``, ``[7, 5, 3]``), else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConversionError(f"--option {text!r} is not KEY=VALUE; write e.g. --option dropout=0.25.")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def formats_text() -> str:
    """Every registered format with its options (the epilog of ``milzoo convert --help``)."""
    from milzoo.registry import _table as registry

    lines = []
    for entry in registry.entries("converter"):
        cls = entry.obj
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"{entry.name} ({entry.distribution}): {doc[0] if doc else ''}")
        if cls.source:
            lines.append(f"    reads: {cls.source}")
        for key, field in cls.Config.model_fields.items():
            lines.append(f"    --option {key}=...  (default {field.default!r}) {field.description or ''}".rstrip())
    return "\n".join(lines) or "(no converter is registered: install the plugin of the model family)"


class ConvertCommand(click.Command):
    """The command whose help ends with the registered formats and their options."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Formats"):
            for line in formats_text().splitlines():
                formatter.write(" " * formatter.current_indent + line + "\n")


@click.command("convert", cls=ConvertCommand)
@click.argument("fmt", metavar="FORMAT")
@click.argument("source", metavar="SOURCE")
@click.argument("out_dir", metavar="OUT_DIR")
@click.option("--num-classes", type=click.IntRange(min=2), default=None,
              help="size of the classification head (needed when the weights have none, e.g. FEATHER)")
@click.option("--class-names", default=None, help="comma-separated class names, in the order of the training labels")
@click.option("--option", "-o", "opts", multiple=True, metavar="KEY=VALUE",
              help="an option of the format's converter (repeatable; listed below)")
@click.option("--repo-id", default=None, help="the repository id the model card should show (org/name)")
@click.option("--license", "license_", default=None, help="licence id for the model card: that of the weights")
@click.option("--tag", "tags", multiple=True, help="extra model-card tag (repeatable)")
@click.option("--overwrite", is_flag=True, help="replace OUT_DIR when it is an earlier Hub folder")
def convert_cmd(fmt, source, out_dir, num_classes, class_names, opts, repo_id, license_, tags, overwrite):
    """Convert SOURCE, the weights of a model trained by another toolkit (a .pt/.pth/.bin/.ckpt file read with
    torch.load(weights_only=True), a .safetensors file, or a folder holding model.safetensors or
    pytorch_model.bin), into the milzoo Hub folder OUT_DIR.

    Every key is mapped, and missing, unexpected or misshapen ones are refused by name. Load the result with
    milzoo.load_pretrained(OUT_DIR); share it with milzoo push OUT_DIR ORG/NAME.
    """
    from milzoo.conversion._convert import convert
    from milzoo.checkpoint import read_config

    names = [n.strip() for n in class_names.split(",")] if class_names else None
    options = dict(parse_option(o) for o in opts)
    out = convert(fmt, source, out_dir, num_classes=num_classes, class_names=names, options=options,
                  repo_id=repo_id, license=license_, tags=tags, overwrite=overwrite)
    cfg = read_config(out)
    conv = cfg["converted_from"]
    click.echo(f"wrote {out}: {conv['architecture']} ({conv['format']}), {cfg['num_classes']} classes "
               f"({', '.join(cfg['label_names'])})")
    for note in conv["notes"]:
        click.echo(f"note: {note}")
    if cfg.get("head") == "untrained":
        click.echo("warning: the classification head is newly initialised and untrained: fine-tune the model before "
                   "using its class predictions (its bag features and attention are the pretrained ones).")
    click.echo(f"load it with: milzoo.load_pretrained({str(out)!r})")


COMMANDS = (convert_cmd,)


def add_commands(cli: click.Group) -> None:
    """Add ``convert`` to the ``milzoo`` command group (idempotent)."""
    for cmd in COMMANDS:
        if cmd.name not in cli.commands:
            cli.add_command(cmd)
