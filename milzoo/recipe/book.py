"""Shipped recipes: TOML files that distributions install as package data and register by name.

A recipe ships with the distribution that provides its components: ``quickstart``
with milzoo itself, ``classic/abmil_musk1`` with milzoo-abmil, the PSMIL
benchmarks with milzoo-psmil, ``wsi/...`` with milzoo-wsi.  Each registers its
files through the ``milzoo_register_recipes`` hook, exactly as a third-party
plugin would (the core never imports a plugin)::

    from importlib.resources import files

    from milzoo import hookimpl

    @hookimpl
    def milzoo_register_recipes(register):
        register(files("milzoo_mything") / "recipes")        # every *.toml below, named by its path

A directory registers every ``*.toml`` below it under its relative path without
``.toml`` (``recipes/classic/abmil_musk1.toml`` -> ``classic/abmil_musk1``), so
in a checkout ``milzoo run recipes/X.toml`` and ``milzoo run X`` are the same
recipe.  A single file registers under its stem, or ``register(file, name=...)``.

Names follow the rule of every provider table (:mod:`milzoo.registry._providers`), which keeps them
here under the ``recipe`` kind: a bare name with one provider resolves to it; a bare name that two
distributions register is an error naming both; ``"distribution:name"`` always resolves to that provider.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from milzoo.errors import AmbiguousRecipeError, RecipeError, RecipeRegistrationError, UnknownRecipeError
from milzoo.recipe._toml import loads_toml
from milzoo.registry._messages import Wording, did_you_mean
from milzoo.registry._providers import Entry, Kind, ProviderTable, Staged, split_qualified

__all__ = [
    "NAME_PATTERN", "RECIPES", "AmbiguousRecipeError", "RecipeRegistrationError", "ShippedRecipe",
    "UnknownRecipeError", "ambiguous_message", "checkout_name", "conflicts", "get_recipe", "list_recipes", "names",
    "not_found_hint", "providers", "resolve", "unknown_message",
]

#: a recipe name: registry-name segments joined by "/" (no ":", which separates the distribution)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9][A-Za-z0-9._+-]*)*$")
_NAME_RULE = "letters, digits and . _ + - in '/'-separated parts, like 'quickstart' or 'classic/abmil_musk1'"
#: the checkout's path of a shipped recipe, which pip users see in docs and messages
_CHECKOUT_FORM = re.compile(r"^(?:\./)?recipes/(?P<name>.+)\.toml$")


class ShippedRecipe(Entry):
    """A recipe file installed by a distribution, under a name (its ``obj`` is the file)."""

    @property
    def resource(self) -> Any:
        """An importlib.resources Traversable (or a pathlib.Path) of the .toml file."""
        return self.obj

    @property
    def path(self) -> Path | None:
        """The file on disk (installed wheels and checkouts), or None inside a zip."""
        return self.resource if isinstance(self.resource, Path) else None

    @property
    def origin(self) -> str:
        """How errors and run records name it: the file's path, else ``distribution:name``."""
        return str(self.path) if self.path is not None else self.qualified

    def read_text(self) -> str:
        return self.resource.read_text(encoding="utf-8")

    def load(self) -> dict[str, Any]:
        """The parsed TOML, read through the size, depth and number limits of any recipe."""
        try:
            return loads_toml(self.read_text(), self.origin)
        except (RecipeError, UnicodeDecodeError) as exc:
            raise RecipeError(self.origin, [f"the shipped recipe {self.qualified} is broken ({exc}); report it "
                                            f"to the authors of {self.distribution}"]) from None

    def description(self) -> str:
        """The recipe's ``description`` key, else its first comment line."""
        try:
            text = self.read_text()
            value = tomllib.loads(text).get("description")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            return f"(unreadable: {type(exc).__name__})"
        if isinstance(value, str) and value.strip():
            return value.strip()
        for line in text.splitlines():
            if line.startswith("#") and line.lstrip("# ").strip():
                return line.lstrip("# ").strip()
        return ""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "qualified": self.qualified,
            "distribution": self.distribution,
            "version": self.version,
            "plugin": self.plugin,
            "path": str(self.path) if self.path is not None else None,
            "description": self.description(),
            "conflicts": [p.distribution for p in self.rivals],
        }


# --------------------------------------------------------------------------- registering


def _walk(resource: Any, prefix: str = ""):
    """``(relative name, file)`` for every ``*.toml`` below a directory, in a stable order."""
    for child in sorted(resource.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            yield from _walk(child, f"{prefix}{child.name}/")
        elif child.name.endswith(".toml") and child.is_file():
            yield f"{prefix}{child.name[:-len('.toml')]}", child


def _as_resource(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        return Path(source)
    if all(hasattr(source, a) for a in ("iterdir", "is_dir", "is_file", "read_text", "name")):
        return source
    raise RecipeRegistrationError(
        f"register() takes a recipe file or directory (a path or importlib.resources.files(...) / ...), "
        f"not {type(source).__name__}"
    )


def _stage(source: Any, name: str | None = None) -> Staged:
    """What one ``register(source, name=None)`` call of the recipe hook registers."""
    resource = _as_resource(source)
    if resource.is_dir():
        if name is not None:
            raise RecipeRegistrationError("name= applies to a single recipe file, not to a directory")
        found = list(_walk(resource))
        if not found:
            raise RecipeRegistrationError(f"the recipe directory {resource} holds no *.toml file")
    elif resource.is_file():
        if name is None and not resource.name.endswith(".toml"):
            raise RecipeRegistrationError(f"{resource} is not a .toml recipe file")
        found = [(name or resource.name[:-len(".toml")], resource)]
    else:
        raise RecipeRegistrationError(f"the recipe path {resource} does not exist (is it declared as package data?)")
    for reg_name, _ in found:
        if not isinstance(reg_name, str) or not NAME_PATTERN.match(reg_name):
            raise RecipeRegistrationError(
                f"recipe name {reg_name!r} is not valid (letters, digits and . _ + - in '/'-separated parts, no ':')"
            )
    return [(reg_name, resource, ()) for reg_name, resource in found]


_WORDS = Wording(
    "recipe", verbs=("ship", "ships", "shipped"),
    qualify="with the qualified name ({choices}; the same form works for `milzoo recipes show` and `copy` and in "
            "Python)",
    choice="`milzoo run {qualified}`",
    known=" `milzoo recipes` lists the {count} shipped recipes with the distribution of each.",
    catalogue="`milzoo recipes`", entry_points=False,
)
#: the shipped recipes, registered through ``milzoo_register_recipes``
RECIPES = ProviderTable(
    [Kind("recipe", "milzoo_register_recipes", stage=_stage, entry=ShippedRecipe, pattern=NAME_PATTERN,
          rule=_NAME_RULE, wording=_WORDS, unknown_error=UnknownRecipeError, ambiguous_error=AmbiguousRecipeError)],
    what="recipe",
)


# --------------------------------------------------------------------------- looking up


def names() -> list[str]:
    return RECIPES.names("recipe")


def providers(name: str) -> list[ShippedRecipe]:
    return RECIPES.providers("recipe", name)


def list_recipes(pattern: str = "*") -> list[ShippedRecipe]:
    """Every shipped recipe whose name matches the glob (one row per provider of a contested name)."""
    return RECIPES.entries("recipe", pattern)


def conflicts() -> list[tuple[str, list[ShippedRecipe]]]:
    return [(name, found) for _, name, found in RECIPES.conflicts()]


def _missing_file_lead(name: str) -> str:
    return f"there is no file {name!r} and no installed distribution ships a recipe of that name."


def unknown_message(name: str, missing_file: bool = False) -> str:
    return RECIPES.unknown_message("recipe", name, lead=_missing_file_lead(name) if missing_file else None)


def ambiguous_message(name: str, found: list[ShippedRecipe]) -> str:
    return RECIPES.ambiguous_message("recipe", name, found)


def get_recipe(ref: str, missing_file: bool = False) -> ShippedRecipe:
    """The shipped recipe ``name`` or ``"distribution:name"``; unknown or contested bare names raise.

    ``missing_file``: ``ref`` was given where a file may be named (`milzoo run`), and no such file exists.
    """
    lead = _missing_file_lead(ref) if missing_file and isinstance(ref, str) else None
    return RECIPES.get("recipe", ref, lead=lead)


def resolve(source: Any) -> ShippedRecipe | None:
    """The shipped recipe that ``source`` names, or None when it is a file, a URL or a path to report as missing.

    An existing file always wins.  ``quickstart`` or ``milzoo-psmil:psmil_cifar10`` is a name; a checkout
    path of a shipped recipe (``recipes/quickstart.toml``) that does not exist here also resolves, so the
    commands in the docs work after ``pip install``.  An unknown name raises with suggestions.
    """
    if not isinstance(source, (str, os.PathLike)):
        return None
    text = os.fspath(source)
    if not isinstance(text, str) or not text or "://" in text or Path(text).is_file():
        return None
    if _is_name(text) and (providers(split_qualified(text)[1]) or not Path(text).exists()):
        return get_recipe(text, missing_file=True)
    if not Path(text).exists():
        m = _CHECKOUT_FORM.match(text.replace(os.sep, "/"))
        if m and NAME_PATTERN.match(m["name"]) and providers(m["name"]):
            return get_recipe(m["name"])
    return None


def _is_name(text: str) -> bool:
    return RECIPES.is_reference("recipe", text) and not text.endswith(".toml")


def not_found_hint(path: str) -> str:
    """A sentence for a missing recipe file: the name form, with suggestions."""
    m = _CHECKOUT_FORM.match(path.replace(os.sep, "/"))
    stem = m["name"] if m else Path(path).name.removesuffix(".toml")
    return (f"shipped recipes are also run by name, without a path (`milzoo run quickstart`; `milzoo recipes` "
            f"lists them).{did_you_mean(stem, names())}")


def checkout_name(recipe: str) -> str:
    """``recipes/X.toml`` -> ``X`` when X is a shipped recipe (for commands shown to users), else unchanged."""
    m = _CHECKOUT_FORM.match(recipe)
    return m["name"] if m and NAME_PATTERN.match(m["name"]) and len(providers(m["name"])) == 1 else recipe
