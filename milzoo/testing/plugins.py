"""Plugins registered for the length of a test, as if they were installed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def registered_plugins(plugins: Mapping[str, object]) -> Iterator[None]:
    """Register each ``{name: plugin}`` (a module or an object with ``@hookimpl`` methods) with milzoo's plugin
    manager for the block, as an installed plugin's entry point would: lookups in the block see what they
    register, conflicts and refusals included.  Afterwards they are unregistered, the records made for them
    (a failure included) are dropped and the provider tables are rebuilt on the next lookup.

        with registered_plugins({"my-pooling": my_module}):
            run(recipe_using_my_pooling, out=tmp_path / "run")
    """
    from milzoo import registry

    pm = registry.get_plugin_manager()
    names = []
    try:
        for name, plugin in plugins.items():
            pm.register(plugin, name=name)
            names.append(name)
        registry.reset()
        yield
    finally:
        for name in names:
            registry.forget_plugin(name)
        registry.reset()
