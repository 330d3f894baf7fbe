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
        choices = " or ".join(f'"{d}:{name}"' for d in dists)
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


def format_plugins(records: list[dict[str, Any]]) -> str:
    rows = [["name", "distribution", "version", "status", "error"]]
    for r in records:
        status = r["status"] + (" (conflict)" if r.get("conflicts") else "")
        rows.append([r["name"], r["distribution"], r["version"], status, r["error"]])
    extra = conflict_lines() + moved_import_lines(records)
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
