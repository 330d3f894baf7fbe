"""Hook implementations: how RGMIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_rgmil.pooling import RGMILPooling

    register(RGMILPooling)


@hookimpl
def milzoo_register_losses(register):
    from milzoo_rgmil.loss import RGMILBranchLoss

    register(RGMILBranchLoss)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_rgmil") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
