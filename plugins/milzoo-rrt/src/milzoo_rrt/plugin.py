"""Hook implementations: how RRT-MIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_rrt.pooling import RRTPooling

    register(RRTPooling)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_rrt") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
