"""Hook implementations: how CLAM registers its poolings, loss, recipes and command with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_clam.pooling import CLAMMBPooling, CLAMSBPooling

    register(CLAMSBPooling)
    register(CLAMMBPooling)


@hookimpl
def milzoo_register_losses(register):
    from milzoo_clam.loss import CLAMLoss

    register(CLAMLoss)


@hookimpl
def milzoo_register_commands(cli):
    from milzoo_clam.commands import clam_group

    cli.add_command(clam_group)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_clam") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them


@hookimpl
def milzoo_register_converters(register):
    from milzoo_clam.convert import CLAMConverter

    register(CLAMConverter)  # milzoo convert clam (alias: milzoo clam convert)
