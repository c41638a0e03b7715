"""A study of the benchmark, and the one pipeline that runs every study.

A study is a package of a few modules, one idea each: its settings, its
runs (settings in, a JSON-able dict out), and its report (the goals, the
Markdown section and the plots, from the JSON alone, so that a report can
be rebuilt without training). The suite is one too, in two modules
(``suite.py``, ``report.py``); ``lm_spikes/`` is the model of a package.

The command line knows a study only by its :class:`Study` record, and
runs every selected study through :func:`run`: run it (or read its JSON
back with ``--from-json``), add the metadata, write ``<name>.json``, draw
its plots, rewrite its section of ``RESULTS.md`` between its own markers,
and print its goals.

To add a study ``NAME``:

1. write the package ``benchmarks/NAME/``: ``settings.py`` (a frozen
   ``Settings`` dataclass and its ``QUICK`` smoke-test instance),
   ``runs.py`` (``run(settings) -> dict``), ``report.py`` (``goals``,
   ``markdown`` between ``BEGIN``/``END`` markers naming the study, ``plot``),
   with shared helpers from :mod:`benchmarks.markdown` and
   :mod:`benchmarks.figures`;
2. in its ``__init__.py``, describe it: ``STUDY = package(NAME, run,
   Settings, QUICK, report)`` (or ``Study(...)`` in full, for a study of
   several parts);
3. add ``STUDY`` to :data:`benchmarks.cli.STUDIES`, the one registry.

``python -m benchmarks --tasks NAME`` then runs it (``--quick`` at its
quick settings), and ``--from-json`` rebuilds its section from its JSON.
Its tests call :func:`benchmarks.cli.main` the same way
(``tests/test_lm_spikes.py`` shows how).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from benchmarks.machine import machine
from benchmarks.markdown import write_section

Results = dict[str, Any]


class Goal(NamedTuple):
    """One goal of a study: what was measured, and whether it holds
    (``None``: measured against no threshold)."""

    goal: str
    measured: str
    holds: bool | None


@dataclass(frozen=True)
class Study:
    """A study as the command line runs it.

    ``run(parts, quick)`` runs the selected ``parts`` (shrunk where
    ``quick``) and returns the JSON; it may put the study's own metadata in
    its ``meta``, which the pipeline completes. ``goals``, ``plot`` and
    ``markdown`` read that JSON alone; ``plot(results, out, rel)`` writes
    the PNGs into ``out`` and returns their paths relative to ``rel`` (the
    report's folder), which ``markdown(results, plots)`` links. The section
    it returns starts with ``begin`` and ends with ``end``.
    """

    name: str
    run: Callable[[tuple[str, ...], bool], Results]
    goals: Callable[[Results], list[Goal]]
    plot: Callable[[Results, Path, Path], dict[str, Any]]
    markdown: Callable[[Results, dict[str, Any]], str]
    begin: str
    end: str
    # The names `--tasks` selects it by (default: its own name), and those of
    # them `--quick` runs (default: all).
    parts: tuple[str, ...] = ()
    quick_parts: tuple[str, ...] | None = None
    filename: str = ""  # its JSON in the results folder (default: NAME.json)
    indent: int | None = None  # the JSON's (None: compact)

    def __post_init__(self) -> None:
        if not self.parts:
            object.__setattr__(self, "parts", (self.name,))
        if self.quick_parts is None:
            object.__setattr__(self, "quick_parts", self.parts)
        if not self.filename:
            object.__setattr__(self, "filename", f"{self.name}.json")


def package(
    name: str,
    run: Callable[[Any], Results],
    settings: Callable[[], Any],
    quick: Any,
    report: ModuleType,
) -> Study:
    """A study of one part, from its package: ``run(quick)`` under
    ``--quick``, else ``run(settings())``; its ``report`` module's ``goals``,
    ``plot``, ``markdown`` and ``BEGIN``/``END`` markers."""
    return Study(
        name=name,
        run=lambda parts, is_quick: run(quick if is_quick else settings()),
        goals=report.goals,
        plot=report.plot,
        markdown=report.markdown,
        begin=report.BEGIN,
        end=report.END,
    )


@dataclass(frozen=True)
class Job:
    """Where and how the command line runs its studies.

    ``source`` is the folder of saved JSONs to rebuild from (``--from-json``),
    ``None`` to run; ``md`` is the report whose sections are rewritten.
    """

    out: Path
    md: Path
    quick: bool
    command: str
    source: Path | None = None


def run(study: Study, parts: tuple[str, ...], job: Job) -> Results | None:
    """Runs ``study`` (or reads it back), then writes its JSON, plots and
    section; ``None`` when there is nothing to rebuild from."""
    path = job.out / study.filename
    if job.source is not None:
        saved = job.source / study.filename
        if not saved.exists():
            print(f"{study.name}: no {saved} to rebuild from; skipped")
            return None
        results = json.loads(saved.read_text())
        if saved.resolve() != path.resolve():
            _dump(study, results, path)
    else:
        started = datetime.datetime.now(datetime.timezone.utc)
        start = time.perf_counter()
        results = study.run(parts, job.quick)
        results["meta"] = (
            {
                "command": job.command,
                "started": started.isoformat(timespec="seconds"),
                "wall_seconds": time.perf_counter() - start,
                "quick": job.quick,
            }
            | results.get("meta", {})
            | {"machine": machine()}
        )
        _dump(study, results, path)
    plots = study.plot(results, job.out, job.md.parent)
    write_section(job.md, study.markdown(results, plots), study.begin, study.end)
    for g in study.goals(results):
        mark = {True: "holds", False: "MISSED", None: "measured"}[g.holds]
        print(f"[{mark}] {g.goal}: {g.measured}")
    return results


def _dump(study: Study, results: Results, path: Path) -> None:
    path.write_text(json.dumps(results, indent=study.indent, allow_nan=True))
