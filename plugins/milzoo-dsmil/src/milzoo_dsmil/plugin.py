"""Hook implementations: how DSMIL registers itself with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_dsmil.pooling import DSMILPooling

    register(DSMILPooling)


@hookimpl
def milzoo_register_losses(register):
    from milzoo_dsmil.loss import DSMILLoss

    register(DSMILLoss)
