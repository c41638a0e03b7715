"""Markdown for the studies' reports: numbers, tables and generated sections.

Every study writes its part of ``RESULTS.md`` between two markers of its
own; everything outside the markers is hand-written and kept.
"""

from __future__ import annotations

import math
from pathlib import Path

TITLE = "lyapopt benchmarks"


def fmt(x: float | None, spec: str = ".4g") -> str:
    """A number for a table: ``—`` for none, ``nan`` and ``inf`` spelled out."""
    if x is None:
        return "—"
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else "inf"
    return format(x, spec)


def table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """A Markdown table's lines; ``align`` is one ``l`` or ``r`` per column
    (default: the first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:"}
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(marks[a] for a in align) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def replace_section(text: str, generated: str, begin: str, end: str) -> str | None:
    """``text`` with its part from ``begin`` to ``end`` replaced by ``generated``
    (which carries both markers); ``None`` when ``text`` lacks a marker."""
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    return head + generated.rstrip("\n") + rest.split(end, 1)[1]


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replaces the part of ``path`` from ``begin`` to ``end`` by ``section``
    (which carries both markers), keeping the hand-written rest. Where
    ``path`` has no such part, the section is appended; where there is no
    ``path``, it starts one, with a place for the analysis."""
    if not path.exists():
        path.write_text(f"# {TITLE}\n\n{section}\n## Analysis\n\n(to be written)\n")
        return
    old = path.read_text()
    new = replace_section(old, section, begin, end)
    path.write_text(new if new is not None else old.rstrip("\n") + "\n\n" + section)
