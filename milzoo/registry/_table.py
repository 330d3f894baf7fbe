"""The component table: encoders, poolings, losses, datasets, augments, tasks, loggers, pretrained entries,
downloads and converters by name.

``get_component(kind, name)`` gives the class (or the pretrained entry) registered as ``name`` or
``"distribution:name"``; the rules for contested and unknown names are those of every provider table
(:mod:`milzoo.registry._providers`).  A new kind is a hook in :mod:`milzoo.registry.hookspecs` and a row
in :data:`ROWS`, nothing else.
"""

from __future__ import annotations

from typing import Any

from milzoo.registry._checks import component_kind, converter_kind, stage_download, stage_pretrained
from milzoo.registry._messages import Wording
from milzoo.registry._providers import (
    NAME_PATTERN,
    Entry,
    Kind,
    ProviderTable,
    building,
    canonical,
    recorded_providers,
    split_qualified,
)

__all__ = [
    "ALL_KINDS", "COMPONENTS", "HOOK_KINDS", "NAME_PATTERN", "ROWS", "Entry", "ambiguous_message", "canonical",
    "conflicts", "entries", "get_component", "get_entry", "list_components", "names", "providers",
    "provenance_of", "qualified_unknown_message", "recorded_providers", "split_qualified", "unknown_name_message",
]

#: one row per kind: its name, the hook that registers it, and what it accepts
ROWS = (
    component_kind("encoder", "milzoo_register_encoders"),
    component_kind("pooling", "milzoo_register_poolings"),
    component_kind("loss", "milzoo_register_losses"),
    component_kind("dataset", "milzoo_register_datasets"),
    component_kind("augment", "milzoo_register_augmentations"),
    component_kind("task", "milzoo_register_tasks"),
    component_kind("logger", "milzoo_register_loggers"),
    Kind("pretrained", "milzoo_register_pretrained", stage=stage_pretrained, wording=Wording("pretrained model")),
    Kind("download", "milzoo_register_downloads", stage=stage_download, wording=Wording("download")),
    converter_kind(),
)
COMPONENTS = ProviderTable(ROWS, what="component")
ALL_KINDS = tuple(COMPONENTS.rows)
#: hook name -> kind
HOOK_KINDS = {row.hook: row.name for row in ROWS}


def names(kind: str) -> list[str]:
    """Canonical names registered for ``kind`` (aliases excluded), sorted; a contested name appears once."""
    return COMPONENTS.names(kind)


def entries(kind: str) -> list[Entry]:
    """Every registration of ``kind`` (one per provider of a contested name), sorted by name and distribution."""
    return COMPONENTS.entries(kind)


def providers(kind: str, name: str) -> list[Entry]:
    """The registrations of the bare ``name`` (or alias): one normally, several when it is contested."""
    return COMPONENTS.providers(kind, name)


def conflicts() -> list[tuple[str, str, list[Entry]]]:
    """``(kind, name, providers)`` for every name (or alias) that more than one distribution registers."""
    return COMPONENTS.conflicts()


def get_entry(kind: str, name: str) -> Entry:
    """The registration of ``name`` or ``"distribution:name"``; ambiguous bare names raise."""
    return COMPONENTS.get(kind, name)


def get_component(kind: str, name: str) -> Any:
    """The class (or pretrained entry) registered as ``name`` or ``"distribution:name"``."""
    return COMPONENTS.get(kind, name).obj


def list_components(kind: str | None = None, pattern: str = "*") -> list[dict[str, Any]]:
    """Descriptions of registered components, optionally of one kind and matching a glob."""
    kinds = [kind] if kind else list(ALL_KINDS)
    return [e.describe() for k in kinds for e in COMPONENTS.entries(k, pattern)]


def ambiguous_message(kind: str, name: str, found: list[Entry]) -> str:
    return COMPONENTS.ambiguous_message(kind, name, found)


def unknown_name_message(kind: str, name: str) -> str:
    return COMPONENTS.unknown_message(kind, name)


def qualified_unknown_message(kind: str, dist: str, name: str, found: list[Entry]) -> str:
    return COMPONENTS.qualified_unknown_message(kind, dist, name, found)


def provenance_of(cls: Any) -> dict[str, str]:
    """``{"plugin", "distribution", "version"}`` of a registered component class, running the hooks if need be.

    The same as ``cls.provenance`` (:class:`milzoo.components.base.Component` asks here).  A class that is not
    registered itself (a subclass of a registered one included) gives ``{}``; while the plugins are being loaded
    or the table built (a plugin asking from its hook), the table is not built again: what is known so far.
    """
    if not building():
        for kind in ALL_KINDS:  # building one kind builds the whole table
            COMPONENTS.names(kind)
            break
    own = vars(cls).get("_milzoo_provenance") if isinstance(cls, type) else None
    return dict(own) if own else {}
