"""Lazy package namespaces: a package's public names, imported from its modules on first use.

Each package ``__init__`` lists its public names and the module that defines each one; nothing is imported
until a name is used, so ``import milzoo`` (and ``import milzoo.registry``) stays cheap.  This is the
``__getattr__`` of PEP 562, written once::

    __getattr__, __dir__, __all__ = attach(__name__, {"save_model": "_model", "STATE": "_format"})
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def attach(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``; ``exports`` maps a name to its module (relative)."""

    def __getattr__(name: str) -> Any:
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(where if where.startswith("milzoo") else f"{package}.{where}")
        value = getattr(module, name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        public = {n for n in vars(sys.modules[package]) if not n.startswith("_") and n != "attach"}
        return sorted(set(exports) | public)

    return __getattr__, __dir__, sorted(exports)
