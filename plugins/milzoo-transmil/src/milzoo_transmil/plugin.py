"""Hook implementations: how TransMIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_transmil.pooling import TransMILPooling

    register(TransMILPooling)
