"""What each kind of the component table accepts: the ``stage`` and ``adopt`` of its :class:`Kind` row.

A component kind accepts subclasses of its base in :mod:`milzoo.components.base` that bring a valid
``Config``; once its plugin's hook has succeeded, the class learns its registry name and provenance.  A
pretrained entry is data: the registry checks its name and that it has the fields every entry has; the hub
parses the rest when the entry is used (:mod:`milzoo.hub.pretrained`), so the registry stays below the hub.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from pydantic import ValidationError

from milzoo.components.base import KINDS, ComponentConfig
from milzoo.errors import RegistrationError
from milzoo.registry._providers import NAME_PATTERN, NAME_RULE, Entry, Kind, Staged

#: the fields without which nothing can be said about a pretrained entry
_PRETRAINED_FIELDS = ("repo_id", "recipe")


def _named(kind: str, obj: Any, name: Any, aliases: Any) -> tuple[str, tuple[str, ...]]:
    """The registry name (``name=`` or the object's own) and the aliases, both checked."""
    reg_name = name or (obj.get("name") if isinstance(obj, Mapping) else getattr(obj, "name", ""))
    if not reg_name or not isinstance(reg_name, str):
        raise RegistrationError(f"a {kind} was registered without a name; give it a `name` or call "
                                "register(..., name=...)")
    if not NAME_PATTERN.match(reg_name):
        raise RegistrationError(f"{kind} name {reg_name!r} is not a valid registry name ({NAME_RULE}, no ':')")
    aliases = tuple(aliases or ())
    for alias in aliases:
        if not isinstance(alias, str) or not NAME_PATTERN.match(alias):
            raise RegistrationError(f"{kind} {reg_name!r} has an invalid alias {alias!r}")
    return reg_name, aliases


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
            fields = cfg.model_fields
            shown = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])} = "
                f"{fields[e['loc'][0]].get_default(call_default_factory=True)!r}: {e['msg']}" for e in bad[:5])
            raise RegistrationError(
                f"{kind} {name!r} has a Config default that breaks its own bounds ({shown}); the plugin is "
                "broken: fix the default or the bound (report it to the plugin's author)"
            ) from None


def _stage_component(kind: str, base: type, obj: Any, name: str | None = None, aliases: Any = ()) -> Staged:
    reg_name, aliases = _named(kind, obj, name, aliases)
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise RegistrationError(f"{kind} {reg_name!r} must be a subclass of milzoo.components.{base.__name__}")
    cfg = getattr(obj, "Config", None)
    if not (isinstance(cfg, type) and issubclass(cfg, ComponentConfig)):
        raise RegistrationError(
            f"{kind} {reg_name!r} needs a Config subclass of milzoo.components.base.ComponentConfig")
    _check_defaults(kind, reg_name, cfg)
    return [(reg_name, obj, aliases)]


def _adopt_component(entry: Entry) -> None:
    """The class learns the name it is registered under and who provides it."""
    if getattr(entry.obj, "name", "") != entry.name:
        entry.obj.name = entry.name
    entry.obj.provenance = {"plugin": entry.plugin, "distribution": entry.distribution, "version": entry.version}


def component_kind(kind: str, hook: str) -> Kind:
    """The row of a component kind: subclasses of ``milzoo.components.base.KINDS[kind]``, registered by ``hook``."""
    return Kind(kind, hook, stage=partial(_stage_component, kind, KINDS[kind]), adopt=_adopt_component)


def stage_pretrained(obj: Any, name: str | None = None, aliases: Any = ()) -> Staged:
    """A pretrained entry: a :class:`milzoo.hub.pretrained.PretrainedEntry`, or the mapping of its fields."""
    reg_name, aliases = _named("pretrained", obj, name, aliases)
    has = (lambda f: f in obj) if isinstance(obj, Mapping) else (lambda f: getattr(obj, f, None) is not None)
    missing = [f for f in _PRETRAINED_FIELDS if not has(f)]
    if missing:
        raise RegistrationError(f"pretrained {reg_name!r} is not a pretrained entry (it has no {', '.join(missing)}); "
                                "register a milzoo.hub.pretrained.PretrainedEntry")
    return [(reg_name, obj, aliases)]
