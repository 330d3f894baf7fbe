"""Hook implementations: how this plugin registers its components with milzoo.

milzoo loads this module through the entry point in ``pyproject.toml``
(group ``milzoo``) and calls every ``milzoo_register_*`` hook it defines with a
``register`` callback.  Import the classes inside the hook so that listing
plugins stays fast and an import error is reported against this plugin only.
"""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_example_pooling.pooling import LSEPooling

    register(LSEPooling)  # or register(LSEPooling, name="lse", aliases=["logsumexp"])
