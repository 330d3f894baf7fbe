"""Hook implementations: how TransMIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_transmil.pooling import TransMILPooling

    register(TransMILPooling)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_transmil") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them


@hookimpl
def milzoo_register_converters(register):
    from milzoo_transmil.convert import TransMILConverter

    register(TransMILConverter)  # milzoo convert transmil (checkpoints of the official code)
