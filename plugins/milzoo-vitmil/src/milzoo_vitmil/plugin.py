"""Hook implementations: how Transformer-MIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_vitmil.pooling import ViTMILPooling

    register(ViTMILPooling, aliases=["transformer_mil"])


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_vitmil") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
