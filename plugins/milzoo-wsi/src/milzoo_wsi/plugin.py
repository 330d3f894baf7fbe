"""Hook implementations: the ``slides`` dataset source and the ``features``/``localize`` commands."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_datasets(register):
    from milzoo_wsi.dataset import SlidesSource

    register(SlidesSource)


@hookimpl
def milzoo_register_commands(cli):
    from milzoo_wsi.commands import add_commands

    add_commands(cli)
