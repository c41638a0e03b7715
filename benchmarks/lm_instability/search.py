"""The search for settings where the AdamW recipe spikes (recipe runs only).

    python -m benchmarks.lm_instability.search [--steps N] [--layers L]
        [--width W] [--heads H] [--context C] [--batch B] NAME ...

Each NAME is a key of :data:`CANDIDATES`; one line per run is printed and
appended to ``benchmarks/notes/lm_instability_search.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks.lm_instability.peers import PEERS, RECIPE
from benchmarks.lm_instability.runs import lane, measure, runner
from benchmarks.lm_instability.settings import Settings, Trigger, bursts

LOG = Path(__file__).resolve().parents[1] / "notes" / "lm_instability_search.jsonl"
BAD = ((300, "repeat"), (500, "random"), (700, "repeat"), (900, "random"))
# Bursts: three bad batches in a row (a garbage document over several batches).
# The search's BURST4 starts on multiples of 50; the study's BURSTS does not
# (see ``settings.BURSTS``).
BURST = bursts((300, "repeat"), (600, "random"))
BURST4 = bursts((200, "repeat"), (400, "random"), (600, "repeat"), (800, "random"))


def _grid(prefix: str, rates, **kw) -> dict[str, Trigger]:
    return {f"{prefix}@{lr:g}": Trigger(f"{prefix}@{lr:g}", lr, **kw) for lr in rates}


NOFIX = {"warmup": False, "clip": False}
CANDIDATES: dict[str, Trigger] = {
    **_grid("recipe", (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)),
    **_grid("nofix", (0.01, 0.03, 0.1, 0.3, 1.0, 3.0), **NOFIX),
    **_grid(
        "nofix_b2_999_eps12", (0.01, 0.03, 0.1, 0.3, 1.0), b2=0.999, eps=1e-12, **NOFIX
    ),
    **_grid(
        "nofix_b2_999_eps16", (0.01, 0.03, 0.1, 0.3, 1.0), b2=0.999, eps=1e-16, **NOFIX
    ),
    **_grid("recipe_b2_999_eps16", (0.01, 0.03, 0.1), b2=0.999, eps=1e-16),
    **_grid("recipe_bad", (0.01, 0.03), bad=BAD),
    **_grid(
        "nofix_b2_999_eps16_burst", (0.03, 0.1), b2=0.999, eps=1e-16, bad=BURST, **NOFIX
    ),
    **_grid("recipe_burst", (0.03, 0.1), bad=BURST),
    **_grid("recipe_burst4", (0.03, 0.1), bad=BURST4),
    **_grid("nofix_burst4", (0.03, 0.1, 0.3), bad=BURST4, **NOFIX),
    **_grid("nofix_burst", (0.03, 0.1), bad=BURST, **NOFIX),
    **_grid("nofix_bf16norm", (0.03, 0.1, 0.3, 1.0), norm_dtype="bfloat16", **NOFIX),
    **_grid(
        "nofix_b2_999_eps16_bf16norm",
        (0.03, 0.1, 0.3),
        b2=0.999,
        eps=1e-16,
        norm_dtype="bfloat16",
        **NOFIX,
    ),
    **_grid("nofix_bad", (0.01, 0.03), bad=BAD, **NOFIX),
    **_grid(
        "nofix_b2_999_eps16_bad",
        (0.01, 0.03, 0.1),
        b2=0.999,
        eps=1e-16,
        bad=BAD,
        **NOFIX,
    ),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("names", nargs="+")
    for f in ("steps", "layers", "width", "heads", "context", "batch", "seed"):
        p.add_argument(f"--{f}", type=int)
    p.add_argument("--peer", default=RECIPE)
    a = p.parse_args()
    over = {
        f: getattr(a, f)
        for f in ("steps", "layers", "width", "heads", "context", "batch", "seed")
        if getattr(a, f) is not None
    }
    settings = replace(Settings(), **over)
    for name in a.names:
        t = CANDIDATES[name]
        r = runner(settings, t, PEERS[a.peer])
        run = lane(r, t.lr, settings.seed, settings.steps)
        rec = measure(run, t, [s for s, _ in t.bad])
        ms = 1e3 * rec["seconds"] / settings.steps
        row = {
            "name": name,
            "peer": a.peer,
            "settings": {k: v for k, v in asdict(settings).items() if k in over},
            "spikes": rec["spikes"],
            "events": rec["events"][:12],
            "recovery": rec["recovery"][:12],
            "diverged": rec["diverged"],
            "final_bpb": rec["final_bpb"],
            "bad_batches": rec["bad_batches"],
            "ms_per_step": ms,
            "loss_every_100": [
                rec["batch_loss"][i] for i in range(0, len(rec["batch_loss"]), 100)
            ],
        }
        with LOG.open("a") as f:
            f.write(json.dumps(row, default=lambda x: None if x != x else x) + "\n")
        fb = rec["final_bpb"]
        print(
            f"{name:34s} spikes {rec['spikes']:4d} events {len(rec['events']):3d} "
            f"div {rec['diverged']!s:5s} bpb {fb if math.isfinite(fb) else float('nan'):.3f} "
            f"{ms:.1f} ms/step ev {rec['events'][:8]} "
            f"bad {[round(b['next_5_max_ratio'], 2) for b in rec['bad_batches']]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
