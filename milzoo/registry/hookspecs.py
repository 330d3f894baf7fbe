"""The hooks a milzoo plugin implements.

Each hook receives a ``register`` callback; call it once per component class::

    from milzoo import hookimpl

    @hookimpl
    def milzoo_register_poolings(register):
        from my_plugin.pooling import MyPooling   # import inside the hook: keeps start-up fast
        register(MyPooling)                       # or register(MyPooling, name="x", aliases=["y"])

A plugin implements only the hooks it needs, and a hook implementation may
accept fewer arguments than the spec (pluggy allows it), so new keyword
arguments can be added here without breaking old plugins.

Each ``milzoo_register_*`` hook feeds one kind of a provider table: its row (the hook's name and what the kind
accepts) sits in :mod:`milzoo.registry._table` for components and pretrained entries, and in
:mod:`milzoo.recipe.book` for shipped recipes.
"""

from __future__ import annotations

import pluggy

PROJECT = "milzoo"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def milzoo_register_encoders(register):
    """Register :class:`milzoo.components.base.Encoder` subclasses."""


@hookspec
def milzoo_register_poolings(register):
    """Register :class:`milzoo.components.base.Pooling` subclasses."""


@hookspec
def milzoo_register_losses(register):
    """Register :class:`milzoo.components.base.Loss` subclasses."""


@hookspec
def milzoo_register_datasets(register):
    """Register :class:`milzoo.components.base.DatasetSource` subclasses."""


@hookspec
def milzoo_register_augmentations(register):
    """Register :class:`milzoo.components.base.Augment` subclasses."""


@hookspec
def milzoo_register_tasks(register):
    """Register :class:`milzoo.components.Task` subclasses (what a label is: docs/tasks.md)."""


@hookspec
def milzoo_register_loggers(register):
    """Register :class:`milzoo.components.Logger` subclasses (experiment loggers: docs/tracking.md)."""


@hookspec
def milzoo_register_pretrained(register):
    """Register pretrained-model entries (see :mod:`milzoo.hub.pretrained`)."""


@hookspec
def milzoo_register_downloads(register):
    """Register :class:`milzoo.components.Download` entries: what ``milzoo data fetch NAME`` gets ahead of time."""


@hookspec
def milzoo_register_converters(register):
    """Register :class:`milzoo.components.Converter` subclasses: formats of other toolkits' weights that
    ``milzoo convert FORMAT SOURCE OUT_DIR`` turns into a milzoo Hub folder (docs/hub.md)."""


@hookspec
def milzoo_register_recipes(register):
    """Register shipped recipe files: ``register(files("pkg") / "recipes")`` (see :mod:`milzoo.recipe.book`)."""


@hookspec
def milzoo_model_sharing():
    """Return the :class:`milzoo.model.sharing.ModelSharing` behind ``model.save_pretrained``,
    ``MILModel.from_pretrained`` and ``model.push_to_hub``.

    Not a hook for plugins: :mod:`milzoo.model` declares the contract and milzoo's built-ins (:mod:`milzoo.builtin`)
    implement it with :mod:`milzoo.hub`, which sits above the model layer (docs/architecture.md, "Which way the
    model API depends").  Only the built-ins' implementation is used; a plugin's is ignored with a warning, since
    it would decide how untrusted folders are loaded (docs/security.md).
    """


@hookspec
def milzoo_register_commands(cli):
    """Add click commands or groups to the ``milzoo`` command line (``cli.add_command(...)``)."""

