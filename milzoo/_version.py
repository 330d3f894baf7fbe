"""The installed versions of milzoo and other distributions (``milzoo.__version__``)."""

from __future__ import annotations

import importlib.metadata as md


def dist_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def milzoo_version() -> str:
    return dist_version("milzoo") or "0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":  # read on use: importing milzoo stays free of metadata lookups
        return milzoo_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
