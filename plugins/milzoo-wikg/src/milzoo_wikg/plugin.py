"""Hook implementations: how WiKG registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_wikg.pooling import WiKGPooling

    register(WiKGPooling)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_wikg") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
