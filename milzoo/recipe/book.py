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

Names follow the registry's rule for components: a bare name with one provider
resolves to it; a bare name that two distributions register is an error naming
both; ``"distribution:name"`` always resolves to that provider.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milzoo.errors import UserError

#: a recipe name: registry-name segments joined by "/" (no ":", which separates the distribution)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9][A-Za-z0-9._+-]*)*$")
_QUALIFIED = re.compile(r"^(?:(?P<dist>[A-Za-z0-9][A-Za-z0-9._-]*):)?(?P<name>[^:]+)$")
#: the checkout's path of a shipped recipe, which pip users see in docs and messages
_CHECKOUT_FORM = re.compile(r"^(?:\./)?recipes/(?P<name>.+)\.toml$")


class UnknownRecipeError(UserError):
    """No installed distribution ships a recipe of that name."""


class AmbiguousRecipeError(UnknownRecipeError):
    """Two or more distributions ship a recipe of that name; qualify it as ``distribution:name``."""


class RecipeRegistrationError(Exception):
    """A plugin registered something that is not a recipe file or directory, or an invalid name."""


@dataclass(frozen=True)
class ShippedRecipe:
    """A recipe file installed by a distribution, under a name."""

    name: str
    resource: Any  # an importlib.resources Traversable (or a pathlib.Path) of the .toml file
    distribution: str
    version: str
    plugin: str  # entry-point name ("milzoo.builtin" for the core)

    @property
    def qualified(self) -> str:
        return f"{self.distribution}:{self.name}"

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
        from milzoo.errors import RecipeError
        from milzoo.recipe._recipe import loads_toml  # the size, depth and number limits of any recipe

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
            "conflicts": [p.distribution for p in providers(self.name) if p is not self],
        }


_lock = threading.RLock()
_cache: tuple[Any, dict[str, list[ShippedRecipe]]] | None = None  # (plugin manager, name -> providers)


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


def _staged(source: Any, name: str | None) -> list[tuple[str, Any]]:
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
    return found


def _build(pm) -> dict[str, list[ShippedRecipe]]:
    from milzoo.registry import _manager as plugins
    from milzoo.registry._manager import canonical_distribution as canonical

    table: dict[str, list[ShippedRecipe]] = {}
    for impl in pm.hook.milzoo_register_recipes.get_hookimpls():
        dist, version = plugins.plugin_distribution(impl.plugin_name)
        rec = plugins.record_for(impl.plugin_name)
        ep_name = rec.name if rec is not None else impl.plugin_name
        staged: list[tuple[str, Any]] = []

        def register(source, name=None, _staged_list=staged):
            _staged_list.extend(_staged(source, name))

        try:
            impl.function(register=register) if "register" in impl.argnames else impl.function()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the rest
            plugins.record_failure(impl.plugin_name, exc)
            continue
        for reg_name, resource in staged:
            found = table.setdefault(reg_name, [])
            if any(canonical(p.distribution) == canonical(dist) for p in found):
                plugins.record_failure(impl.plugin_name, RecipeRegistrationError(
                    f"recipe {reg_name!r} is registered twice by the distribution {dist}; rename one of them"))
                continue
            found.append(ShippedRecipe(reg_name, resource, dist, version, ep_name))
    return table


def _index() -> dict[str, list[ShippedRecipe]]:
    global _cache
    from milzoo.registry import _manager as plugins

    pm = plugins.get_plugin_manager()
    with _lock:
        if _cache is None or _cache[0] is not pm:  # plugins.reset_plugins() makes a new manager
            _cache = (pm, _build(pm))
        return _cache[1]


def names() -> list[str]:
    return sorted(_index())


def providers(name: str) -> list[ShippedRecipe]:
    return list(_index().get(name, []))


def list_recipes(pattern: str = "*") -> list[ShippedRecipe]:
    """Every shipped recipe whose name matches the glob (one row per provider of a contested name)."""
    from milzoo.registry._manager import canonical_distribution as canonical

    rows = [r for found in _index().values() for r in found if fnmatch.fnmatch(r.name, pattern)]
    return sorted(rows, key=lambda r: (r.name, canonical(r.distribution)))


def conflicts() -> list[tuple[str, list[ShippedRecipe]]]:
    return [(n, list(found)) for n, found in sorted(_index().items()) if len(found) > 1]


def _suggestions(name: str) -> str:
    known = names()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    tails = {k.rsplit("/", 1)[-1]: k for k in known}  # "abmil_musk1" -> "classic/abmil_musk1"
    close += [tails[t] for t in difflib.get_close_matches(name.rsplit("/", 1)[-1], list(tails), n=2, cutoff=0.6)
              if tails[t] not in close]
    return f" Did you mean {' or '.join(repr(c) for c in close[:3])}?" if close else ""


def unknown_message(name: str, missing_file: bool = False) -> str:
    head = f"there is no file {name!r} and no" if missing_file else f"unknown recipe {name!r}: no"
    return f"{head} installed distribution ships a recipe of that name." + _tail(name)


def _tail(name: str) -> str:
    from milzoo.registry import _manager as plugins

    msg = _suggestions(name)
    msg += (f" `milzoo recipes` lists the {len(names())} shipped recipes with the distribution of each; a recipe "
            "from a plugin needs that plugin installed (e.g. pip install milzoo-psmil).")
    failed = plugins.failed_plugins()
    if failed:
        msg += " Some plugins failed to load and may ship it: " + "; ".join(
            f"{r.name} ({r.distribution} {r.version}): {r.error}" for r in failed) + "."
    return msg


def ambiguous_message(name: str, found: list[ShippedRecipe]) -> str:
    listed = " and ".join(f"{r.distribution} {r.version}" for r in found)
    qualified = " or ".join(f"`milzoo run {r.qualified}`" for r in found)
    return (f"the recipe {name!r} is shipped by {len(found)} installed distributions: {listed}. milzoo does not "
            f"pick one by itself. Say which one you mean with the qualified name ({qualified}; the same form "
            f"works for `milzoo recipes show` and `copy` and in Python), or uninstall the one you do not want "
            f"(`pip uninstall {found[-1].distribution}`). `milzoo recipes` marks every conflict.")


def get_recipe(ref: str, missing_file: bool = False) -> ShippedRecipe:
    """The shipped recipe ``name`` or ``"distribution:name"``; unknown or contested bare names raise.

    ``missing_file``: ``ref`` was given where a file may be named (`milzoo run`), and no such file exists.
    """
    from milzoo.registry import _provenance as provenance
    from milzoo.registry._manager import canonical_distribution as canonical

    m = _QUALIFIED.match(ref) if isinstance(ref, str) else None
    if m is None or not NAME_PATTERN.match(m["name"]):
        raise UnknownRecipeError(f"{ref!r} is not a recipe name (names look like 'quickstart' or "
                                 "'classic/abmil_musk1'; `milzoo recipes` lists them).")
    dist, name = m["dist"], m["name"]
    found = providers(name)
    if dist is None:
        if len(found) == 1:
            return found[0]
        if found:
            raise AmbiguousRecipeError(ambiguous_message(name, found))
        raise UnknownRecipeError(unknown_message(name, missing_file))
    chosen = [r for r in found if canonical(r.distribution) == canonical(dist)]
    if chosen:
        return chosen[0]
    if found:
        raise UnknownRecipeError(f"the distribution {provenance.shown(dist)} ships no recipe {name!r}; installed "
                                 f"providers of that name: {', '.join(r.qualified for r in found)}. Fix the "
                                 "distribution part of the name.")
    raise UnknownRecipeError(f"no installed distribution {provenance.shown(dist)} ships a recipe {name!r}."
                             + _tail(name))


def _is_name(text: str) -> bool:
    m = _QUALIFIED.match(text)
    return m is not None and bool(NAME_PATTERN.match(m["name"])) and not text.endswith(".toml")


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
    if _is_name(text) and (providers(_QUALIFIED.match(text)["name"]) or not Path(text).exists()):
        return get_recipe(text, missing_file=True)
    if not Path(text).exists():
        m = _CHECKOUT_FORM.match(text.replace(os.sep, "/"))
        if m and NAME_PATTERN.match(m["name"]) and providers(m["name"]):
            return get_recipe(m["name"])
    return None


def not_found_hint(path: str) -> str:
    """A sentence for a missing recipe file: the name form, with suggestions."""
    m = _CHECKOUT_FORM.match(path.replace(os.sep, "/"))
    stem = m["name"] if m else Path(path).name.removesuffix(".toml")
    return (f"shipped recipes are also run by name, without a path (`milzoo run quickstart`; `milzoo recipes` "
            f"lists them).{_suggestions(stem)}")


def checkout_name(recipe: str) -> str:
    """``recipes/X.toml`` -> ``X`` when X is a shipped recipe (for commands shown to users), else unchanged."""
    m = _CHECKOUT_FORM.match(recipe)
    return m["name"] if m and NAME_PATTERN.match(m["name"]) and len(providers(m["name"])) == 1 else recipe
