"""The name -> component registry, filled through the plugin hooks.

``get_component(kind, name)`` gives the class.  Every registration is kept
with the distribution that provides it, so two distributions may register the
same name without either one hiding the other:

- a bare name with exactly one provider resolves to it;
- a bare name with several providers raises
  :class:`~milzoo.errors.AmbiguousComponentError` naming all of them (the
  order of installation or of entry-point names never decides);
- the qualified form ``"distribution:name"`` (``"milzoo-abmil:abmil"``,
  ``"milzoo:mean"`` for a built-in) always resolves to that provider.

Unknown names raise :class:`~milzoo.errors.UnknownComponentError` with "did you
mean" suggestions and, when some plugin failed to load, that plugin's stored
error.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import fnmatch
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from pydantic import ValidationError

from milzoo.components.base import KINDS, ComponentConfig
from milzoo.errors import AmbiguousComponentError, UnknownComponentError

ALL_KINDS = (*KINDS.keys(), "pretrained")
#: what a registry name may look like (no ":", which separates the distribution)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class Entry:
    kind: str
    name: str
    obj: Any
    plugin: str  # entry-point name
    distribution: str
    version: str
    aliases: list[str] = field(default_factory=list)
    key: str = ""  # the plugin manager's name of the plugin

    @property
    def qualified(self) -> str:
        return f"{self.distribution}:{self.name}"

    def describe(self) -> dict[str, Any]:
        summary = getattr(self.obj, "summary", None)  # pretrained entries describe themselves
        doc = (summary if isinstance(summary, str) else (getattr(self.obj, "__doc__", None) or "")).strip().splitlines()
        return {
            "kind": self.kind,
            "name": self.name,
            "qualified": self.qualified,
            "aliases": self.aliases,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "summary": doc[0] if doc else "",
            "conflicts": [e.distribution for e in _conflicting(self)],
        }


class RegistrationError(Exception):
    pass


_lock = threading.RLock()
_entries: dict[str, dict[str, list[Entry]]] | None = None  # kind -> name/alias -> providers
#: (kind, name) -> (distribution, version) recorded by a run directory or checkpoint being read
_recorded: contextvars.ContextVar[dict[tuple[str, str], tuple[str, str]]] = contextvars.ContextVar(
    "milzoo_recorded_providers", default={}
)


def _reset() -> None:
    global _entries
    with _lock:
        _entries = None


def canonical(dist: str) -> str:
    from milzoo.registry._manager import canonical_distribution

    return canonical_distribution(dist)


def _check_defaults(kind: str, name: str, cfg: type[ComponentConfig]) -> None:
    """Every field default must satisfy the field's own type and bounds (pydantic does not check defaults)."""
    defaults = {n for n, f in cfg.model_fields.items() if not f.is_required()}
    if not defaults:
        return
    strict = type(f"{cfg.__name__}DefaultsCheck", (cfg,),
                  {"model_config": {**cfg.model_config, "validate_default": True}, "__module__": cfg.__module__})
    try:
        strict.model_validate({})
    except ValidationError as exc:
        bad = [e for e in exc.errors(include_url=False)
               if e["type"] != "missing" and e["loc"] and e["loc"][0] in defaults]
        if bad:
            shown = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])} = {cfg.model_fields[e['loc'][0]].get_default(call_default_factory=True)!r}: {e['msg']}"
                for e in bad[:5]
            )
            raise RegistrationError(
                f"{kind} {name!r} has a Config default that breaks its own bounds ({shown}); the plugin is "
                "broken: fix the default or the bound (report it to the plugin's author)"
            ) from None


def _check_component(kind: str, obj: Any, name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise RegistrationError(
            f"{kind} name {name!r} is not a valid registry name (letters, digits and . _ + -, no ':')"
        )
    if kind == "pretrained":
        return
    base = KINDS[kind]
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise RegistrationError(f"{kind} {name!r} must be a subclass of milzoo.components.{base.__name__}")
    cfg = getattr(obj, "Config", None)
    if not (isinstance(cfg, type) and issubclass(cfg, ComponentConfig)):
        raise RegistrationError(f"{kind} {name!r} needs a Config subclass of milzoo.components.base.ComponentConfig")
    _check_defaults(kind, name, cfg)


def _build() -> dict[str, dict[str, list[Entry]]]:
    from milzoo.registry import hookspecs
    from milzoo.registry import _manager as plugins

    pm = plugins.get_plugin_manager()
    for rec in plugins.plugin_records():  # a rebuild (registry._reset) starts these lists afresh
        rec.components.clear()
        rec.conflicts.clear()
    table: dict[str, dict[str, list[Entry]]] = {k: {} for k in ALL_KINDS}
    for hook_name, kind in hookspecs.HOOK_KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            dist, version = plugins.plugin_distribution(impl.plugin_name)
            rec = plugins.record_for(impl.plugin_name)
            ep_name = rec.name if rec is not None else impl.plugin_name
            staged: list[Entry] = []

            def register(obj, name=None, aliases=(), _staged=staged, _kind=kind, _impl=impl,
                         _dist=dist, _ver=version, _ep=ep_name):
                reg_name = name or getattr(obj, "name", "")
                if not reg_name or not isinstance(reg_name, str):
                    raise RegistrationError(f"a {_kind} registered by {_impl.plugin_name} has no name")
                _check_component(_kind, obj, reg_name)
                for alias in aliases:
                    if not isinstance(alias, str) or not NAME_PATTERN.match(alias):
                        raise RegistrationError(f"{_kind} {reg_name!r} has an invalid alias {alias!r}")
                if _kind != "pretrained" and getattr(obj, "name", "") != reg_name:
                    obj.name = reg_name
                _staged.append(Entry(_kind, reg_name, obj, _ep, _dist, _ver, list(aliases), _impl.plugin_name))

            try:
                impl.function(register=register) if "register" in impl.argnames else impl.function()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the rest
                plugins.record_failure(impl.plugin_name, exc)
                continue
            for entry in staged:
                for key in dict.fromkeys((entry.name, *entry.aliases)):
                    providers = table[kind].setdefault(key, [])
                    same = [p for p in providers if canonical(p.distribution) == canonical(entry.distribution)]
                    if same:  # one distribution registering a name twice is that plugin's own bug
                        plugins.record_failure(
                            impl.plugin_name,
                            RegistrationError(
                                f"{kind} name {key!r} is already registered by {same[0].plugin} of the same "
                                f"distribution ({entry.distribution}); rename one of them"
                            ),
                        )
                        continue
                    providers.append(entry)
                if rec is not None:
                    rec.components.append(f"{kind}:{entry.name}")
                if kind != "pretrained":
                    entry.obj.provenance = {
                        "plugin": entry.plugin, "distribution": entry.distribution, "version": entry.version,
                    }
    for kind, names_ in table.items():
        for key, providers in names_.items():
            if len(providers) > 1:
                for p in providers:
                    rec = plugins.record_for(p.key)
                    if rec is not None:
                        rec.conflicts.append(f"{kind}:{key}")
    return table


def _table() -> dict[str, dict[str, list[Entry]]]:
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


def _conflicting(entry: Entry) -> list[Entry]:
    """The other providers of any of ``entry``'s names."""
    out: list[Entry] = []
    for key in (entry.name, *entry.aliases):
        for p in _table()[entry.kind].get(key, []):
            if p is not entry and p not in out:
                out.append(p)
    return out


def names(kind: str) -> list[str]:
    """Canonical names registered for ``kind`` (aliases excluded), sorted; a contested name appears once."""
    _check_kind(kind)
    return sorted({e.name for providers in _table()[kind].values() for e in providers})


def entries(kind: str) -> list[Entry]:
    """Every registration of ``kind`` (one per provider of a contested name), sorted by name and distribution."""
    _check_kind(kind)
    seen: dict[tuple[str, str], Entry] = {}
    for providers in _table()[kind].values():
        for e in providers:
            seen.setdefault((e.name, canonical(e.distribution)), e)
    return [seen[k] for k in sorted(seen)]


def providers(kind: str, name: str) -> list[Entry]:
    """The registrations of the bare ``name`` (or alias): one normally, several when it is contested."""
    _check_kind(kind)
    return list(_table()[kind].get(name, []))


def conflicts() -> list[tuple[str, str, list[Entry]]]:
    """``(kind, name, providers)`` for every name (or alias) that more than one distribution registers."""
    return [(kind, key, list(ps)) for kind in ALL_KINDS for key, ps in sorted(_table()[kind].items()) if len(ps) > 1]


def split_qualified(ref: str) -> tuple[str | None, str]:
    """``"dist:name"`` -> ``("dist", "name")``; a bare name -> ``(None, name)``."""
    dist, sep, name = ref.rpartition(":")
    return (dist, name) if sep else (None, ref)


def _describe_provider(e: Entry) -> str:
    return f"{e.distribution} {e.version} (entry point {e.plugin})" if e.distribution != "milzoo" \
        else f"milzoo {e.version} (built in)"


def ambiguous_message(kind: str, name: str, found: list[Entry]) -> str:
    listed = " and ".join(_describe_provider(e) for e in found)
    qualified = " or ".join(f'"{e.distribution}:{name}"' for e in found)
    others = [e.distribution for e in found if e.distribution != "milzoo"]
    return (
        f"{kind} {name!r} is provided by {len(found)} installed distributions: {listed}. milzoo does not pick one "
        f"by itself. Say which one you mean by qualifying the name (name = {qualified} in the recipe, or the same "
        f"string in Python), or remove the one you do not want (`pip uninstall {others[-1]}`, or "
        f"MILZOO_DISABLE_PLUGINS={others[-1]}). `milzoo plugins` lists every conflict."
    )


def get_entry(kind: str, name: str) -> Entry:
    """The registration of ``name`` or ``"distribution:name"``; ambiguous bare names raise."""
    _check_kind(kind)
    if not isinstance(name, str):
        raise UnknownComponentError(f"a {kind} name must be a string, not {type(name).__name__}.")
    dist, bare = split_qualified(name)
    found = _table()[kind].get(bare, [])
    if dist is None:
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise AmbiguousComponentError(ambiguous_message(kind, bare, found))
        raise UnknownComponentError(unknown_name_message(kind, bare))
    chosen = [e for e in found if canonical(e.distribution) == canonical(dist)]
    if chosen:
        return chosen[0]
    raise UnknownComponentError(qualified_unknown_message(kind, dist, bare, found))


def get_component(kind: str, name: str) -> Any:
    """The class (or pretrained entry) registered as ``name`` or ``"distribution:name"``."""
    return get_entry(kind, name).obj


def qualified_unknown_message(kind: str, dist: str, name: str, found: list[Entry]) -> str:
    from milzoo.registry import _provenance as provenance

    shown = provenance.shown(dist)
    if found:
        where = ", ".join(e.qualified for e in found)
        return (f"the distribution {shown} provides no {kind} {name!r}; installed providers of that name: {where}. "
                "Fix the distribution part of the name.")
    msg = f"unknown {kind} {dist}:{name}."
    return msg + " " + provenance.missing_provider_text(kind, name, dist, None)


def unknown_name_message(kind: str, name: str) -> str:
    from milzoo.registry import _manager as plugins
    from milzoo.registry import _provenance as provenance

    recorded = _recorded.get().get((kind, name))
    if recorded is not None and recorded[0] not in ("", "?"):
        dist, version = recorded
        return f"unknown {kind} {name!r}. " + provenance.missing_provider_text(kind, name, dist, version)
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


@contextlib.contextmanager
def recorded_providers(mapping: dict[tuple[str, str], tuple[str, str]]) -> Iterator[None]:
    """Within the block, an unknown ``(kind, name)`` found in ``mapping`` names its recorded distribution.

    Run directories and checkpoints record which distribution provided each
    component; after that distribution is uninstalled this turns "did you mean
    'mean'" into "install milzoo-abmil".
    """
    token = _recorded.set({**_recorded.get(), **mapping})
    try:
        yield
    finally:
        _recorded.reset(token)


def list_components(kind: str | None = None, pattern: str = "*") -> list[dict[str, Any]]:
    """Descriptions of registered components, optionally of one kind and matching a glob."""
    kinds = [kind] if kind else list(ALL_KINDS)
    out = []
    for k in kinds:
        for e in entries(k):
            if fnmatch.fnmatch(e.name, pattern):
                out.append(e.describe())
    return out
