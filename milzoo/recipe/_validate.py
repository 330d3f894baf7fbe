"""Validating a recipe: the root sections, then each component table against its component's ``Config``.

Validation happens in two layers, and every problem of both layers is reported
at once with its dotted path:

1. the recipe's own sections (``train``, ``optim``, ``schedule``, ``protocol``)
   against the pydantic models of :mod:`milzoo.recipe.schema`;
2. each component table (``data``, ``encoder``, ``pooling``, ``augment``,
   ``task``, ``loss[i]``, ``log[i]``) against the ``Config`` model of the component it names, so a
   third-party component brings its own schema.  Unknown names get "did you
   mean" suggestions.

:func:`load_recipe` reads a file, a URL or a shipped recipe's name (:mod:`milzoo.recipe.book`) first.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from milzoo.components.base import ComponentConfig
from milzoo.errors import RecipeError, UnknownComponentError
from milzoo.recipe._toml import apply_overrides, read_toml, value_problems
from milzoo.recipe.book import not_found_hint, resolve
from milzoo.recipe.schema import ComponentTable, ModelRecipeModel, RecipeModel
from milzoo.registry import _provenance as provenance
from milzoo.registry import _table as registry

__all__ = ["SECTION_KINDS", "Recipe", "load_recipe", "validate_recipe"]

#: recipe section -> the registry kind its ``name`` is looked up in
SECTION_KINDS = {"data": "dataset", "encoder": "encoder", "pooling": "pooling", "augment": "augment", "loss": "loss",
                 "task": "task", "log": "logger"}


class Recipe:
    """A validated recipe: the root sections plus each component's validated Config."""

    def __init__(self, root: RecipeModel, components: dict[str, Any], source: str):
        self.root = root
        self.components = components  # "data"/"encoder"/"pooling"/"augment"/"task" -> Config; "loss", "log" -> list
        self.source = source

    def __getattr__(self, item):
        return getattr(self.root, item)

    def component_configs(self) -> list[tuple[str, str, ComponentConfig]]:
        """``(registry kind, name, validated Config)`` of every component the recipe names, loggers included, in
        section order (``data``, ``encoder``, ``pooling``, ``augment``, ``task``, each ``loss``, each ``log``)."""
        out = []
        for key in ("data", "encoder", "pooling", "augment", "task"):
            table, config = getattr(self.root, key), self.components.get(key)
            if table is not None and config is not None:
                out.append((SECTION_KINDS[key], table.name, config))
        for key in ("loss", "log"):
            configs = self.components.get(key, [])
            out += [(SECTION_KINDS[key], t.name, c) for t, c in zip(getattr(self.root, key), configs)]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (defaults filled in), JSON/TOML-able."""
        d = self.root.model_dump(mode="json", exclude_none=True)
        for key in ("data", "encoder", "pooling", "augment", "task"):
            cfg = self.components.get(key)
            if cfg is not None:
                d[key] = {"name": getattr(self.root, key).name, **cfg.model_dump(mode="json", exclude_none=True)}
        if d.get("task") == {"name": "classification"}:
            del d["task"]  # the default: resolved recipes of classification runs read as they always did
        d["loss"] = [
            {"name": t.name, **c.model_dump(mode="json", exclude_none=True)}
            for t, c in zip(self.root.loss, self.components["loss"])
        ]
        d["log"] = [{"name": t.name, **c.model_dump(mode="json", exclude_none=True)}
                    for t, c in zip(self.root.log, self.components.get("log", []))]
        if not d["log"]:
            del d["log"]  # no loggers: resolved recipes read as they did before loggers existed
        return d

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# --------------------------------------------------------------------------- problems, with their paths


def _fields_at(model: type[BaseModel] | None, loc: list[str]) -> list[str]:
    """Field names of the (nested) model that holds the key at ``loc``."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model is not None else None
        ann = getattr(field, "annotation", None)
        # ``Section | None`` (an optional sub-table): look inside the union
        candidates = [ann, *typing.get_args(ann)]
        model = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


#: how pydantic names the member of a union in an error's location ("constrained-int", "literal['auto']")
_UNION_MEMBER = re.compile(r"^(constrained-\w+|literal\[.*\]|(int|float|str|bool|list|dict|tuple)(\[.*\])?)$")


def _pydantic_problems(
    err: ValidationError, prefix: str = "", fields: list[str] | None = None, model: type[BaseModel] | None = None
) -> list[str]:
    out: list[str] = []
    union_at: dict[str, int] = {}  # a value that fits no member of a union: one problem, every member's reason
    for e in err.errors(include_url=False):
        loc = [str(p) for p in e["loc"] if not str(p).startswith("function-")]
        if len(loc) > 1 and _UNION_MEMBER.match(loc[-1]) and e["type"] not in ("extra_forbidden", "missing"):
            where = ".".join([prefix, *loc[:-1]] if prefix else loc[:-1])
            if where in union_at:
                out[union_at[where]] += f"; or {e['msg'][0].lower()}{e['msg'][1:]}"
            else:
                union_at[where] = len(out)
                out.append(f"{where}: {e['msg']}")
            continue
        where = ".".join([prefix, *loc] if prefix else loc) or prefix or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not an option here)"
            options = fields if model is None else _fields_at(model, loc)
            close = difflib.get_close_matches(str(loc[-1]) if loc else "", options or [], n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
        elif e["type"] == "missing":
            msg = "required key is missing"
        out.append(f"{where}: {msg}")
    return out



def _validate_component(kind: str, table: ComponentTable, where: str, problems: list[str]) -> ComponentConfig | None:
    try:
        cls = registry.get_component(kind, table.name)
    except UnknownComponentError as exc:
        problems.append(f"{where}.name: {exc}")
        return None
    try:
        return cls.Config.model_validate(table.options())
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, where, list(cls.Config.model_fields)))
        return None


def validate_recipe(raw: dict[str, Any], source: str = "<recipe>", *, require_data: bool = True) -> Recipe:
    """Validate a recipe dictionary; raise :class:`RecipeError` listing every problem.

    ``require_data=False`` accepts a recipe without ``[data]`` (:class:`~milzoo.recipe.schema.ModelRecipeModel`:
    one read only to build a model, ``milzoo.create_model(recipe=...)``); its ``root.data`` is then None.
    """
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise RecipeError(source, [f"(root): a recipe is a TOML table, not {type(raw).__name__}"])
    value_problems(raw, "", problems)
    if problems:  # values that would make pydantic or torch fail with a raw overflow message
        raise RecipeError(source, problems)
    schema = RecipeModel if require_data else ModelRecipeModel
    try:
        root = schema.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, model=schema))
        # still validate the component tables we can read, to report everything at once
        root = None
    components: dict[str, Any] = {"loss": [], "log": []}
    tables: list[tuple[str, str, Any]] = []
    if root is not None:
        for key in ("data", "encoder", "pooling", "augment", "task"):
            t = getattr(root, key)
            if t is not None:
                tables.append((key, key, t))
        for i, t in enumerate(root.loss):
            tables.append(("loss", f"loss.{i}", t))
        for i, t in enumerate(root.log):
            tables.append(("log", f"log.{i}", t))
    else:
        for key in ("data", "encoder", "pooling", "augment", "task"):
            t = raw.get(key)
            if isinstance(t, dict) and isinstance(t.get("name"), str):
                tables.append((key, key, ComponentTable.model_validate(t)))
        for many in ("loss", "log"):
            listed = raw.get(many)
            for i, t in enumerate(listed if isinstance(listed, list) else []):
                if isinstance(t, dict) and isinstance(t.get("name"), str):
                    tables.append((many, f"{many}.{i}", ComponentTable.model_validate(t)))
    # a recipe.toml inside a run directory: unknown names say which recorded distribution to install
    recorded = provenance.from_recipe_source(source)
    for key, where, table in tables:
        with registry.recorded_providers(recorded):
            cfg = _validate_component(SECTION_KINDS[key], table, where, problems)
        if key in ("loss", "log"):
            components[key].append(cfg)
        else:
            components[key] = cfg
    if root is not None and components.get("task") is not None:
        problems.extend(_task_problems(root))
    if problems:
        raise RecipeError(source, problems)
    if "encoder" not in components:
        components["encoder"] = registry.get_component("encoder", "identity").Config()
    return Recipe(root, components, source)


def _task_problems(root: RecipeModel) -> list[str]:
    """What the protocol asks that the recipe's task cannot give: class votes and thresholds need classes."""
    task = registry.get_component("task", root.task.name)
    out = []
    if root.protocol.kind == "cv_ensemble" and not getattr(task, "classes", False):
        out.append(f"protocol.kind: cv_ensemble takes a majority vote of the folds' predicted classes, but the "
                   f"{task.name!r} task predicts no classes; use kind = \"cv\" (or \"holdout\").")
    if root.protocol.threshold == "youden" and not getattr(task, "thresholds", False):
        out.append(f"protocol.threshold: a Youden threshold splits two classes, but the {task.name!r} task has "
                   "none; remove the key (or set it to \"argmax\").")
    return out


def load_recipe(source: str | Path | dict[str, Any], overrides: list[str] | None = None, *,
                require_data: bool = True) -> Recipe:
    """Read (a path/URL, a shipped recipe's name or an already-parsed dict), apply overrides, validate
    (``require_data``: see :func:`validate_recipe`)."""
    if isinstance(source, dict):
        raw, name = source, "<dict>"
    elif (shipped := resolve(source)) is not None:  # a shipped recipe's name (`milzoo recipes`), not a file
        raw, name = shipped.load(), shipped.origin
    else:
        raw, name = read_toml(source, missing_hint=not_found_hint), str(source)
    return validate_recipe(apply_overrides(raw, overrides), name, require_data=require_data)
