"""What a provider table says when a name resolves to nothing, or to more than one provider.

One builder per situation serves every kind; a :class:`Wording` says how messages speak of a kind
(``pooling`` that distributions *provide*, ``recipe`` that they *ship*) and how a user qualifies a name.
The builders only format what they are given (entries, known names, failed plugins).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from milzoo._untrusted import shown

if TYPE_CHECKING:
    from milzoo.registry._manager import PluginRecord
    from milzoo.registry._providers import Entry


@dataclass(frozen=True)
class Wording:
    """How messages speak of one kind.  The defaults are those of components (``name = "..."`` in a recipe)."""

    #: what one registration is called: "pooling", "pretrained model", "recipe"
    noun: str
    #: what a distribution does with one: base form, third person, past participle
    verbs: tuple[str, str, str] = ("provide", "provides", "provided")
    #: how to say which provider is meant; ``{choices}`` are the qualified forms, each written as ``choice``
    qualify: str = "by qualifying the name (name = {choices} in the recipe, or the same string in Python)"
    choice: str = '"{qualified}"'
    #: the known names after "did you mean" (``{plural}``, ``{names}``, ``{count}``)
    known: str = " Known {plural}: {names}."
    #: the command that lists every conflict of this kind
    catalogue: str = "`milzoo plugins`"
    #: whether a provider is described with its entry point ("milzoo-abmil 0.1 (entry point abmil)")
    entry_points: bool = True

    @property
    def plural(self) -> str:
        return self.noun + ("es" if self.noun.endswith("s") else "s")


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`` Did you mean 'a' or 'b'?`` (close names, and names whose last ``/`` part is close), or ``""``."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    tails = {k.rsplit("/", 1)[-1]: k for k in known}  # "abmil_musk1" -> "classic/abmil_musk1"
    close += [tails[t] for t in difflib.get_close_matches(name.rsplit("/", 1)[-1], list(tails), n=2, cutoff=0.6)
              if tails[t] not in close]
    return f" Did you mean {' or '.join(repr(c) for c in close[:3])}?" if close else ""


def known_text(words: Wording, known: Sequence[str]) -> str:
    return words.known.format(plural=words.plural, names=", ".join(known) or "(none)", count=len(known))


def plugins_text(words: Wording, failed: Sequence[PluginRecord]) -> str:
    """The plugins that failed to load (they may be the provider), or where a missing provider comes from."""
    if not failed:
        return " If it comes from a plugin, pip install that plugin (`milzoo plugins` lists those installed)."
    details = "; ".join(f"{r.name} ({r.distribution} {r.version}): {r.error}" for r in failed)
    return (f" Some plugins failed to load and may {words.verbs[0]} it: {details}. "
            "Fix or reinstall them (`milzoo plugins` shows their status).")


def _provider(words: Wording, e: Entry) -> str:
    if not words.entry_points:
        return f"{e.distribution} {e.version}"
    return f"{e.distribution} {e.version} (entry point {e.plugin})" if e.distribution != "milzoo" \
        else f"milzoo {e.version} (built in)"


def _spelled(e: Entry, name: str) -> str:
    spelling = e.spelling(name)
    return "" if spelling == name else f" as {spelling!r}"


def ambiguous(words: Wording, name: str, found: Sequence[Entry]) -> str:
    """A bare name that several distributions register: who they are, and the two ways to choose."""
    listed = " and ".join(_provider(words, e) + _spelled(e, name) for e in found)
    choices = " or ".join(words.choice.format(qualified=f"{e.distribution}:{e.spelling(name)}") for e in found)
    other = ([e.distribution for e in found if e.distribution != "milzoo"] or [found[-1].distribution])[-1]
    case = (" Names that differ only in case are one name here, so that a recipe cannot mean one and get the other."
            if any(e.spelling(name) != name for e in found) else "")
    return (
        f"{words.noun} {name!r} is {words.verbs[2]} by {len(found)} installed distributions: {listed}.{case} "
        f"milzoo does not pick one by itself. Say which one you mean {words.qualify.format(choices=choices)}, or "
        "remove the "
        f"one you do not want (`pip uninstall {other}`, or MILZOO_DISABLE_PLUGINS={other}). {words.catalogue} "
        "lists every conflict."
    )


def unknown(words: Wording, name: str, known: Sequence[str], failed: Sequence[PluginRecord],
            lead: str | None = None) -> str:
    """A bare name nothing registers: close names, the known ones, and the plugins that failed to load.

    ``lead`` replaces the opening ("unknown pooling 'x': ...") where the caller knows more, e.g. that no file
    of that name exists either.
    """
    head = lead or f"unknown {words.noun} {name!r}: no installed distribution {words.verbs[1]} one by that name."
    return head + did_you_mean(name, known) + known_text(words, known) + plugins_text(words, failed)


def recorded_gone(words: Wording, name: str, explained: str) -> str:
    """A bare name that a run or checkpoint records, whose recorded provider is gone (``explained`` says why)."""
    return f"unknown {words.noun} {name!r}. {explained}"


def wrong_distribution(words: Wording, dist: str, name: str, found: Sequence[Entry]) -> str:
    """``dist:name`` where other distributions, but not ``dist``, register ``name``."""
    where = ", ".join(e.qualified for e in found)
    return (f"the distribution {shown(dist)} {words.verbs[1]} no {words.noun} {name!r}; installed providers of that "
            f"name: {where}. Fix the distribution part of the name.")


def missing_distribution(words: Wording, dist: str, name: str, known: Sequence[str], explained: str) -> str:
    """``dist:name`` that nothing registers; ``explained`` says why ``dist`` provides nothing here."""
    return (f"no installed distribution {shown(dist)} {words.verbs[1]} the {words.noun} {name!r}."
            f"{did_you_mean(name, known)} {explained}")


def not_a_name(words: Wording, ref: Any, rule: str, known: Sequence[str]) -> str:
    """Something that cannot be a name of this kind at all."""
    close = did_you_mean(ref, known) if isinstance(ref, str) else ""
    return (f"{shown(ref)} is not a valid {words.noun} name ({rule}, optionally qualified as "
            f"distribution:name).{close}{known_text(words, known)}")
