"""Runs a part of the study through the benchmarks' pipeline.

    python -m benchmarks.lm_instability [--quick] [--out DIR] [--triggers NAME ...]
        [--peers NAME ...] [--steps N] [--grid-points N]

Writes ``DIR/lm_instability.json``, the figures, and the study's section of
``DIR/RESULTS.md``; the whole study at its defaults is
``python -m benchmarks --tasks lm_instability``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks import study
from benchmarks.lm_instability import QUICK, STUDY, Settings, run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lm_instability")
    p.add_argument("--quick", action="store_true", help="the smoke test's settings")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--triggers", nargs="+", default=None, help="(default: all)")
    p.add_argument("--peers", nargs="+", default=None, help="(default: all)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--grid-points", type=int, default=None)
    a = p.parse_args(argv)
    over = {
        "triggers": tuple(a.triggers) if a.triggers else None,
        "peers": tuple(a.peers) if a.peers else None,
        "steps": a.steps,
        "grid_points": a.grid_points,
    }
    settings = replace(
        QUICK if a.quick else Settings(),
        **{k: v for k, v in over.items() if v is not None},
    )
    out = a.out or Path("lm-instability-quick" if a.quick else "lm-instability")
    out.mkdir(parents=True, exist_ok=True)
    words = sys.argv[1:] if argv is None else argv
    job = study.Job(
        out=out,
        md=out / "RESULTS.md",
        quick=a.quick,
        command=shlex.join(["python", "-m", "benchmarks.lm_instability", *words]),
    )
    part = replace(STUDY, run=lambda parts, quick: run(settings))
    study.run(part, part.parts, job)


if __name__ == "__main__":
    main()
