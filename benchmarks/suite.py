"""The suite: on each task, the sweep, the runs at the chosen rates, the costs.

For every task, in this order:

1. **sweep**: every optimizer at every learning rate 1e-4 ... 1e3, for
   ``task.sweep_seeds`` seeds and ``task.sweep_steps`` steps;
2. **choice**: lyapopt's optimizers keep their default rate (untuned); each
   peer gets its best rate of the sweep (best mean final metric among the
   runs that did not diverge, the lower train loss breaking ties), tuned on
   the test split, in the peers' favour;
3. **quality**: every optimizer at its chosen rate for ``task.steps`` steps
   and ``task.quality_seeds`` seeds (sweep runs of the same length are
   reused, not run again);
4. **cost**: the seconds per step of every optimizer at its chosen rate and
   of the pieces of lyapopt's step, interleaved (:func:`train.time_steps`),
   and of the line derivatives against a full HVP.

Its goals (the issue's targets), Markdown and plots are in
:mod:`benchmarks.report`; :data:`STUDY` is the suite as the command line
runs it, its tasks being the parts ``--tasks`` selects.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks import report
from benchmarks.optimizers import COMPONENTS, LEARNING_RATES, OPTIMIZERS, Optimizer
from benchmarks.study import Goal, Study
from benchmarks.tasks import TASKS, Task
from benchmarks.train import Lane, Problem, Runner, time_derivatives, time_steps, train


@dataclass(frozen=True)
class Settings:
    """What to run: the tasks, the learning rates, the optimizers."""

    tasks: tuple[Task, ...]
    learning_rates: tuple[float, ...] = LEARNING_RATES
    optimizers: tuple[Optimizer, ...] = tuple(OPTIMIZERS.values())
    components: tuple[Optimizer, ...] = tuple(COMPONENTS.values())


def lane_record(lane: Lane, *, curves: bool) -> dict[str, Any]:
    """A run as JSON: its summary, and its curves where asked."""
    out: dict[str, Any] = {
        "learning_rate": lane.learning_rate,
        "seed": lane.seed,
        "initial_train_loss": lane.train_loss[0],
        "final_train_loss": lane.train_loss[-1],
        "final_test_loss": lane.test_loss[-1],
        "final_metric": lane.metric[-1],
        "diverged": lane.diverged,
        "loss_increases": lane.increases,
    }
    if curves:
        out["eval_steps"] = lane.eval_steps
        out["train_loss"] = lane.train_loss
        out["metric"] = lane.metric
    return out


def _score(task: Task, lanes: list[Lane]) -> tuple[float, float]:
    """A sort key, smaller is better: the mean final metric, then train loss."""
    if any(lane.diverged for lane in lanes):
        return (math.inf, math.inf)
    metric = float(np.mean([lane.metric[-1] for lane in lanes]))
    loss = float(np.mean([lane.train_loss[-1] for lane in lanes]))
    if not math.isfinite(metric):
        return (math.inf, math.inf)
    return (-metric if task.higher_is_better else metric, loss)


def choose_rate(task: Task, opt: Optimizer, sweep: dict[float, list[Lane]]) -> float:
    """lyapopt's default rate, or the peer's best rate of the sweep."""
    if opt.is_lyapopt:
        return opt.default_lr
    return min(sweep, key=lambda lr: _score(task, sweep[lr]))


def steps_to_target(task: Task, lane: Lane) -> int | None:
    """The first evaluated step at which the metric meets the target."""
    for step, value in zip(lane.eval_steps, lane.metric, strict=True):
        if task.reached(value):
            return step
    return None


def _spread(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {
        "mean": float(np.mean(a)),
        "std": float(np.std(a)),
        "min": float(np.min(a)),
        "max": float(np.max(a)),
    }


def run_task(task: Task, settings: Settings) -> dict[str, Any]:
    """Sweep, choice, quality and cost on one task, as JSON."""
    start = time.perf_counter()
    problem = Problem(task)
    runners = {opt.name: Runner(problem, opt) for opt in settings.optimizers}
    sweep_steps = task.sweep_steps or task.steps
    sweep_seeds = range(task.sweep_seeds)
    quality_seeds = range(task.quality_seeds)
    reuse = sweep_steps == task.steps  # sweep runs count as quality runs
    n_opt, n_lr = len(settings.optimizers), len(settings.learning_rates)
    fresh = [s for s in quality_seeds if not (reuse and s in sweep_seeds)]
    total = n_opt * (n_lr * len(sweep_seeds) * sweep_steps + len(fresh) * task.steps)

    sweeps: dict[str, dict[float, list[Lane]]] = {}
    quality: dict[str, list[Lane]] = {}
    chosen: dict[str, float] = {}
    with tqdm(
        total=total, desc=f"{task.name}: train", unit="step", mininterval=1.0
    ) as bar:
        for opt in settings.optimizers:
            sweep = sweeps[opt.name] = {}
            for lr in settings.learning_rates:
                bar.set_postfix_str(f"{opt.name} lr={lr:g}")
                sweep[lr] = [
                    train(runners[opt.name], lr, seed, sweep_steps, on_steps=bar.update)
                    for seed in sweep_seeds
                ]
            lr = chosen[opt.name] = choose_rate(task, opt, sweep)
            bar.set_postfix_str(f"{opt.name} at lr={lr:g}, seeds")
            reused = [
                lane
                for lane in (sweep.get(lr, []) if reuse else [])
                if lane.seed in quality_seeds
            ]
            done = {lane.seed for lane in reused}
            quality[opt.name] = reused + [
                train(runners[opt.name], lr, seed, task.steps, on_steps=bar.update)
                for seed in quality_seeds
                if seed not in done
            ]

    entries = {name: (runners[name], chosen[name]) for name in runners}
    for opt in settings.components:
        entries[opt.name] = (Runner(problem, opt), opt.default_lr)
    rounds = task.timing_rounds
    with tqdm(
        total=2 * rounds + 1, desc=f"{task.name}: cost", unit="round", mininterval=1.0
    ) as bar:
        per_step = time_steps(entries, rounds, on_round=bar.update)
        derivatives = time_derivatives(problem, rounds, on_round=bar.update)

    return {
        "title": task.title,
        "metric": task.metric,
        "target": task.target,
        "settings": {
            "steps": task.steps,
            "sweep_steps": sweep_steps,
            "eval_every": task.eval_every,
            "batch_size": task.batch_size,
            "train_rows": problem.num_train,
            "num_params": problem.num_params(),
            "sweep_seeds": task.sweep_seeds,
            "quality_seeds": task.quality_seeds,
            "timing_rounds": rounds,
        },
        "sweep": {
            name: [
                lane_record(lane, curves=False)
                for lanes in s.values()
                for lane in lanes
            ]
            for name, s in sweeps.items()
        },
        "chosen_lr": chosen,
        "quality": {
            name: _quality(task, lanes, per_step[name]["median"])
            for name, lanes in quality.items()
        },
        "cost": {"per_step": per_step, "derivatives": derivatives},
        "wall_seconds": time.perf_counter() - start,
    }


def _quality(task: Task, lanes: list[Lane], step_seconds: float) -> dict[str, Any]:
    """The runs at the chosen rate: their records and their spread."""
    reached = [steps_to_target(task, lane) for lane in lanes]
    hit = [s for s in reached if s is not None]
    median = float(np.median(hit)) if hit else None
    return {
        "runs": [lane_record(lane, curves=True) for lane in lanes],
        "final_train_loss": _spread([lane.train_loss[-1] for lane in lanes]),
        "final_metric": _spread([lane.metric[-1] for lane in lanes]),
        "steps_to_target": reached,
        "seeds_reaching_target": len(hit),
        "median_steps_to_target": median,
        # At the measured median seconds per step of one run (see cost).
        "seconds_to_target": None if median is None else median * step_seconds,
    }


# --- the suite as a study -----------------------------------------------------

# --quick: the full-batch task only, short, one seed for the sweep, two at
# the chosen rates, few timing rounds. Every optimizer and every rate still
# runs, so the JSON has the structure of the full suite.
QUICK = {
    "mlp_full": {"steps": 30, "sweep_seeds": 1, "quality_seeds": 2, "timing_rounds": 3}
}


def select_tasks(names: tuple[str, ...], quick: bool) -> tuple[Task, ...]:
    """The tasks of ``names``, in that order; where ``quick``, those of
    :data:`QUICK` only, shrunk."""
    if quick:
        return tuple(TASKS[n].shrunk(**QUICK[n]) for n in QUICK if n in names)
    return tuple(TASKS[n] for n in names)


def run(names: tuple[str, ...], quick: bool) -> dict[str, Any]:
    """The suite on the tasks ``names``, with its targets, as JSON."""
    settings = Settings(tasks=select_tasks(names, quick))
    results: dict[str, Any] = {
        "tasks": {task.name: run_task(task, settings) for task in settings.tasks}
    }
    results["targets"] = report.targets(results)
    results["meta"] = {"learning_rates": list(settings.learning_rates)}
    return results


def goals(results: dict[str, Any]) -> list[Goal]:
    """The issue's targets, judged anew from the JSON."""
    return [
        Goal(t["target"], t["measured"], t["holds"]) for t in report.targets(results)
    ]


STUDY = Study(
    name="suite",
    run=run,
    goals=goals,
    plot=report.plot_all,
    markdown=report.markdown,
    begin=report.BEGIN,
    end=report.END,
    parts=tuple(TASKS),
    quick_parts=tuple(QUICK),
    filename="results.json",
    indent=1,
)
