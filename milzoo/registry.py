"""The name -> component registry, filled through the plugin hooks.

``get_component(kind, name)`` gives the class; unknown names raise
:class:`~milzoo.errors.UnknownComponentError` with "did you mean" suggestions
and, when some plugin failed to load, that plugin's stored error.
"""

from __future__ import annotations

import difflib
import fnmatch
import threading
from dataclasses import dataclass, field
from typing import Any

from milzoo.components import KINDS, ComponentConfig
from milzoo.errors import UnknownComponentError

ALL_KINDS = (*KINDS.keys(), "pretrained")


@dataclass
class Entry:
    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str
    aliases: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        summary = getattr(self.obj, "summary", None)  # pretrained entries describe themselves
        doc = (summary if isinstance(summary, str) else (getattr(self.obj, "__doc__", None) or "")).strip().splitlines()
        return {
            "kind": self.kind,
            "name": self.name,
            "aliases": self.aliases,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "summary": doc[0] if doc else "",
        }


class RegistrationError(Exception):
    pass


_lock = threading.RLock()
_entries: dict[str, dict[str, Entry]] | None = None  # kind -> name/alias -> Entry


def _reset() -> None:
    global _entries
    with _lock:
        _entries = None


def _check_component(kind: str, obj: Any, name: str) -> None:
    if kind == "pretrained":
        return
    base = KINDS[kind]
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise RegistrationError(f"{kind} {name!r} must be a subclass of milzoo.components.{base.__name__}")
    cfg = getattr(obj, "Config", None)
    if not (isinstance(cfg, type) and issubclass(cfg, ComponentConfig)):
        raise RegistrationError(f"{kind} {name!r} needs a Config subclass of milzoo.components.ComponentConfig")


def _build() -> dict[str, dict[str, Entry]]:
    from milzoo import hookspecs, plugins

    pm = plugins.get_plugin_manager()
    table: dict[str, dict[str, Entry]] = {k: {} for k in ALL_KINDS}
    for hook_name, kind in hookspecs.HOOK_KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order: built-ins first, so the first name wins
            dist, version = plugins.plugin_distribution(impl.plugin_name)
            staged: list[Entry] = []

            def register(obj, name=None, aliases=(), _staged=staged, _kind=kind, _impl=impl,
                         _dist=dist, _ver=version):
                reg_name = name or getattr(obj, "name", "")
                if not reg_name:
                    raise RegistrationError(f"a {_kind} registered by {_impl.plugin_name} has no name")
                _check_component(_kind, obj, reg_name)
                if _kind != "pretrained" and getattr(obj, "name", "") != reg_name:
                    obj.name = reg_name
                _staged.append(Entry(_kind, reg_name, obj, _impl.plugin_name, _dist, _ver, list(aliases)))

            try:
                impl.function(register=register) if "register" in impl.argnames else impl.function()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the rest
                plugins.record_failure(impl.plugin_name, exc)
                continue
            for entry in staged:
                for key in (entry.name, *entry.aliases):
                    if key in table[kind]:
                        other = table[kind][key]
                        plugins.record_failure(
                            impl.plugin_name,
                            RegistrationError(
                                f"{kind} name {key!r} is already registered by {other.plugin} "
                                f"({other.distribution}); rename it or uninstall one of them"
                            ),
                        )
                        continue
                    table[kind][key] = entry
                if kind != "pretrained":
                    entry.obj.provenance = {
                        "plugin": entry.plugin, "distribution": entry.distribution, "version": entry.version,
                    }
    return table


def _table() -> dict[str, dict[str, Entry]]:
    global _entries
    with _lock:
        if _entries is None:
            _entries = _build()
        return _entries


def _check_kind(kind: str) -> None:
    if kind not in ALL_KINDS:
        raise UnknownComponentError(
            f"unknown component kind {kind!r}; the kinds are: {', '.join(ALL_KINDS)}."
        )


def names(kind: str) -> list[str]:
    """Canonical names registered for ``kind`` (aliases excluded), sorted."""
    _check_kind(kind)
    return sorted({e.name for e in _table()[kind].values()})


def entries(kind: str) -> list[Entry]:
    _check_kind(kind)
    seen: dict[str, Entry] = {}
    for e in _table()[kind].values():
        seen.setdefault(e.name, e)
    return [seen[n] for n in sorted(seen)]


def get_entry(kind: str, name: str) -> Entry:
    _check_kind(kind)
    table = _table()[kind]
    if name in table:
        return table[name]
    raise UnknownComponentError(unknown_name_message(kind, name))


def get_component(kind: str, name: str) -> Any:
    """The class (or pretrained entry) registered as ``name``."""
    return get_entry(kind, name).obj


def unknown_name_message(kind: str, name: str) -> str:
    from milzoo import plugins

    known = sorted(_table()[kind].keys())
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    msg = f"unknown {kind} {name!r}."
    if close:
        msg += f" Did you mean {' or '.join(repr(c) for c in close)}?"
    msg += f" Known {kind}s: {', '.join(known) or '(none)'}."
    failed = plugins.failed_plugins()
    if failed:
        details = "; ".join(f"{r.name} ({r.distribution} {r.version}): {r.error}" for r in failed)
        msg += (
            f" Some plugins failed to load and may provide it: {details}. "
            "Fix or reinstall them (`milzoo plugins` shows their status)."
        )
    else:
        msg += " If it comes from a plugin, pip install that plugin (`milzoo plugins` lists those installed)."
    return msg


def list_components(kind: str | None = None, pattern: str = "*") -> list[dict[str, Any]]:
    """Descriptions of registered components, optionally of one kind and matching a glob."""
    kinds = [kind] if kind else list(ALL_KINDS)
    out = []
    for k in kinds:
        for e in entries(k):
            if fnmatch.fnmatch(e.name, pattern):
                out.append(e.describe())
    return out
