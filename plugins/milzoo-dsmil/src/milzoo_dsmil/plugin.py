"""Hook implementations: how DSMIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_dsmil.pooling import DSMILPooling

    register(DSMILPooling)


@hookimpl
def milzoo_register_losses(register):
    from milzoo_dsmil.loss import DSMILLoss

    register(DSMILLoss)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_dsmil") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
