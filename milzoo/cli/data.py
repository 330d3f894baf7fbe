"""``milzoo data``: list and fetch ahead of time what components download on first use.

Plugins register their downloads (:class:`milzoo.components.Download`) through the ``milzoo_register_downloads``
hook; ``milzoo data fetch NAME`` runs one on a machine with a network, into the place the component reads it
from, so that the folder can be copied to an offline machine (docs/cli.md, "Offline machines").  ``milzoo data
fetch --recipe R`` fetches what the recipe's components say they read (``Component.downloads(config)``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

log = logging.getLogger(__name__)


def _entries() -> list:
    from milzoo.registry import _table as registry

    return registry.entries("download")


def _place(entry, root: Path | None) -> str:
    try:
        return str(entry.obj.destination(root))
    except Exception as exc:  # noqa: BLE001 - a listing must not fail on one entry
        return f"(unknown: {type(exc).__name__}: {exc})"


@click.group("data")
def data_group():
    """Fetch ahead of time what recipes download on first use (datasets, ImageNet weights)."""


@data_group.command("list")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="the folder a recipe names as data.root (default: MILZOO_DATA_DIR or ~/.cache/milzoo/datasets)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable list")
def list_cmd(root, as_json):
    """Every download milzoo knows, where it goes, and what it is."""
    rows = [{"name": e.name, "qualified": e.qualified, "distribution": e.distribution,
             "destination": _place(e, root), "summary": e.obj.summary} for e in _entries()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("(no downloads registered: is a plugin that downloads data, e.g. milzoo-vision, installed?)")
        return
    from milzoo.cli.listing import table

    lines = table([["name", "destination", "what"]] + [[r["name"], r["destination"], r["summary"]] for r in rows])
    usage = "milzoo data fetch NAME [NAME ...] [--root DIR]   or   milzoo data fetch --recipe RECIPE"
    click.echo("\n".join(lines + ["", usage]))


def recipe_downloads(recipe) -> tuple[list[str], Path | None]:
    """The downloads a validated recipe's components read (``Component.downloads``), in recipe order without
    repeats, and the folder they go into: the dataset's ``root`` option when it has one."""
    from milzoo.registry import get_component

    names: list[str] = []
    for kind, name, config in recipe.component_configs():
        for download in get_component(kind, name).downloads(config):
            if download not in names:
                names.append(download)
    root = getattr(recipe.components.get("data"), "root", None)
    return names, (Path(root).expanduser() if root else None)


@data_group.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--recipe", "recipe", default=None, metavar="RECIPE",
              help="fetch what this recipe (a file or a shipped recipe's name) reads: its dataset's files into its "
                   "data.root, an encoder's ImageNet weights, ...")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="with --recipe: override a recipe value")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="download into this folder: the recipe's data.root (default: MILZOO_DATA_DIR or "
                   "~/.cache/milzoo/datasets)")
def fetch_cmd(names, recipe, overrides, root):
    """Download NAMES (`milzoo data list`), or what --recipe reads, into the place milzoo reads them from, for
    offline use later."""
    from milzoo.errors import UserError
    from milzoo.registry import _table as registry

    if not names and recipe is None:
        raise UserError("name what to fetch: one or more downloads (`milzoo data list`), or --recipe RECIPE for "
                        "everything a recipe reads.")
    if overrides and recipe is None:
        raise UserError("--set changes a recipe's values; it needs --recipe RECIPE.")
    names = list(names)
    if recipe is not None:
        from milzoo.recipe import load_recipe

        needed, recipe_root = recipe_downloads(load_recipe(recipe, list(overrides)))
        if root is None:
            root = recipe_root
        if not needed:
            click.echo(f"{recipe} downloads nothing: its components read only files it names.")
        names += [n for n in needed if n not in names]
    entries = [registry.get_entry("download", name) for name in names]  # every name checked before any download
    for entry in entries:
        if root is not None and not entry.obj.uses_root:
            click.echo(f"note: {entry.name} does not go into --root; it goes to {_place(entry, None)}", err=True)
        where = entry.obj.fetch(root if entry.obj.uses_root else None)
        click.echo(f"{entry.name}: ready in {where}")


def add_commands(cli: click.Group) -> None:
    """Add the ``data`` group to the ``milzoo`` command group (idempotent)."""
    if data_group.name not in cli.commands:
        cli.add_command(data_group)
