"""The registry: plugin hooks, the plugin manager and the provider tables of names.

``hookspecs`` holds the hooks a plugin implements; every encoder, pooling, loss, dataset, augment, pretrained
entry and shipped recipe is registered through them, built-ins included, and looked up by name or by
``distribution:name``.  ``_manager`` loads the plugins and keeps their records, ``_providers`` is the one
provider table (``_table`` holds its rows for components and pretrained entries; ``milzoo.recipe.book`` those
for recipes), ``_provenance`` says which distribution a run or checkpoint recorded.

``reset()`` forgets the built tables (after registering a plugin by hand); ``forget_plugin(key)`` unregisters one
plugin registered by hand and drops its record; ``reset_plugins()`` also forgets the plugin manager, so the next
use discovers the plugins afresh.  ``milzoo.testing.registered_plugins`` wraps the by-hand registration for tests.
"""

from milzoo._lazy import attach

_EXPORTS = {
    # hookspecs
    "PROJECT": "hookspecs", "hookspec": "hookspecs", "hookimpl": "hookspecs",
    # _manager
    "ENTRY_POINT_GROUP": "_manager", "DEFAULT_PLUGINS": "_manager", "PluginRecord": "_manager",
    "canonical_distribution": "_manager", "get_plugin_manager": "_manager", "plugin_records": "_manager",
    "record_for": "_manager", "record_failure": "_manager", "plugin_distribution": "_manager",
    "failed_plugins": "_manager", "reset_plugins": "_manager", "forget_plugin": "_manager",
    # errors
    "RegistrationError": "milzoo.errors", "PluginConflictError": "milzoo.errors",
    # _providers
    "NAME_PATTERN": "_providers", "Entry": "_providers", "Kind": "_providers", "ProviderTable": "_providers",
    "canonical": "_providers", "split_qualified": "_providers", "recorded_providers": "_providers",
    "missing_provider_text": "_providers", "reset": "_providers",
    # _messages
    "Wording": "_messages",
    # _table
    "ALL_KINDS": "_table", "HOOK_KINDS": "_table", "ROWS": "_table", "COMPONENTS": "_table", "names": "_table",
    "entries": "_table", "providers": "_table", "conflicts": "_table", "ambiguous_message": "_table",
    "get_entry": "_table", "get_component": "_table", "qualified_unknown_message": "_table",
    "unknown_name_message": "_table", "list_components": "_table", "provenance_of": "_table",
    # _provenance
    "installed_version": "_provenance", "from_checkpoint_config": "_provenance", "from_run_dir": "_provenance",
    "from_recipe_source": "_provenance",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
