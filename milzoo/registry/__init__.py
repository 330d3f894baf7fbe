"""The registry: plugin hooks, the plugin manager and the one provider table of names.

``hookspecs`` holds the hooks a plugin implements; every encoder, pooling, loss, dataset, augment, pretrained
entry and shipped recipe is registered through them, built-ins included, and looked up here by name or by
``distribution:name``.
"""

from milzoo._lazy import attach

_EXPORTS = {
    # hookspecs
    "PROJECT": "hookspecs", "hookspec": "hookspecs", "hookimpl": "hookspecs", "HOOK_KINDS": "hookspecs",
    # _manager
    "ENTRY_POINT_GROUP": "_manager", "DEFAULT_PLUGINS": "_manager", "PluginRecord": "_manager",
    "canonical_distribution": "_manager", "PluginConflictError": "_manager", "get_plugin_manager": "_manager",
    "plugin_records": "_manager", "record_for": "_manager", "record_failure": "_manager",
    "plugin_distribution": "_manager", "failed_plugins": "_manager", "reset_plugins": "_manager",
    # _table
    "ALL_KINDS": "_table", "NAME_PATTERN": "_table", "Entry": "_table", "RegistrationError": "_table",
    "canonical": "_table", "names": "_table", "entries": "_table", "providers": "_table", "conflicts": "_table",
    "split_qualified": "_table", "ambiguous_message": "_table", "get_entry": "_table", "get_component": "_table",
    "qualified_unknown_message": "_table", "unknown_name_message": "_table", "recorded_providers": "_table",
    "list_components": "_table",
    # _provenance
    "installed_version": "_provenance", "missing_provider_text": "_provenance",
    "from_checkpoint_config": "_provenance", "from_run_dir": "_provenance", "from_recipe_source": "_provenance",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
