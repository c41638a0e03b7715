"""Where the stabilised step's cost goes, on ``lm_spikes``' model and on the
suite's tasks: ``python -m benchmarks.lm_spikes`` prints both tables."""

from __future__ import annotations

from typing import Any

import lyapopt
from benchmarks.lm_spikes.peers import BASELINE, adamw_recipe, peers
from benchmarks.lm_spikes.settings import Settings
from benchmarks.markdown import table
from benchmarks.optimizers import LYAPOPT_EXTRAS, OPTIMIZERS, Optimizer
from benchmarks.tasks import TASKS
from benchmarks.train import CHUNK, Problem, Runner, time_steps

COST_PARTS: dict[str, dict[str, Any]] = {
    "cap every step, no guard": {"guard": None},
    "cap every 10, no guard": {"curvature_every": 10, "guard": None},
    "guard alone": {"safety": None},
    "cap every 10 and guard": {"curvature_every": 10},
    "cap every 50 and guard": {"curvature_every": 50},
}


def cost_breakdown(settings: Settings, rounds: int = 6) -> str:
    """The recipe against ``stabilize(recipe, **options)`` for each of
    :data:`COST_PARTS`, at 1x the study's best rate (0.01), interleaved; a
    Markdown table of milliseconds per step and ratios."""
    problem = Problem(settings.task(chunk=CHUNK))
    extras = (*LYAPOPT_EXTRAS, "grad")
    entries = {BASELINE: (Runner(problem, peers()[0].optimizer), 0.01)}
    for name, options in COST_PARTS.items():

        def make(lr: Any, n: int, options: dict[str, Any] = options) -> Any:
            return lyapopt.stabilize(adamw_recipe(lr, n), **options)

        entries[name] = (Runner(problem, Optimizer(name, make, extras)), 0.01)
    per_step = time_steps(entries, rounds)
    base = per_step[BASELINE]["median"]
    rows = [
        [f"`{n}`", f"{1e3 * t['median']:.1f}", f"{t['median'] / base:.2f}"]
        for n, t in per_step.items()
    ]
    return "\n".join(table(["step", "ms", "x recipe"], rows))


# lyapopt's step with the curvature every 50 steps on the suite's four
# tasks, against optax.adamw and lyapopt's defaults (goal 4 asks for them too).
SUITE_COST = ("optax.adamw", "lyapunov_adam", "lyapunov_adam/every10")


def suite_cost(rounds: int = 5, tasks: tuple[str, ...] = tuple(TASKS)) -> str:
    """``lyapunov_adam(curvature_every=50)`` on each task of the suite, timed
    interleaved with :data:`SUITE_COST` at their default rates; a Markdown
    table of the ratios to ``optax.adamw``."""
    every50 = Optimizer(
        "lyapunov_adam/every50",
        lambda lr, n: lyapopt.lyapunov_adam(lr, curvature_every=50),
        LYAPOPT_EXTRAS,
        default_lr=OPTIMIZERS["lyapunov_adam"].default_lr,
    )
    opts = [*(OPTIMIZERS[n] for n in SUITE_COST), every50]
    rows = []
    for task in (TASKS[t] for t in tasks):
        problem = Problem(task)
        entries = {o.name: (Runner(problem, o), o.default_lr or 1e-3) for o in opts}
        per_step = time_steps(entries, rounds)
        base = per_step[SUITE_COST[0]]["median"]
        rows.append(
            [task.name, f"{1e3 * base:.2f}"]
            + [f"{per_step[o.name]['median'] / base:.2f}" for o in opts[1:]]
        )
    return "\n".join(
        table(
            ["task", "optax.adamw ms", *(f"`{o.name}` x adamw" for o in opts[1:])],
            rows,
        )
    )
