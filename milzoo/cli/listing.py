"""The text tables of ``milzoo list`` and ``milzoo plugins`` (columns sized to their longest cell)."""

from __future__ import annotations

from typing import Any, Sequence


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, each as wide as its longest cell; the last column is not padded."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip() for r in rows]


def conflict_lines() -> list[str]:
    """One line per contested name: who registers it and how a recipe chooses."""
    from milzoo.registry import _table as registry

    out = []
    for kind, name, found in registry.conflicts():
        dists = [e.distribution for e in found]
        choices = " or ".join(f'"{e.distribution}:{e.spelling(name)}"' for e in found)
        spellings = list(dict.fromkeys(e.spelling(name) for e in found))
        if len(spellings) > 1:  # names equal ignoring case are one name
            shown = " and ".join(repr(n) for n in spellings)
            out.append(f"  {kind} {shown} (equal ignoring case) are registered by {', '.join(dists)}: a bare "
                       f"{' or '.join(repr(n) for n in spellings)} is an error; write {choices}")
            continue
        out.append(f"  {kind} {name!r} is registered by {', '.join(dists)}: a bare {name!r} is an error; "
                   f"write {choices}")
    if out:
        out.insert(0, "conflicts (a name with two providers is never chosen by order):")
    return out


def format_components(items: list[dict[str, Any]]) -> str:
    if not items:
        return "(nothing registered)"
    rows = []
    for it in items:
        summary = it["summary"]
        if it["aliases"]:
            summary += f" (aliases: {', '.join(it['aliases'])})"
        if it.get("conflicts"):
            summary = f"[conflict: use {it['qualified']}] {summary}"
        rows.append([it["kind"], it["name"], it["distribution"], summary])
    lines = table(rows)
    extra = conflict_lines()
    return "\n".join(lines + ([""] + extra if extra else []))


def import_time(seconds: float | None, status: str) -> str:
    """``12 ms``, ``9.0 s``; ``-`` for a plugin that was not imported (disabled)."""
    if status == "disabled" or seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def format_plugins(records: list[dict[str, Any]]) -> str:
    rows = [["name", "distribution", "version", "status", "import", "error"]]
    slow = []
    for r in records:
        status = r["status"] + (" (conflict)" if r.get("conflicts") else "")
        rows.append([r["name"], r["distribution"], r["version"], status, import_time(r.get("import_s"), r["status"]),
                     r["error"]])
        if (r.get("import_s") or 0) > 1.0:
            slow.append(f"note: {r['name']} ({r['distribution']}) took {r['import_s']:.1f} s to import, and every "
                        "milzoo command that loads plugins waits for it; report it to its author, or skip it with "
                        f"MILZOO_DISABLE_PLUGINS={r['distribution']}.")
    extra = conflict_lines() + moved_import_lines(records) + slow
    return "\n".join(table(rows) + ([""] + extra if extra else []))


def moved_import_lines(records: list[dict[str, Any]]) -> list[str]:
    """A note per plugin that imports core modules by their old paths (they work; its author should update)."""
    from milzoo import _moved

    used = _moved.uses_by_package()
    lines = []
    for r in records:
        olds = used.get((r.get("module") or "").split(".")[0], [])
        if olds and r["distribution"] != "milzoo":
            shown = ", ".join(f"{o} (now {_moved.MOVED_MODULES[o][0]})" for o in olds)
            lines.append(f"note: {r['distribution']} imports moved milzoo modules: {shown}. They keep working for "
                         "now; the plugin's author should import from the new places.")
    return lines
