"""Hook implementations: how PSMIL's components register themselves with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_psmil.pooling import PSAttPooling

    register(PSAttPooling)


@hookimpl
def milzoo_register_losses(register):
    from milzoo_psmil.loss import PSAliLoss

    register(PSAliLoss)
