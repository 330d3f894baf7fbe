"""Reading text that came with a file someone else made (config.json, run.json, a Hub folder).

Such text is data: it is size-limited when read, never executed, and quoted
(``repr``, truncated) when it appears in a message.  A distribution name goes
into a ``pip install`` hint only when it is a valid PEP 508 name and a version
only when it is a valid PEP 440 version, so a file cannot make milzoo print a
command of its own choosing; and only when the component is truly missing and
the name is the provider the file recorded (never a look-alike of an installed
provider, never a name typed before ``:`` in a recipe), with words saying that
the name comes from the file (:func:`milzoo.registry._provenance.explain_missing`).
Sizes a file asks for are computed with Python integers before anything is
built (:mod:`milzoo.model.sizing`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packaging.utils import InvalidName, canonicalize_name
from packaging.version import InvalidVersion, Version

#: config.json of a model or Hub folder (recipe, metrics and card data included) stays far below this
MAX_JSON_BYTES = 16 * 1024 * 1024


def shown(value: Any, limit: int = 60) -> str:
    """``repr`` of an untrusted value, cut to ``limit`` characters (control characters escaped)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    closing = text[-1] if text[-1] in "'\")]}" else ""  # keep a string's quote or a list's bracket
    return text[: limit - 3 - len(closing)] + "..." + closing


def valid_distribution(name: Any) -> bool:
    """True for a valid PEP 508 distribution name (``milzoo-abmil``), False for anything else."""
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        return False
    try:
        canonicalize_name(name, validate=True)
    except InvalidName:
        return False
    return True


def valid_version(version: Any) -> bool:
    if not isinstance(version, str) or not 0 < len(version) <= 60:
        return False
    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


def pip_install(dist: str, version: str | None = None) -> str:
    """``pip install dist[==version]`` for a validated name (the version is left out unless valid)."""
    if not valid_distribution(dist):
        raise ValueError(f"not a distribution name: {shown(dist)}")
    return f"pip install {dist}=={version}" if valid_version(version) else f"pip install {dist}"


def read_json(path: Path, what: str, error: type[Exception], max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file that may be hostile: bounded size, bounded nesting, clear errors of type ``error``."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise error(f"cannot read {path} ({exc}).") from None
    if size > max_bytes:
        raise error(f"{path} ({what}) is {size / 2**20:.0f} MiB, more than the {max_bytes // 2**20} MiB a milzoo "
                    "config ever needs; it is damaged or not a milzoo file, so it is not read.")
    try:
        return json.loads(path.read_bytes())
    except RecursionError:
        raise error(f"{path} ({what}) is nested too deeply to be a milzoo config; it is damaged or hostile.") \
            from None
    except ValueError as exc:  # bad JSON or UTF-8, or an integer longer than Python reads (4300 digits)
        raise error(f"{path} is not valid JSON ({exc}); the {what} is corrupted.") from None
    except OSError as exc:
        raise error(f"cannot read {path} ({exc}).") from None
