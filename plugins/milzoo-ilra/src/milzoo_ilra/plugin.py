"""Hook implementations: how ILRA-MIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_ilra.pooling import ILRAPooling

    register(ILRAPooling)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_ilra") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
