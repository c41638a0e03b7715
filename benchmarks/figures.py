"""Figures for the studies' reports: matplotlib off-screen, one line style
for lyapopt and one for its peers, and paths relative to the report."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_styles(
    names: list[str],
    ours: Callable[[str], bool],
    widths: tuple[float, float] = (2.2, 1.2),
) -> dict[str, dict[str, Any]]:
    """One colour per name (tab20, in order); lyapopt's lines solid and
    ``widths[0]`` wide, the peers' dashed and ``widths[1]`` wide."""
    colors = pyplot().get_cmap("tab20").colors
    return {
        name: {
            "color": colors[i % len(colors)],
            "linestyle": "-" if ours(name) else "--",
            "linewidth": widths[0] if ours(name) else widths[1],
        }
        for i, name in enumerate(names)
    }


def relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (the report's folder), with ``/``."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def loss_limits(ax: Any, losses: list[float]) -> None:
    """A loss axis from 0.8x the lowest of the finite ``losses`` to the
    highest, but at most 3x their median: a blow-up leaves the rest legible."""
    if losses:
        ax.set_ylim(0.8 * min(losses), min(max(losses), 3 * float(np.median(losses))))


def save(fig: Any, path: Path, rel: Path, dpi: int = 110) -> str:
    """Lays ``fig`` out, writes it to ``path``, closes it; returns ``path``
    relative to ``rel`` (the report's folder)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return relative(path, rel)
