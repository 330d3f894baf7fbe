"""Checks of every kind: the ``Config`` (defaults, round trips, unknown keys, the None-default rule)."""

from __future__ import annotations

import json
import tomllib

from pydantic import ValidationError

from milzoo.components.base import ComponentConfig
from milzoo.testing._core import ComponentSpec, _UNKNOWN_KEY, register_check, fail


@register_check("encoder", "pooling", "loss", "augment", "task")
def check_config(spec: ComponentSpec) -> None:
    """Metadata, default Config, dump/JSON/TOML round trips and rejection of unknown keys."""
    import tomli_w

    cls = spec.cls
    if not (isinstance(getattr(cls, "name", None), str) and cls.name):
        fail(spec, "the class needs a registry `name` (a non-empty string class attribute)")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, ComponentConfig)):
        fail(spec, "Config must subclass milzoo.components.base.ComponentConfig")
    if not (cls.__doc__ or "").strip():
        fail(spec, "the class needs a docstring (its first line is the summary `milzoo list` shows)")
    try:
        default = cls.Config()
    except ValidationError as exc:
        fail(spec, f"the default Config does not validate; every option needs a working default ({exc})")
    try:
        cfg = spec.config()
    except ValidationError as exc:
        fail(spec, f"the options {spec.options} do not validate ({exc})")
    for label, c in (("default", default), ("given", cfg)):
        again = cls.Config.model_validate(c.model_dump())
        if again != c:
            fail(spec, f"{label} Config: model_validate(model_dump()) gives {again!r}, not {c!r}")
        as_json = c.model_dump(mode="json")
        try:
            json.dumps(as_json)
        except TypeError as exc:
            fail(spec, f"{label} Config: model_dump(mode='json') is not JSON-able ({exc})")
        if cls.Config.model_validate(as_json) != c:
            fail(spec, f"{label} Config does not survive a JSON round trip (checkpoint config.json)")
        # what a run directory's recipe.toml stores: JSON values without None, through TOML
        stored = c.model_dump(mode="json", exclude_none=True)
        try:
            back = tomllib.loads(tomli_w.dumps({"t": stored}))["t"]
        except Exception as exc:  # noqa: BLE001
            fail(spec, f"{label} Config cannot be written to TOML ({type(exc).__name__}: {exc})")
        if cls.Config.model_validate(back) != c:
            fail(
                spec,
                f"{label} Config does not survive the recipe round trip (JSON dump without None values, "
                "through TOML), so a resumed run would differ; an option whose default is not None must not "
                "accept None",
            )
    _check_none_defaults(spec)
    try:
        cls.Config.model_validate({**spec.options, _UNKNOWN_KEY: 1})
    except ValidationError:
        pass
    else:
        fail(spec, "Config accepts unknown keys; subclass ComponentConfig (extra='forbid') without overriding it")


def _check_none_defaults(spec: ComponentSpec) -> None:
    """The documented rule: an option whose default is not None must not accept None.

    Recipes and checkpoints store options without None values, so an explicit ``None`` would silently turn
    into the default on ``--resume`` or when a checkpoint is loaded.
    """
    cls = spec.cls
    for fname, f in cls.Config.model_fields.items():
        if f.is_required():
            continue
        default = f.get_default(call_default_factory=True)
        if default is None:
            continue
        try:
            got = cls.Config.model_validate({**spec.options, fname: None})
        except ValidationError:
            continue
        if getattr(got, fname, default) is None:
            fail(spec, f"option {fname!r} has the default {default!r} but accepts None; recipes and checkpoints "
                        f"store options without None values, so None would come back as {default!r} on --resume "
                        f"and in a loaded checkpoint. Drop `| None` from its type, or make None its default")
