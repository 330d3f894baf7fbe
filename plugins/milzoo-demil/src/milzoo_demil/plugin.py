"""Hook implementations: how DEMIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_demil.pooling import DEMILPooling

    register(DEMILPooling)


@hookimpl
def milzoo_register_losses(register):
    from milzoo_demil.loss import DEMILLoss

    register(DEMILLoss)


@hookimpl
def milzoo_register_datasets(register):
    from milzoo_demil.datasets import MIPLCandidates

    register(MIPLCandidates)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_demil") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
