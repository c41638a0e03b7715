"""``lm_spikes``' runs: the baseline's sweep, every peer at every multiplier,
the seeds, lyapopt untuned, and the cost per step; the spike rule.

The runs go to ``settings.workers`` processes, one peer's runs in one
process so that it compiles once there.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.lm_spikes.peers import Peer, peers, rate_free
from benchmarks.lm_spikes.settings import MULTIPLIERS, NAME, Settings
from benchmarks.optimizers import LYAPOPT_EXTRAS, OPTIMIZERS, Optimizer
from benchmarks.train import CHUNK, Lane, Problem, Runner, time_steps, train

# The timing entries of the rate-free configuration's two phases:
# ``rate_until`` None measures at every step, 0 holds the rate from the start.
RATE_FREE_PHASES: dict[str, int | None] = {
    "rate-free, measuring": None,
    "rate-free, held": 0,
}

SPIKE_FACTOR, SPIKE_WINDOW = 1.5, 50


def spikes(values: np.ndarray) -> int:
    """Steps whose batch loss is above ``SPIKE_FACTOR`` times the median of the
    previous ``SPIKE_WINDOW`` (a non-finite loss counts as a spike)."""
    count = 0
    for t in range(SPIKE_WINDOW, len(values)):
        v = values[t]
        if not math.isfinite(v):
            count += 1
            continue
        before = values[t - SPIKE_WINDOW : t]
        before = before[np.isfinite(before)]
        if before.size and v > SPIKE_FACTOR * float(np.median(before)):
            count += 1
    return count


def record(lane: Lane, multiplier: float | None) -> dict[str, Any]:
    """A run as JSON."""
    return {
        "learning_rate": lane.learning_rate,
        "multiplier": multiplier,
        "seed": lane.seed,
        "spikes": spikes(lane.batch_values),
        "diverged": lane.diverged,
        "final_bpb": lane.metric[-1],
        "eval_steps": lane.eval_steps,
        "bpb": lane.metric,
        # The batch losses, every step (the curves of the spike plot), to
        # 6 significant digits: the spikes are counted from the exact ones.
        "batch_loss": [float(f"{v:.6g}") for v in lane.batch_values],
    }


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def key(r: dict[str, Any]) -> float:
        v = r["final_bpb"]
        return math.inf if r["diverged"] or not math.isfinite(v) else v

    return min(runs, key=key)


_RUNNERS: dict[tuple[Settings, str, int], Runner] = {}


def _peer(name: str) -> Peer:
    return next(p for p in peers() if p.name == name)


def _runner(settings: Settings, name: str, chunk: int | None = None) -> Runner:
    """One runner per peer, settings and steps per call in a process: each
    compiles once."""
    chunk = chunk or settings.eval_every
    key = (settings, name, chunk)
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(Problem(settings.task(chunk)), _peer(name).optimizer)
    return _RUNNERS[key]


class _InProcess:
    """``ProcessPoolExecutor``'s ``submit`` without processes (``workers=1``)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


def _lanes(
    settings: Settings, name: str, lanes: list[tuple[float, int, float | None]]
) -> list[dict[str, Any]]:
    """Runs of one peer at ``(rate, seed, multiplier)``, in this process."""
    runner = _runner(settings, name)
    return [record(train(runner, lr, seed, settings.steps), m) for lr, seed, m in lanes]


def _peer_job(
    settings: Settings, name: str, best_lr: float, given: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """One peer's share: every multiplier (those not ``given``), then the seeds
    at its best one, then, for a peer with an untuned rate, every seed there;
    all in one process so that the peer compiles once. A run at the same
    rate and seed as one before is that run."""
    peer = _peer(name)
    have = {r["multiplier"]: r for r in given}
    todo = [(peer.rate(best_lr, m), 0, m) for m in peer.multipliers if m not in have]
    done = iter(_lanes(settings, name, todo))
    runs = [have[m] if m in have else next(done) for m in peer.multipliers]
    best = _best(runs)
    lanes = [
        (best["learning_rate"], s, best["multiplier"]) for s in range(1, settings.seeds)
    ]
    seeds = [best, *_lanes(settings, name, lanes)]
    if peer.untuned is None:
        return runs, seeds, []
    known = {(r["learning_rate"], r["seed"]): r for r in (*runs, *seeds)}

    def same(seed: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for (lr, s), r in known.items()
                if s == seed and math.isclose(lr, peer.untuned, rel_tol=1e-6)
            ),
            None,
        )

    lanes = [(peer.untuned, s, None) for s in range(settings.seeds) if not same(s)]
    fresh = iter(_lanes(settings, name, lanes))
    untuned = [
        (same(s) or next(fresh)) | {"multiplier": None} for s in range(settings.seeds)
    ]
    return runs, seeds, untuned


def run(settings: Settings) -> dict[str, Any]:
    """Runs the whole study; returns it as JSON.

    The runs go to ``settings.workers`` processes (one peer's runs in one
    process, so that it compiles once there): on this 2-core machine two
    processes take 1.1-1.5x the runs per second of one. The cost per step
    is timed afterwards, in this process, with nothing else running.
    """
    start = time.perf_counter()
    task = settings.task()
    problem = Problem(task)
    study = peers()
    base = study[0]
    workers = settings.workers
    pool = (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        if workers > 1
        else _InProcess()
    )
    with pool:
        # 1. The baseline's sweep: ``sweep_points`` rates up the half-decade
        # grid at once, then one more at a time until its best rate has every
        # multiplier above it. A learning-rate-free peer needs no best rate:
        # the first one fills the workers while the sweep finishes.
        free = [p.name for p in study if p.own_rate is not None]
        jobs: dict[str, Future] = {}
        k = round(2 * math.log10(settings.sweep_from))
        rates = [10 ** ((k + i) / 2) for i in range(settings.sweep_points)]
        sweep: dict[float, dict[str, Any]] = {}
        while True:
            pending = [
                (lr, pool.submit(_lanes, settings, base.name, [(lr, 0, None)]))
                for lr in rates
            ]
            if free and free[0] not in jobs:
                jobs[free[0]] = pool.submit(_peer_job, settings, free[0], math.nan, [])
            for lr, job in pending:
                sweep[lr] = job.result()[0]
            best_lr = _best(list(sweep.values()))["learning_rate"]
            if max(sweep) >= best_lr * MULTIPLIERS[-1] * 0.999:
                break
            rates = [max(sweep) * 10**0.5]
        given = [
            r | {"multiplier": m}
            for m in MULTIPLIERS
            for lr, r in sweep.items()
            if math.isclose(lr, best_lr * m, rel_tol=1e-6)
        ]
        # 2-4. Every peer at every multiplier, seed 0; the seeds at its best
        # multiplier; lyapunov_adam() untuned. The dearest peers first, the
        # learning-rate-free ones (three runs each) last, to even the
        # workers' ends.
        order = sorted(
            (p for p in study if p.name not in jobs),
            key=lambda p: (p.family != "lyapopt", p.own_rate is not None),
        )
        for p in order:
            jobs[p.name] = pool.submit(
                _peer_job, settings, p.name, best_lr, given if p is base else []
            )
        runs, seeds, untuned = {}, {}, {}
        for p in tqdm(study, desc=f"{NAME}: peers", unit="peer"):
            runs[p.name], seeds[p.name], u = jobs[p.name].result()
            if u:
                untuned[p.name] = u

    # 5. The cost per step at 1x, interleaved, alone on the machine, in
    # calls of CHUNK steps (the runs' calls of ``eval_every`` steps would make
    # every measurement as long).
    entries = {
        p.name: (_runner(settings, p.name, CHUNK), p.rate(best_lr, 1.0)) for p in study
    }
    # The rate-free configuration's step while it measures (every step of
    # the first tenth of the run) and once its rate is held (the rest); its
    # cost over a run is their mean, weighted by the steps of each.
    for label, until in RATE_FREE_PHASES.items():
        entries[label] = (
            Runner(
                Problem(settings.task(CHUNK)),
                Optimizer(
                    label,
                    functools.partial(rate_free, rate_until=until),
                    extras=(*LYAPOPT_EXTRAS, "grad"),
                ),
            ),
            best_lr,
        )
    with tqdm(
        total=settings.timing_rounds + 1, desc=f"{NAME}: cost", unit="round"
    ) as bar:
        per_step = time_steps(entries, settings.timing_rounds, on_round=bar.update)

    return {
        "settings": asdict(settings) | {"num_params": problem.num_params()},
        "title": task.title,
        "best_lr": best_lr,
        "sweep": list(sweep.values()),
        "families": {p.name: p.family for p in study},
        "runs": {p.name: runs[p.name] for p in study},
        "seeds": seeds,
        "untuned": untuned,
        "default_lr": OPTIMIZERS["lyapunov_adam"].default_lr,
        "per_step": per_step,
        "wall_seconds": time.perf_counter() - start,
    }
