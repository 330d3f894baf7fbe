"""Which distribution provided a component, and what to say when that provider is gone.

Checkpoints (``config.json`` -> ``components``) and run directories
(``run.json`` -> ``plugins[].components``) record the distribution and
version behind every component.  When a name no longer resolves, these
records say which distribution to install; the hint names only that
distribution, and only when its recorded name is a valid one.

The functions here only read what they are given (the plugin records come in as an argument), so the layers
above (the provider tables, checkpoint loading) call down into this module and nothing here calls up.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from milzoo._untrusted import pip_install, read_json, shown, valid_distribution, valid_version
from milzoo._version import milzoo_version

if TYPE_CHECKING:
    from milzoo.registry._manager import PluginRecord


def installed_version(dist: str) -> str | None:
    """The installed version of ``dist``, or None when it is not installed (or not a valid name)."""
    if not valid_distribution(dist):
        return None
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def explain_missing(kind: str, name: str, dist: Any, version: Any, records: Iterable[PluginRecord],
                    recorded: bool = True) -> str:
    """Why ``kind`` ``name``, said to be provided by ``dist`` ``version``, is not available, and the fix.

    ``records`` are the plugins seen in this process (:func:`milzoo.registry.plugin_records`): they tell a
    distribution whose plugin failed or is disabled from one that no longer registers the name.  An install
    command is suggested only when ``dist`` is what a run or checkpoint *recorded* as the provider
    (``recorded``; not a name typed before ``:`` in a recipe), is truly not installed (or installed in another
    version than the recorded one), and is a valid name; the text says that the name comes from the file.
    """
    if not valid_distribution(dist):
        return (f"The file names its provider as {shown(dist)}, which is not a valid distribution name, so no install "
                "command is suggested; the file is damaged or was edited by hand.")
    ver = version if valid_version(version) else None
    shown_dist = f"{dist} {ver}" if ver else dist
    if not recorded:
        have = installed_version(dist)
        if have is None:
            return (f"No distribution {shown(dist)} is installed. milzoo suggests no install command for a name "
                    f"written in a recipe: install the plugin that provides the {kind} {name!r} as its documentation "
                    "says, or fix the distribution part of the name (`milzoo plugins` lists the installed ones).")
        return _installed_text(kind, name, dist, have, records, f"The installed {dist} {have} registers no {kind} "
                               f"{name!r}; fix the name (`milzoo list {kind}` shows what it registers).")
    if canonicalize_name(dist) == "milzoo":
        if ver is None or ver == milzoo_version():
            return (f"The file records it as built into milzoo{' ' + ver if ver else ''}, but this milzoo "
                    f"({milzoo_version()}) has no {kind} {name!r}; the file is damaged or was edited by hand.")
        return (f"The file records it as built into milzoo {ver}, but this milzoo ({milzoo_version()}) has no {kind} "
                f"{name!r}; install the recorded version (`{pip_install('milzoo', ver)}`).")
    have = installed_version(dist)
    if have is None:
        return (f"The file records that it was provided by the distribution {shown_dist}, which is not installed. "
                f"Install it with `{pip_install(dist, ver)}` and try again (the name comes from the file: make sure "
                "it is the distribution you mean to install).")
    if ver is None or ver == have:
        fix = (f"the installed {dist} {have}{' (the recorded version)' if ver else ''} registers no {kind} {name!r}, "
               "so the file is damaged or was edited by hand; no install command would help.")
    else:
        fix = (f"the installed {dist} {have} registers no {kind} {name!r}. Install the recorded version "
               f"(`{pip_install(dist, ver)}`; the version comes from the file).")
    return _installed_text(kind, name, dist, have, records, f"The file records that {shown_dist} provided it; {fix}")


def _installed_text(kind: str, name: str, dist: str, have: str, records: Iterable[PluginRecord],
                    otherwise: str) -> str:
    """``dist`` is installed but provides no ``kind`` ``name``: its plugin failed, is disabled, or ``otherwise``."""
    recs = [r for r in records if canonicalize_name(r.distribution) == canonicalize_name(dist)]
    failed = [r for r in recs if r.status == "failed"]
    if failed:
        return (f"It is provided by {dist} {have}, which is installed but whose plugin failed to load "
                f"({failed[0].error}). Fix or reinstall it (`milzoo plugins` shows the error).")
    if recs and all(r.status == "disabled" for r in recs):
        return (f"It is provided by {dist} {have}, which is installed but disabled (MILZOO_LOAD_PLUGINS / "
                "MILZOO_DISABLE_PLUGINS); enable it.")
    return otherwise


def _add(out: dict, kind: Any, name: Any, dist: Any, version: Any) -> None:
    if isinstance(kind, str) and isinstance(name, str) and isinstance(dist, str):
        out.setdefault((kind, name), (dist, version if isinstance(version, str) else ""))


def from_checkpoint_config(cfg: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """``(kind, name) -> (distribution, version)`` recorded in a checkpoint's config.json."""
    out: dict = {}
    comps = cfg.get("components") if isinstance(cfg, dict) else None
    if isinstance(comps, dict):
        for kind, info in comps.items():
            if isinstance(info, dict):
                _add(out, kind, info.get("name"), info.get("distribution"), info.get("version"))
    return out


def from_run_dir(run_dir: str | Path) -> dict[tuple[str, str], tuple[str, str]]:
    """What a run directory records about its components' providers (empty when it records nothing).

    Damaged files are skipped: this only improves an error message.
    """
    run_dir = Path(run_dir)
    out: dict = {}
    if not run_dir.is_dir():
        return out
    try:
        info = read_json(run_dir / "run.json", "run record", ValueError) if (run_dir / "run.json").is_file() else {}
    except ValueError:
        info = {}
    for rec in (info.get("plugins") if isinstance(info, dict) else None) or []:
        if isinstance(rec, dict) and isinstance(rec.get("components"), list):
            for ref in rec["components"]:
                if isinstance(ref, str) and ":" in ref:
                    kind, _, name = ref.partition(":")
                    _add(out, kind, name, rec.get("distribution"), rec.get("version"))
    for cfg_path in sorted(run_dir.glob("fold-*/*/config.json"))[:8]:
        try:
            out = {**from_checkpoint_config(read_json(cfg_path, "checkpoint config", ValueError)), **out}
        except ValueError:
            continue
    return out


def from_recipe_source(source: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """The records of the run directory a recipe file lives in (``runs/x/recipe.toml``), if any."""
    if not isinstance(source, (str, Path)) or "://" in str(source):
        return {}
    parent = Path(source).parent
    if not ((parent / "run.json").is_file() or any(parent.glob("fold-*"))):
        return {}
    return from_run_dir(parent)
