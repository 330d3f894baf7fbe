"""Hook implementations: the ``slides`` dataset source."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_datasets(register):
    from milzoo_wsi.dataset import SlidesSource

    register(SlidesSource)
