"""Hook implementations: how milzoo-survival registers its task, losses, datasets, recipes and command."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_tasks(register):
    from milzoo_survival.task import SurvivalTask

    register(SurvivalTask)


@hookimpl
def milzoo_register_losses(register):
    from milzoo_survival.losses import CoxLoss, DiscreteSurvivalNLL

    register(DiscreteSurvivalNLL)
    register(CoxLoss)


@hookimpl
def milzoo_register_datasets(register):
    from milzoo_survival.datasets import FMNISTRegressionBags, FMNISTSurvivalBags

    register(FMNISTSurvivalBags)
    register(FMNISTRegressionBags)


@hookimpl
def milzoo_register_commands(cli):
    from milzoo_survival.commands import add_commands

    add_commands(cli)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_survival") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
