"""Hook implementations: the ``slides`` dataset source and the ``features``/``localize`` commands."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_datasets(register):
    from milzoo_wsi.dataset import SlidesSource

    register(SlidesSource)


@hookimpl
def milzoo_register_commands(cli):
    from milzoo_wsi.commands import add_commands

    add_commands(cli)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_wsi") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
