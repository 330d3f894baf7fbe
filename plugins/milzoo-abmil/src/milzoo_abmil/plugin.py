"""Hook implementations: how ABMIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_abmil.pooling import ABMILPooling

    register(ABMILPooling)
