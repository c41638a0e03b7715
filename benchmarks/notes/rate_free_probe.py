"""A first probe of the held-out rate on ``lm_spikes``' model and recipe.

``stabilize(recipe direction, rate_every=4)`` started from 0.1x, 1x and 10x
the recipe's rate, against the recipe at the same three rates, on a small
``lm_spikes`` model. Not a study: one seed, a few hundred steps.

    python -m benchmarks.notes.rate_free_probe [steps]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import numpy as np
import optax

import lyapopt
from benchmarks.lm_spikes.peers import adamw_recipe
from benchmarks.lm_spikes.settings import Settings
from benchmarks.optimizers import LYAPOPT_EXTRAS, Optimizer
from benchmarks.train import Problem, Runner

SETTINGS = Settings(
    layers=2,
    width=32,
    heads=1,
    mlp_ratio=2,
    context=64,
    batch=16,
    steps=300,
    eval_every=100,
    eval_windows=64,
    seeds=1,
)
RATE = 0.01  # lm_spikes' tuned 1x (its full model), the recipe's peak rate
MULTIPLIERS = (0.1, 1.0, 10.0)


def shape(steps: int) -> optax.Schedule:
    """The recipe's schedule shape: warmup over 5%, cosine to a tenth."""
    return optax.warmup_cosine_decay_schedule(
        0.0, 1.0, max(1, steps // 20), steps, end_value=0.1
    )


def rate_free(lr: Any, steps: int) -> optax.GradientTransformation:
    """The recipe's direction at a constant rate, its shape on the measured rate."""
    direction = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(lr, b2=0.95, weight_decay=0.1),
    )
    return lyapopt.stabilize(
        direction, rate_every=4, rate_shape=shape(steps), curvature_every=50
    )


def run(runner: Runner, lr: float, settings: Settings) -> dict[str, Any]:
    steps = settings.steps
    params, state, lr_arg = runner.init(0, lr)
    idx = runner.problem.indices(0, steps)
    start = time.perf_counter()
    bpb, batch, rates = [], [], []
    for k in range(0, steps, settings.eval_every):
        rows = idx[k : k + settings.eval_every]
        params, state, values, _ = runner.run(params, state, lr_arg, rows)
        batch.append(np.asarray(values))
        bpb.append(float(runner.evaluate(params, state)["metric"]))
        rates.append(float(lyapopt.stats(state).get("rate", np.nan)))
    seconds = time.perf_counter() - start
    stats = {k: float(v) for k, v in lyapopt.stats(state).items()}
    return {
        "lr": lr,
        "bpb": bpb,
        "rate": rates,
        "seconds": seconds,
        "final_batch_loss": float(np.concatenate(batch)[-20:].mean()),
        "stats": {
            k: stats[k]
            for k in (
                "rate",
                "rate_scale",
                "rate_measurements",
                "rate_rejected",
                "violations",
            )
            if k in stats
        },
    }


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else SETTINGS.steps
    settings = dataclasses.replace(SETTINGS, steps=steps)
    problem = Problem(settings.task())
    out: dict[str, Any] = {"num_params": problem.num_params(), "runs": {}}
    peers = {
        "recipe": Optimizer("recipe", adamw_recipe),
        "stabilize(recipe direction, rate_every=4)": Optimizer(
            "rate", rate_free, extras=(*LYAPOPT_EXTRAS, "grad")
        ),
    }
    for name, opt in peers.items():
        runner = Runner(problem, opt)
        for m in MULTIPLIERS:
            result = run(runner, RATE * m, settings)
            out["runs"][f"{name} @ {m:g}x"] = result
            print(f"{name} @ {m:g}x: {json.dumps(result)}", flush=True)
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
