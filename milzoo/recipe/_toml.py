"""Reading recipe TOML, with the limits of any recipe, and ``key.path=value`` overrides.

A recipe is a few kilobytes of TOML; a file far larger, an integer of thousands of digits, nesting deep
enough to exhaust Python's recursion limit, NaN or a value beyond TOML's 64-bit integers is a
:class:`~milzoo.errors.RecipeError` naming the problem, never a traceback or a run that cannot end.  Shipped
recipes (:mod:`milzoo.recipe.book`) are read through the same limits.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec

from milzoo.errors import RecipeError

__all__ = ["MAX_RECIPE_BYTES", "apply_overrides", "loads_toml", "parse_value", "read_toml", "value_problems"]


#: how a value that was meant as TOML (a list, table, quoted string) starts
_TOML_START = ("[", "{", '"', "'")


def parse_value(text: str, item: str | None = None) -> Any:
    """Parse an override value as a TOML value; a bare word (``musk2``, ``/data/x.csv``) is a string.

    A value that is empty, that starts like a TOML list, table or quoted string but does not parse
    (``[8,``, ``"abc``), or a bare word that holds ``=`` (``train.epochs=2=3``) is an error naming the
    override, never silently a string.
    """
    item = item if item is not None else text
    stripped = text.strip()
    if not stripped:
        raise RecipeError("overrides", [f"{item!r}: the value is empty; write key.path=\"\" for an empty string"])
    try:
        return tomllib.loads(f"v = {stripped}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if stripped.startswith(_TOML_START) or stripped.endswith(("]", "}", '"', "'")):
            raise RecipeError("overrides", [
                f"{item!r}: the value {stripped!r} is not valid TOML ({exc}); write lists as [1, 2], tables as "
                "{a = 1}, strings in quotes (--set 'name=\"my run\"')"]) from None
        if "=" in stripped and "://" not in stripped:  # train.epochs=2=3 (a URL's query string is fine)
            raise RecipeError("overrides", [
                f"{item!r}: the value {stripped!r} holds a second '='; one --set sets one key (give each its own "
                "--set), and a string that holds '=' goes in quotes (--set 'name=\"a=b\"')"])
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (list items by index: ``loss.0.lam=0.1``)."""
    data = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError("overrides", [f"{item!r}: an override must look like key.path=value"])
        key, value = item.split("=", 1)
        if not key.strip():
            raise RecipeError("overrides", [f"{item!r}: empty key"])
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise RecipeError("overrides", [f"{item!r}: the key {key.strip()!r} has an empty part (two dots in a "
                                            "row, or a dot at either end); write it like train.epochs"])
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise RecipeError("overrides", [f"{item!r}: {'.'.join(parts[: i + 1])} is not an item of the list"])
                node = node[int(p)]
            else:
                node = node.setdefault(p, {})
                if not isinstance(node, (dict, list)):
                    raise RecipeError("overrides", [f"{item!r}: {'.'.join(parts[: i + 1])} is not a table"])
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError("overrides", [f"{item!r}: no list item {last}"])
            node[int(last)] = parse_value(value, item)
        else:
            node[last] = parse_value(value, item)
    return data


#: TOML integers are 64-bit signed (the spec requires an error beyond that; tomllib accepts any size)
_INT64 = (-(2**63), 2**63 - 1)
#: nesting a recipe never needs (a deeper one is a mistake or an attack; it would hit Python's recursion limit)
_MAX_DEPTH = 32


def value_problems(value: Any, where: str, out: list[str], depth: int = 0) -> None:
    """Integers beyond 64 bits and NaN/inf floats anywhere in a recipe: one problem each, with its path."""
    if depth > _MAX_DEPTH:
        out.append(f"{where}: nested more than {_MAX_DEPTH} levels deep")
        return
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            digits = len(str(abs(value))) if value.bit_length() < 14000 else "thousands of"
            out.append(f"{where}: an integer of {digits} digits is outside the 64-bit range TOML allows; give a "
                       "realistic value")
    elif isinstance(value, float):
        if not math.isfinite(value):
            out.append(f"{where}: {value} is not a usable value (NaN and infinity are refused); give a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            value_problems(v, f"{where}.{k}" if where else str(k), out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            value_problems(v, f"{where}.{i}", out, depth + 1)


#: a recipe is a few kilobytes; anything this large is not one (and would be parsed into memory whole)
MAX_RECIPE_BYTES = 4 * 2**20


def loads_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text as a recipe: a syntax error, an integer of thousands of digits or nesting deep enough
    to exhaust Python's recursion limit is a :class:`RecipeError`, never a traceback."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(source, [f"TOML syntax error: {exc}"]) from None
    except ValueError as exc:  # int('9' * 5000): beyond Python's integer-string limit
        raise RecipeError(source, [f"a value cannot be read ({str(exc).split(';')[0]}); give realistic numbers"]) \
            from None
    except RecursionError:
        raise RecipeError(source, ["lists or tables are nested too deeply to read; this is not a recipe"]) from None


def read_toml(source: str | Path, missing_hint: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Read a recipe file (a path or an fsspec URL) of at most :data:`MAX_RECIPE_BYTES`.

    ``missing_hint`` adds a sentence to the error for a file that does not exist (the loader names the
    shipped recipes there, which are run by name).
    """
    src = str(source)
    try:
        with fsspec.open(src, "rb") as fh:
            data = fh.read(MAX_RECIPE_BYTES + 1)
        if len(data) > MAX_RECIPE_BYTES:
            raise RecipeError(src, [f"larger than {MAX_RECIPE_BYTES // 2**20} MiB; this is not a recipe file"])
        return loads_toml(data.decode("utf-8"), src)
    except FileNotFoundError:
        hint = f", or: {missing_hint(src)}" if missing_hint is not None else ""
        raise RecipeError(src, [f"file not found; check the path{hint}"]) from None
    except IsADirectoryError:
        raise RecipeError(src, ["is a directory, not a recipe file"]) from None
    except UnicodeDecodeError:
        raise RecipeError(src, ["not a UTF-8 text file"]) from None
