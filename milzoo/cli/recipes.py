"""``milzoo recipes``: list, show and copy the recipes that installed distributions ship (milzoo.recipebook)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from milzoo.errors import UserError


def _format(rows: list[dict]) -> str:
    from milzoo.cli.listing import table

    if not rows:
        return "(no shipped recipes: is a plugin that ships them installed? `milzoo plugins` shows the plugins)"
    lines = [["name", "distribution", "description"]]
    for r in rows:
        text = r["description"]
        if r["conflicts"]:
            text = f"[conflict: use {r['qualified']}] {text}"
        lines.append([r["name"], f"{r['distribution']} {r['version']}", text])
    out = table(lines)
    from milzoo.recipe import book as recipebook

    contested = recipebook.conflicts()
    if contested:
        out += ["", "conflicts (a name with two providers is never chosen by order):"]
        for name, found in contested:
            choices = " or ".join(r.qualified for r in found)
            out.append(f"  recipe {name!r} is shipped by {', '.join(r.distribution for r in found)}: a bare "
                       f"{name!r} is an error; write {choices}")
    out += ["", "milzoo run NAME [--set key=value ...] | milzoo recipes show NAME | milzoo recipes copy NAME DEST"]
    return "\n".join(out)


@click.group("recipes", invoke_without_command=True)
@click.option("--match", "pattern", default="*", metavar="GLOB", help="only names matching this glob, e.g. 'classic/*'")
@click.option("--json", "as_json", is_flag=True, help="machine-readable list")
@click.pass_context
def recipes_group(ctx, pattern, as_json):
    """The recipes that installed distributions ship: name, distribution, description.

    Run one by name with `milzoo run NAME` (or `milzoo validate NAME`); a name that two distributions ship is
    written `distribution:name`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from milzoo.recipe import book as recipebook

    rows = [r.describe() for r in recipebook.list_recipes(pattern)]
    click.echo(json.dumps(rows, indent=2) if as_json else _format(rows))


@recipes_group.command("show")
@click.argument("name")
def show_cmd(name):
    """Print the shipped recipe NAME exactly as it is installed (comments included)."""
    from milzoo.recipe.book import get_recipe

    click.echo(get_recipe(name).read_text(), nl=False)


@recipes_group.command("copy")
@click.argument("name")
@click.argument("dest")
@click.option("--force", is_flag=True, help="replace DEST when it exists")
def copy_cmd(name, dest, force):
    """Copy the shipped recipe NAME to DEST (a file, or an existing directory) to edit it."""
    from milzoo.recipe.book import get_recipe

    recipe = get_recipe(name)
    target = Path(dest)
    if target.is_dir():
        target = target / f"{recipe.name.rsplit('/', 1)[-1]}.toml"
    if target.exists() and not force:
        raise UserError(f"{target} exists already; choose another destination or pass --force to replace it.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(recipe.read_text(), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}; choose another destination.") from None
    click.echo(f"copied {recipe.qualified} {recipe.version} to {target}; edit it and run `milzoo run {target}`")


def add_commands(cli) -> None:
    cli.add_command(recipes_group)
