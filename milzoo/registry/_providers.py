"""The provider table: registrations of one or more kinds, built from the plugin hooks, looked up by name.

Components (encoder, pooling, loss, dataset, augment), pretrained entries and shipped recipes are all kept
this way; a :class:`Kind` row says which hook registers a kind and what it accepts.  Every registration is
kept with the distribution that provides it, so two distributions may register the same name without
either one hiding the other:

- a bare name with exactly one provider resolves to it;
- a bare name with several providers raises the kind's ambiguity error naming all of them (the order of
  installation or of entry-point names never decides);
- the qualified form ``"distribution:name"`` (``"milzoo-abmil:abmil"``, ``"milzoo:mean"`` for a built-in)
  always resolves to that provider.

Unknown names raise the kind's unknown-name error with "did you mean" suggestions and, when some plugin failed
to load, that plugin's stored error.  A table is built on first use from the current plugin manager, and
rebuilt when the manager changes (:func:`milzoo.registry.reset_plugins`) or after :func:`reset`.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import inspect
import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from packaging.utils import canonicalize_name

from milzoo._untrusted import valid_distribution
from milzoo.errors import AmbiguousComponentError, RegistrationError, UnknownComponentError
from milzoo.registry import _manager, _messages
from milzoo.registry._messages import Wording
from milzoo.registry._provenance import explain_missing

log = logging.getLogger(__name__)

#: what a registry name may look like (no ":", which separates the distribution).  Check a name with
#: ``fullmatch``: ``match`` lets a trailing newline through ``$``.  (The pattern is also given to pydantic, whose
#: regex engine has no ``\Z``.)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
NAME_RULE = "letters, digits and . _ + -"
#: the distribution part of a qualified name
_DISTRIBUTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: (kind, name) -> (distribution, version) recorded by a run directory or checkpoint being read
_recorded: contextvars.ContextVar[dict[tuple[str, str], tuple[str, str]]] = contextvars.ContextVar(
    "milzoo_recorded_providers", default={}
)
#: every table, so that one reset() reaches them all
_TABLES: weakref.WeakSet[ProviderTable] = weakref.WeakSet()
#: per thread: how many tables are being built right now (a hook asking for a table must not rebuild it)
_BUILDING = threading.local()


def building() -> bool:
    """Whether this thread is loading the plugins or building a table right now (a plugin's code runs)."""
    return getattr(_BUILDING, "depth", 0) > 0 or _manager.loading()


def canonical(dist: str) -> str:
    """PEP 503 normalised form of a distribution name (``Milzoo_ABMIL`` -> ``milzoo-abmil``)."""
    return canonicalize_name(dist)


def split_qualified(ref: str) -> tuple[str | None, str]:
    """``"dist:name"`` -> ``("dist", "name")``; a bare name -> ``(None, name)``."""
    dist, sep, name = ref.rpartition(":")
    return (dist, name) if sep else (None, ref)


@dataclass
class Entry:
    """One registration: ``obj`` registered as ``name`` (and ``aliases``) by a plugin of a distribution."""

    kind: str
    name: str
    obj: Any
    plugin: str  # entry-point name
    distribution: str
    version: str
    aliases: list[str] = field(default_factory=list)
    key: str = ""  # the plugin manager's name of the plugin
    #: the other registrations of any of its names (filled when the table is built)
    rivals: list[Entry] = field(default_factory=list, repr=False, compare=False)

    @property
    def qualified(self) -> str:
        return f"{self.distribution}:{self.name}"

    def spelling(self, name: str) -> str:
        """Which of its names (the name or an alias) is ``name`` ignoring case, as this entry spells it."""
        folded = name.casefold()
        return next((k for k in (self.name, *self.aliases) if k.casefold() == folded), name)

    def describe(self) -> dict[str, Any]:
        summary = getattr(self.obj, "summary", None)  # pretrained entries describe themselves
        doc = (summary if isinstance(summary, str) else (getattr(self.obj, "__doc__", None) or "")).strip().splitlines()
        return {
            "kind": self.kind,
            "name": self.name,
            "qualified": self.qualified,
            "aliases": self.aliases,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "summary": doc[0] if doc else "",
            "conflicts": [e.distribution for e in self.rivals],
        }


#: what a kind's ``stage`` returns for one ``register(...)`` call: ``(name, obj, aliases)`` per registration
Staged = list[tuple[str, Any, tuple[str, ...]]]


@dataclass(frozen=True)
class Kind:
    """One row of a provider table: a kind, the hook that registers it, and what it accepts.

    ``stage`` receives the arguments a plugin passed to ``register`` and returns what they register, raising a
    :class:`~milzoo.errors.RegistrationError` for anything the kind does not accept.  ``adopt`` runs for each
    registration once its plugin's hook has succeeded.
    """

    name: str
    hook: str
    stage: Callable[..., Staged]
    adopt: Callable[[Entry], None] | None = None
    #: what a registration is kept as (recipes: :class:`milzoo.recipe.book.ShippedRecipe`)
    entry: type[Entry] = Entry
    #: what a name of this kind looks like, and the rule in words
    pattern: re.Pattern[str] = NAME_PATTERN
    rule: str = NAME_RULE
    wording: Wording | None = None
    unknown_error: type[Exception] = UnknownComponentError
    ambiguous_error: type[Exception] = AmbiguousComponentError

    @property
    def words(self) -> Wording:
        return self.wording or Wording(self.name)


def check_hook_result(hook: str, result: Any) -> None:
    """A hook that returns a generator or a coroutine never ran its body, and one that returns anything else (a
    list of classes) expected milzoo to register it: refuse both, naming the fix.  ``None``, and a list of
    ``None`` (``[register(c) for c in classes]``), are what a hook returns."""
    adds = "register(...)" if hook != "milzoo_register_commands" else "cli.add_command(...)"
    if inspect.isgenerator(result) or inspect.iscoroutine(result):
        result.close()
        what = "a generator function (it uses `yield`)" if inspect.isgenerator(result) else "an async function"
        raise RegistrationError(
            f"its {hook} hook is {what}, so calling it runs none of its code and registers nothing; make it a plain "
            "function that calls register(...) (or cli.add_command(...)) for each thing it adds")
    if result is None or (isinstance(result, (list, tuple)) and all(item is None for item in result)):
        return
    shown = repr(result)
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    raise RegistrationError(
        f"its {hook} hook returned {shown} instead of calling {adds}; milzoo does not register what a hook "
        f"returns, so none of it was added. Call {adds} once for each thing the hook adds, and return nothing")


def reset() -> None:
    """Forget every built table; the next lookup runs the hooks again (after registering a plugin by hand)."""
    for table in list(_TABLES):
        table.forget()


@contextlib.contextmanager
def recorded_providers(mapping: dict[tuple[str, str], tuple[str, str]]) -> Iterator[None]:
    """Within the block, an unknown ``(kind, name)`` found in ``mapping`` names its recorded distribution.

    Run directories and checkpoints record which distribution provided each
    component; after that distribution is uninstalled this turns "did you mean
    'mean'" into "install milzoo-abmil".
    """
    token = _recorded.set({**_recorded.get(), **mapping})
    try:
        yield
    finally:
        _recorded.reset(token)


def missing_provider_text(kind: str, name: str, dist: Any, version: Any, recorded: bool = True) -> str:
    """Why ``kind`` ``name``, recorded as provided by ``dist`` ``version``, is not available, and the fix (an
    install command only for a ``recorded`` provider: see :func:`milzoo.registry._provenance.explain_missing`)."""
    return explain_missing(kind, name, dist, version, _manager.plugin_records(), recorded)


class ProviderTable:
    """The registrations of the kinds in ``rows``, by kind and name (aliases included), each with its providers.

    ``what`` names the kinds as a group in the error for a kind the table does not hold ("component").
    """

    def __init__(self, rows: Iterable[Kind], what: str = "component"):
        self.rows = {row.name: row for row in rows}
        self.what = what
        self._lock = threading.RLock()
        self._built: tuple[Any, dict[str, dict[str, list[Entry]]]] | None = None  # (plugin manager, table)
        _TABLES.add(self)

    # ---------------------------------------------------------------- building
    def forget(self) -> None:
        with self._lock:
            self._built = None

    def _table(self) -> dict[str, dict[str, list[Entry]]]:
        pm = _manager.get_plugin_manager()
        with self._lock:
            if self._built is None or self._built[0] is not pm:
                _BUILDING.depth = getattr(_BUILDING, "depth", 0) + 1
                try:
                    self._built = (pm, self._build(pm))
                finally:
                    _BUILDING.depth -= 1
            return self._built[1]

    def _build(self, pm: Any) -> dict[str, dict[str, list[Entry]]]:
        mine = tuple(f"{kind}:" for kind in self.rows)
        for rec in _manager.plugin_records():  # a rebuild starts this table's part of each record afresh
            rec.components[:] = [c for c in rec.components if not c.startswith(mine)]
            rec.conflicts[:] = [c for c in rec.conflicts if not c.startswith(mine)]
        table: dict[str, dict[str, list[Entry]]] = {kind: {} for kind in self.rows}
        for row in self.rows.values():
            for impl in getattr(pm.hook, row.hook).get_hookimpls():
                self._run_hook(row, impl, table[row.name])
        self._mark_conflicts(table)
        log.debug("built the %s table: %s", self.what, {kind: len(by_name) for kind, by_name in table.items()})
        return table

    @staticmethod
    def _run_hook(row: Kind, impl: Any, by_name: dict[str, list[Entry]]) -> None:
        """Register what one plugin's hook registers; a hook that raises registers nothing and fails its plugin.

        Whatever the hook raises (``SystemExit`` included; only Ctrl-C goes through) fails its plugin alone.
        A hook that is a generator or a coroutine function runs no code when called, so it would register
        nothing and look fine: it fails too.  Every staged name is checked once more against the kind's pattern
        (whole string: no trailing newline), and a name equal to another one ignoring case is a conflict.
        """
        rec = _manager.record_for(impl.plugin_name)
        dist, version = _manager.plugin_distribution(impl.plugin_name)
        ep_name = rec.name if rec is not None else impl.plugin_name
        staged: Staged = []

        def register(*args: Any, **kwargs: Any) -> None:
            staged.extend(row.stage(*args, **kwargs))

        with _manager.isolated(impl.plugin_name, f"in {row.hook}") as outcome:
            result = impl.function(register=register) if "register" in impl.argnames else impl.function()
            check_hook_result(row.hook, result)
            for name, _, aliases in staged:
                for key in (name, *aliases):
                    if not isinstance(key, str) or not row.pattern.fullmatch(key):
                        raise RegistrationError(
                            f"{row.words.noun} name {key!r} is not a valid name ({row.rule}; no spaces, tabs or "
                            "line breaks); register it under a valid name")
        if outcome.failed:
            return
        for name, obj, aliases in staged:
            entry = row.entry(row.name, name, obj, ep_name, dist, version, list(aliases), impl.plugin_name)
            for key in dict.fromkeys((name, *aliases)):
                variants = [p for k, ps in by_name.items() if k.casefold() == key.casefold() for p in ps]
                same = [p for p in variants if canonical(p.distribution) == canonical(dist)]
                if same:  # one distribution registering a name twice is that plugin's own bug
                    other = same[0].spelling(key)
                    spelled = ("" if other == key
                               else f" (as {other!r}: names that differ only in case are the same name)")
                    _manager.record_failure(impl.plugin_name, RegistrationError(
                        f"{row.words.noun} name {key!r} is already registered by {same[0].plugin} of the same "
                        f"distribution ({dist}){spelled}; rename one of them"))
                    continue
                by_name.setdefault(key, []).append(entry)
            if rec is not None:
                rec.components.append(f"{row.name}:{name}")
            if row.adopt is not None:
                row.adopt(entry)

    @staticmethod
    def _groups(by_name: dict[str, list[Entry]]) -> dict[str, list[tuple[str, Entry]]]:
        """Names equal ignoring case, together: casefolded name -> ``(spelling, entry)`` of every registration."""
        groups: dict[str, list[tuple[str, Entry]]] = {}
        for key in sorted(by_name):
            groups.setdefault(key.casefold(), []).extend((key, e) for e in by_name[key])
        return groups

    @classmethod
    def _mark_conflicts(cls, table: dict[str, dict[str, list[Entry]]]) -> None:
        """Each contested name on its providers' records, and each entry's rivals (in the order of its names).

        Names that differ only in case (``ABMIL`` beside ``abmil``) contest each other like one name.
        """
        for kind, by_name in table.items():
            groups = cls._groups(by_name)
            for group in groups.values():
                if len(group) > 1:
                    for key, p in group:
                        rec = _manager.record_for(p.key)
                        if rec is not None and f"{kind}:{key}" not in rec.conflicts:
                            rec.conflicts.append(f"{kind}:{key}")
            for entry in {id(e): e for providers in by_name.values() for e in providers}.values():
                entry.rivals = []
                for key in (entry.name, *entry.aliases):
                    for _, p in groups.get(key.casefold(), []):
                        if p is not entry and all(p is not r for r in entry.rivals):
                            entry.rivals.append(p)

    # ---------------------------------------------------------------- reading
    def row(self, kind: str) -> Kind:
        try:
            return self.rows[kind]
        except KeyError:
            raise UnknownComponentError(
                f"unknown {self.what} kind {kind!r}; the kinds are: {', '.join(self.rows)}."
            ) from None

    def names(self, kind: str) -> list[str]:
        """Canonical names registered for ``kind`` (aliases excluded), sorted; a contested name appears once."""
        self.row(kind)
        return sorted({e.name for providers in self._table()[kind].values() for e in providers})

    def keys(self, kind: str) -> list[str]:
        """Every name and alias of ``kind``, sorted (what "did you mean" chooses from)."""
        self.row(kind)
        return sorted(self._table()[kind])

    def entries(self, kind: str, pattern: str = "*") -> list[Entry]:
        """Every registration of ``kind`` whose name matches the glob (one per provider), by name and distribution."""
        self.row(kind)
        seen: dict[tuple[str, str], Entry] = {}
        for providers in self._table()[kind].values():
            for e in providers:
                if fnmatch.fnmatch(e.name, pattern):
                    seen.setdefault((e.name, canonical(e.distribution)), e)
        return [seen[k] for k in sorted(seen)]

    def providers(self, kind: str, name: str) -> list[Entry]:
        """The registrations of the bare ``name`` (or alias): one normally, several when it is contested."""
        self.row(kind)
        return list(self._table()[kind].get(name, []))

    def variants(self, kind: str, name: str) -> list[Entry]:
        """The registrations of ``name`` and of every name equal to it ignoring case (``ABMIL``, ``abmil``)."""
        self.row(kind)
        group = self._groups(self._table()[kind]).get(name.casefold(), [])
        return [e for _, e in group]

    def conflicts(self) -> list[tuple[str, str, list[Entry]]]:
        """``(kind, name, providers)`` for every name (or alias) that more than one distribution registers.

        Names equal ignoring case are one contested name: ``name`` is then the first spelling, and each
        provider's own is ``entry.spelling(name)``.
        """
        table = self._table()
        return [(kind, group[0][0], [e for _, e in group]) for kind in self.rows
                for group in self._groups(table[kind]).values() if len(group) > 1]

    # ---------------------------------------------------------------- lookup
    def parse(self, kind: str, ref: Any) -> tuple[str | None, str]:
        """``ref`` as ``(distribution or None, name)``; something that cannot be a name raises."""
        row = self.row(kind)
        if self.is_reference(kind, ref):
            return split_qualified(ref)
        raise row.unknown_error(_messages.not_a_name(row.words, ref, row.rule, self.keys(kind)))

    def is_reference(self, kind: str, ref: Any) -> bool:
        """Whether ``ref`` looks like a name of ``kind``, bare or qualified (registered or not)."""
        if not isinstance(ref, str):
            return False
        dist, name = split_qualified(ref)
        return bool(self.row(kind).pattern.fullmatch(name)) and (dist is None or bool(_DISTRIBUTION.fullmatch(dist)))

    def get(self, kind: str, ref: Any, *, lead: str | None = None) -> Entry:
        """The registration of ``name`` or ``"distribution:name"``; unknown and contested bare names raise.

        ``lead`` opens the message for an unknown bare name instead of "unknown KIND 'name': ...".
        """
        row = self.row(kind)
        dist, name = self.parse(kind, ref)
        found = self.providers(kind, name)
        if dist is None:
            variants = self.variants(kind, name) if found else []
            if len(found) == 1 and len(variants) == 1:
                return found[0]
            if found:  # several providers of the name, or of names equal to it ignoring case
                raise row.ambiguous_error(self.ambiguous_message(kind, name, variants))
            raise row.unknown_error(self.unknown_message(kind, name, lead=lead))
        chosen = [e for e in found if canonical(e.distribution) == canonical(dist)]
        if chosen:
            return chosen[0]
        raise row.unknown_error(self.qualified_unknown_message(kind, dist, name, found))

    # ---------------------------------------------------------------- messages
    def ambiguous_message(self, kind: str, name: str, found: list[Entry]) -> str:
        return _messages.ambiguous(self.row(kind).words, name, found)

    def unknown_message(self, kind: str, name: str, *, lead: str | None = None) -> str:
        words = self.row(kind).words
        recorded = _recorded.get().get((kind, name))
        if recorded is not None and recorded[0] not in ("", "?"):
            dist, version = recorded
            return _messages.recorded_gone(words, name, missing_provider_text(kind, name, dist, version))
        return _messages.unknown(words, name, self.keys(kind), _manager.failed_plugins(), lead)

    def qualified_unknown_message(self, kind: str, dist: str, name: str, found: list[Entry]) -> str:
        words = self.row(kind).words
        if found:
            return _messages.wrong_distribution(words, dist, name, found)
        record = _recorded.get().get((kind, name))  # what a run or checkpoint recorded, when it names this dist
        if record is not None and valid_distribution(record[0]) and canonical(record[0]) == canonical(dist):
            explained = missing_provider_text(kind, name, dist, record[1])
        else:  # a distribution typed in a recipe: nothing recorded it, so nothing to install is suggested
            explained = missing_provider_text(kind, name, dist, None, recorded=False)
        return _messages.missing_distribution(words, dist, name, self.keys(kind), explained)
