"""Runs the study standalone.

    python -m benchmarks.lm_instability [--quick] [--out DIR]

Writes ``DIR/lm_instability.json``, the figures, and ``DIR/lm_instability.md``
(the section the lead will place in RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks import lm_instability as study_mod


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lm_instability")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--triggers", nargs="*", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--grid-points", type=int, default=None)
    p.add_argument("--peers", nargs="*", default=None, help="peer names (default: all)")
    a = p.parse_args()
    out = a.out or Path("lm-instability-quick" if a.quick else "lm-instability")
    settings = study_mod.QUICK if a.quick else study_mod.Settings()
    over = {
        "triggers": tuple(a.triggers) if a.triggers else None,
        "steps": a.steps,
        "grid_points": a.grid_points,
        "peers": tuple(a.peers) if a.peers else None,
    }
    settings = replace(settings, **{k: v for k, v in over.items() if v is not None})
    start = time.perf_counter()
    study = study_mod.run_study(settings)
    meta = {
        "command": shlex.join(
            ["python", "-m", "benchmarks.lm_instability", *sys.argv[1:]]
        ),
        "wall_seconds": time.perf_counter() - start,
        "quick": a.quick,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{study_mod.NAME}.json").write_text(json.dumps(study | {"meta": meta}))
    plots = study_mod.plot(study, out, out)
    study_mod.write(
        out / f"{study_mod.NAME}.md", study_mod.markdown(study, meta, plots)
    )
    for g in study_mod.goals(study):
        mark = {True: "holds", False: "MISSED", None: "measured"}[g["holds"]]
        print(f"[{mark}] {g['goal']}: {g['measured']}")


if __name__ == "__main__":
    main()
