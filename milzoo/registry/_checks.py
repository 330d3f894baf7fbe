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
    if name is not None:
        reg_name, source = name, "name="
    else:
        reg_name = obj.get("name") if isinstance(obj, Mapping) else getattr(obj, "name", None)
        source = "its `name`"
    if reg_name is None or reg_name == "":
        raise RegistrationError(f"a {kind} was registered without a name; give it a `name` or call "
                                "register(..., name=...)")
    if not isinstance(reg_name, str):
        raise RegistrationError(
            f"a {kind} was registered with {source} {reg_name!r} ({type(reg_name).__name__}); a registry name must "
            f"be a string ({NAME_RULE}), e.g. name={str(reg_name)!r}")
    if not NAME_PATTERN.fullmatch(reg_name):
        raise RegistrationError(f"{kind} name {reg_name!r} is not a valid registry name ({NAME_RULE}, no ':', no "
                                "spaces, tabs or line breaks); register it under a valid name")
    return reg_name, _aliases(kind, reg_name, aliases)


def _aliases(kind: str, reg_name: str, aliases: Any) -> tuple[str, ...]:
    """``aliases`` as a tuple of valid names; a bare string (``aliases="xyz"``) is refused, not split into letters."""
    if aliases is None:
        return ()
    if isinstance(aliases, (str, bytes)):
        raise RegistrationError(
            f"{kind} {reg_name!r} was registered with aliases={aliases!r}, a single string; aliases must be a list "
            f"of names: write aliases=[{aliases!r}]")
    try:
        found = tuple(aliases)
    except TypeError:
        raise RegistrationError(
            f"{kind} {reg_name!r} was registered with aliases={aliases!r} ({type(aliases).__name__}); aliases must "
            "be a list of names, e.g. aliases=['other_name']") from None
    for alias in found:
        if not isinstance(alias, str) or not NAME_PATTERN.fullmatch(alias):
            raise RegistrationError(f"{kind} {reg_name!r} has an invalid alias {alias!r}: an alias must be a string "
                                    f"of {NAME_RULE} (no ':', spaces or line breaks)")
    return found


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
    # read through Component.provenance, which a subclass does not inherit (it is not registered itself)
    entry.obj._milzoo_provenance = {"plugin": entry.plugin, "distribution": entry.distribution,
                                    "version": entry.version}


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


def stage_converter(obj: Any, name: str | None = None, aliases: Any = ()) -> Staged:
    """A converter (``milzoo convert NAME``): a subclass of :class:`milzoo.components.Converter` with a valid ``Config``."""
    from milzoo.components.converter import Converter

    return _stage_component("converter", Converter, obj, name, aliases)


def converter_kind() -> Kind:
    """The row of converters: staged like a component, and each class learns its name and provenance."""
    return Kind("converter", "milzoo_register_converters", stage=stage_converter, adopt=_adopt_component)


def stage_download(obj: Any, name: str | None = None, aliases: Any = ()) -> Staged:
    """A download entry (``milzoo data fetch NAME``): a :class:`milzoo.components.Download`."""
    from milzoo.components.download import Download

    reg_name, aliases = _named("download", obj, name, aliases)
    if not isinstance(obj, Download):
        raise RegistrationError(f"download {reg_name!r} is a {type(obj).__name__}, not a milzoo.components.Download; "
                                "register Download(name=..., summary=..., fetch=..., destination=...)")
    if not (callable(obj.fetch) and callable(obj.destination)) or not isinstance(obj.summary, str):
        raise RegistrationError(f"download {reg_name!r} needs callable `fetch` and `destination` and a `summary` "
                                "string")
    return [(reg_name, obj, aliases)]
