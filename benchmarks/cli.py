"""The command line: run the studies, write the JSON, the plots and RESULTS.md.

Every study goes through one pipeline (:func:`benchmarks.study.run`);
:data:`STUDIES` is the one place where a study is registered (see
:mod:`benchmarks.study` for how to add one).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from benchmarks import lm_instability, lm_spikes, study, suite
from benchmarks.study import Study

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
DEFAULT_MD = HERE / "RESULTS.md"
QUICK_OUT = Path("benchmarks-quick")

# Run, and written into RESULTS.md, in this order.
STUDIES: tuple[Study, ...] = (suite.STUDY, lm_spikes.STUDY, lm_instability.STUDY)


def selected(names: list[str], quick: bool) -> list[tuple[Study, tuple[str, ...]]]:
    """Each study with a part among ``names`` (those ``--quick`` runs, where
    ``quick``), and those parts, in the order given."""
    out = []
    for s in STUDIES:
        runs = s.quick_parts if quick else s.parts
        parts = tuple(n for n in dict.fromkeys(names) if n in runs)
        if parts:
            out.append((s, parts))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the selected studies; returns each one's JSON by the study's name."""
    parts = [p for s in STUDIES for p in s.parts]
    quick_parts = [p for s in STUDIES for p in s.quick_parts]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="lyapopt against optax peers: cost, quality, robustness.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test (a few minutes): {', '.join(quick_parts)}, shrunk",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=parts,
        default=parts,
        metavar="TASK",
        help="what to run: "
        + "; ".join(f"{s.name}: {', '.join(s.parts)}" for s in STUDIES)
        + " (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for the JSONs and the PNGs (default {DEFAULT_OUT}, "
        f"or ./{QUICK_OUT} with --quick)",
    )
    parser.add_argument(
        "--results-md",
        type=Path,
        default=None,
        help=f"the Markdown report to (re)write (default {DEFAULT_MD}, "
        "or OUT/RESULTS.md with --quick)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="rebuild the plots and the report, no training, from the JSONs "
        "saved in this folder (or beside this results.json): "
        + ", ".join(s.filename for s in STUDIES),
    )
    args = parser.parse_args(argv)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    md = args.results_md or (out / "RESULTS.md" if args.quick else DEFAULT_MD)
    todo = selected(args.tasks, args.quick)
    if not todo:
        parser.error(f"--quick runs only {', '.join(quick_parts)}")
    source = args.from_json
    if source is not None and not source.is_dir():
        source = source.parent
    words = sys.argv[1:] if argv is None else argv
    job = study.Job(
        out=out,
        md=md,
        quick=args.quick,
        command=shlex.join(["python", "-m", "benchmarks", *words]),
        source=source,
    )
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for s, chosen in todo:
        done = study.run(s, chosen, job)
        if done is not None:
            results[s.name] = done
    print(f"results: {out.resolve()}\nreport: {md.resolve()}")
    return results
