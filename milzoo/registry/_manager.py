"""Plugin discovery and loading, with per-plugin failure isolation.

Built-in components (``DEFAULT_PLUGINS``) are registered through the very same
hooks as third-party plugins.  Third-party and first-party plugins (those in the
repository's ``plugins/`` folder) are found through the ``milzoo`` entry-point
group.  Each entry point is loaded in its own ``try``: a plugin that fails to
import is recorded with its distribution, version and error, and everything
else keeps working.

Every entry point is loaded or recorded, keyed by (distribution, entry-point
name): two distributions that happen to use the same entry-point name are two
plugins, and neither hides the other.  The plugin manager knows each one under
its ``key``, ``"distribution:entry-point"`` (``milzoo.builtin`` for the
built-ins).

Environment variables:

- ``MILZOO_LOAD_PLUGINS``: unset loads every entry point; empty loads none;
  ``a,b`` loads only the entry points or distributions named.
- ``MILZOO_DISABLE_PLUGINS``: ``a,b`` blocks these entry points or distributions.

A name in either variable that no installed plugin has (a typo) is named in a warning with the plugins there
are, instead of silently loading (or blocking) nothing.
- ``MILZOO_TRACE_PLUGINS=1``: print every hook call (handy for plugin authors).

This module owns the plugin manager and the :class:`PluginRecord` of every plugin; it knows nothing of the
provider tables built from the hooks (:mod:`milzoo.registry._providers`), which notice a new manager by
themselves after :func:`reset_plugins`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import io
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import pluggy
from packaging.utils import canonicalize_name

from milzoo._version import milzoo_version
from milzoo.errors import PluginConflictError
from milzoo.registry import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "milzoo"
DEFAULT_PLUGINS = ("milzoo.builtin",)
#: a plugin whose import (or one hook call) takes longer than this many seconds is named in a log warning
SLOW_PLUGIN_S = 1.0


@dataclass
class PluginRecord:
    name: str  # entry-point name (or module name for built-ins)
    distribution: str
    version: str
    status: str  # "ok", "failed", "disabled"
    error: str = ""
    module: str = ""
    #: the plugin manager's name for it: "distribution:entry-point" (the module name for built-ins)
    key: str = ""
    #: "kind:name" of everything it registered: components, pretrained entries, recipes (run.json keeps
    #: these, so that a run whose plugin was uninstalled can say which distribution to install)
    components: list[str] = field(default_factory=list)
    #: "kind:name" of its registrations that another distribution registers too
    conflicts: list[str] = field(default_factory=list)
    #: seconds its entry point took to import (0.0 for disabled plugins)
    import_s: float = 0.0

    def __post_init__(self):
        if not self.key:
            self.key = self.name

    def to_dict(self) -> dict:
        return asdict(self)


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_records: list[PluginRecord] = []
#: per thread: whether this thread is creating the manager (importing the plugins) right now
_creating = threading.local()


def loading() -> bool:
    """Whether this thread is importing the plugins right now (plugin code asking for the registry)."""
    return getattr(_creating, "active", False)


def _csv_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return (f"SystemExit({exc.code!r}): the plugin tried to end the process (sys.exit, or argparse reading "
                "milzoo's command line) instead of registering; a plugin must not exit")
    if not isinstance(exc, Exception):
        return f"{type(exc).__name__} (a BaseException, not an Exception): {exc}"
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def isolated(plugin_key: str, what: str):
    """Run plugin code: anything it raises, ``SystemExit`` and other ``BaseException``s included, fails that plugin.

    Only a real Ctrl-C (``KeyboardInterrupt``) goes through.  What the plugin prints meanwhile is held back:
    shown as printed when the plugin succeeds, quoted in its error when it fails (argparse's usage text).
    Use as ``with isolated(key, "import") as outcome: ...``; ``outcome.failed`` says whether it failed.
    """
    outcome = _Outcome()
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield outcome
    except KeyboardInterrupt:
        _replay(out, err)
        raise
    except BaseException as exc:  # noqa: BLE001 - isolation is the point: SystemExit and GeneratorExit too
        outcome.failed = True
        printed = (err.getvalue() or out.getvalue()).strip()
        described = _describe(exc)
        if printed:
            last = printed.splitlines()[-1].strip()
            described += f" (it printed: {last[:200]!r})"
        record_failure(plugin_key, exc, described)
    else:
        _replay(out, err)
    finally:
        outcome.seconds = time.perf_counter() - start
        if outcome.seconds > SLOW_PLUGIN_S:
            dist, version = plugin_distribution(plugin_key)
            log.warning("plugin %s (%s %s) took %.1f s (%s); every milzoo command that loads plugins waits for "
                        "it. Report it to the plugin's author, or skip it with MILZOO_DISABLE_PLUGINS=%s",
                        plugin_key, dist, version, outcome.seconds, what, dist)


@dataclass
class _Outcome:
    failed: bool = False
    seconds: float = 0.0


def _replay(out: io.StringIO, err: io.StringIO) -> None:
    if out.getvalue():
        sys.stdout.write(out.getvalue())
    if err.getvalue():
        sys.stderr.write(err.getvalue())


def canonical_distribution(name: str) -> str:
    """PEP 503 normalised form of a distribution name (``Milzoo_ABMIL`` -> ``milzoo-abmil``)."""
    return canonicalize_name(name)


def _selected(names: set[str], ep_name: str, dist: str) -> bool:
    return ep_name in names or canonical_distribution(dist) in {canonical_distribution(n) for n in names}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    wanted = _csv_env("MILZOO_LOAD_PLUGINS")
    blocked = _csv_env("MILZOO_DISABLE_PLUGINS") or set()
    seen: set[tuple[str, str]] = set()
    known: list[tuple[str, str]] = []  # (entry point, distribution) of every plugin found
    eps = md.entry_points(group=ENTRY_POINT_GROUP)
    dist_of = lambda ep: ep.dist.name if ep.dist is not None else "?"  # noqa: E731
    for ep in sorted(eps, key=lambda e: (e.name, canonical_distribution(dist_of(e)))):
        dist = dist_of(ep)
        version = ep.dist.version if ep.dist is not None else "?"
        ident = (canonical_distribution(dist), ep.name)
        if ident in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add(ident)
        known.append((ep.name, dist))
        key = f"{dist}:{ep.name}"
        rec = PluginRecord(ep.name, dist, version, "ok", module=ep.value, key=key)
        if (wanted is not None and not _selected(wanted, ep.name, dist)) or _selected(blocked, ep.name, dist):
            rec.status = "disabled"
            _records.append(rec)
            continue
        _records.append(rec)
        with isolated(key, "to import") as outcome:
            plugin = ep.load()
            other = pm.get_name(plugin)
            if other is not None:
                raise PluginConflictError(
                    f"its entry point loads {ep.value}, which the plugin {other} already registered; "
                    "one module cannot be two plugins"
                )
            pm.register(plugin, name=key)
        rec.import_s = round(outcome.seconds, 4)
        if outcome.failed:
            log.debug("plugin %s failed to load: %s", key, rec.error)
            with contextlib.suppress(Exception):
                pm.unregister(name=key)
    _warn_unknown_names(wanted, blocked, known)


def _warn_unknown_names(wanted: set[str] | None, blocked: set[str], known: list[tuple[str, str]]) -> None:
    """A name in MILZOO_LOAD_PLUGINS / MILZOO_DISABLE_PLUGINS that no plugin has: say so, with the names there are."""
    shown = ", ".join(f"{name} ({dist})" for name, dist in sorted(known)) or "none"
    for variable, names, effect in (("MILZOO_LOAD_PLUGINS", wanted or set(), "loads"),
                                    ("MILZOO_DISABLE_PLUGINS", blocked, "disables")):
        unknown = sorted(n for n in names if not any(_selected({n}, ep, dist) for ep, dist in known)
                         and n not in (*DEFAULT_PLUGINS, "milzoo"))  # the built-ins always load
        if unknown:
            log.warning("%s names %s, which no installed plugin is called, so it %s nothing by %s. The plugins "
                        "(entry point and distribution; either name works) are: %s. Fix the spelling in %s.",
                        variable, ", ".join(repr(n) for n in unknown), effect,
                        "that name" if len(unknown) == 1 else "those names", shown, variable)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _manager
    with _lock:
        if _manager is not None:
            return _manager
        _creating.active = True
        try:
            _manager = _create()
        finally:
            _creating.active = False
        return _manager


def _create() -> pluggy.PluginManager:
    """A plugin manager with the built-ins and every entry point loaded (or recorded as failed or disabled)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS:
        start = time.perf_counter()
        mod = importlib.import_module(modname)
        pm.register(mod, name=modname)
        _records.append(PluginRecord(modname, "milzoo", milzoo_version(), "ok", module=modname,
                                     import_s=round(time.perf_counter() - start, 4)))
    _load_entry_points(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or "?"
        for rec in _records:
            if rec.key == name:
                rec.status, rec.error = "failed", _describe(exc)
        pm.unregister(exc.plugin)
    if os.environ.get("MILZOO_TRACE_PLUGINS"):
        def before(hook_name, impls, kwargs):
            print(f"[milzoo] hook {hook_name} -> {[i.plugin_name for i in impls]}", file=sys.stderr)

        def after(outcome, hook_name, impls, kwargs):
            return None

        pm.add_hookcall_monitoring(before, after)
    return pm


def plugin_records() -> list[PluginRecord]:
    """Every plugin seen: built-ins, loaded, failed and disabled ones."""
    get_plugin_manager()
    return list(_records)


def record_for(key: str) -> PluginRecord | None:
    """The record of the plugin the plugin manager knows as ``key``."""
    for rec in _records:
        if rec.key == key:
            return rec
    return None


def record_failure(plugin_key: str, exc: BaseException, described: str | None = None) -> None:
    """Mark a plugin failed (its import or a hook raised, or what it registered was refused).

    A plugin that fails twice keeps its first error; later ones are added after it.
    """
    text = described or _describe(exc)
    log.debug("plugin %s failed: %s", plugin_key, text)
    rec = record_for(plugin_key)
    if rec is None:
        _records.append(PluginRecord(plugin_key, "?", "?", "failed", text))
        return
    if rec.status == "failed" and rec.error and text not in rec.error:
        rec.error = f"{rec.error}; {text}"
    elif rec.status != "failed" or not rec.error:
        rec.error = text
    rec.status = "failed"


def plugin_distribution(plugin_key: str) -> tuple[str, str]:
    """``(distribution, version)`` of the plugin the manager knows as ``plugin_key`` (``("?", "?")`` if none)."""
    rec = record_for(plugin_key)
    return (rec.distribution, rec.version) if rec is not None else ("?", "?")


def failed_plugins() -> list[PluginRecord]:
    """The plugins that failed to load or to register."""
    return [r for r in plugin_records() if r.status == "failed"]


def forget_plugin(key: str) -> None:
    """Unregister the plugin the manager knows as ``key`` (one registered by hand, as tests do) and drop its
    record, a failure recorded against it included; the other plugins stay as they are."""
    with _lock:
        if _manager is not None and _manager.has_plugin(key):
            _manager.unregister(name=key)
        _records[:] = [r for r in _records if r.key != key]


def reset_plugins() -> None:
    """Forget the manager and the plugin records (tests; after installing a plugin).

    The next use discovers the plugins afresh; every provider table is rebuilt then, since a table belongs to
    the manager it was built from.
    """
    global _manager
    with _lock:
        _manager = None
        _records.clear()
