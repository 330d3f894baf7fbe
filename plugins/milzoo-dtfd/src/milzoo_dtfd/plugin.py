"""Hook implementations: how DTFD-MIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_dtfd.pooling import DTFDPooling

    register(DTFDPooling)


@hookimpl
def milzoo_register_losses(register):
    from milzoo_dtfd.loss import DTFDLoss

    register(DTFDLoss)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_dtfd") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
