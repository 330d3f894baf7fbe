"""Hook implementations: how ABMIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_abmil.pooling import ABMILPooling

    register(ABMILPooling)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_abmil") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them


@hookimpl
def milzoo_register_converters(register):
    from milzoo_abmil.convert import MILLabABMILConverter

    register(MILLabABMILConverter)  # milzoo convert mil-lab-abmil (MIL-Lab's ABMIL, FEATHER)
