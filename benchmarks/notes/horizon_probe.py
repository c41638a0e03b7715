"""A probe of horizon rules for the held-out rate (issue 20), against GeN and
the recipe, on ``lm_spikes``' small model and on the suite's
``mlp_minibatch``.

It ran against temporary module switches of ``lyapopt/_rate.py`` that are
gone: H2g became the stage's behaviour with ``rate_until``. To rerun it,
restore that file from commit 05d1793 first (``git checkout 05d1793 --
lyapopt/_rate.py``); ``horizon_probe.jsonl`` holds every run.

Variants (each started from 0.1x, 1x and 10x the recipe's tuned rate):

- ``recipe``: clip 1.0 + AdamW (b2 0.95, wd 0.1), warmup 5% + cosine to a
  tenth (``lm_spikes``' baseline).
- ``H0``: ``stabilize(recipe direction at a constant rate, rate_every=4,
  rate_shape=<the recipe's shape>, curvature_every=50)``: the measured rate
  times the shape (today's rule).
- ``H1``: H0 without the shape: the measurement's own decay is the schedule.
- ``H2``: the rate measured every step during the first 10% of the run, then
  frozen; the shape alone decays it (``_rate._MEASURE_UNTIL``).
- ``H2b``: H2 measured over the first 20% (added after H2's first
  results: from 10x, 10% was too short for the rate to come down).
- ``H3``: H0 with the level times 2 (``_rate._LEVEL = 2``), the cap and the
  guard catching what overshoots.
- ``GeN``: :func:`benchmarks.gen.gen` over the recipe's direction at a
  constant rate, every 4 steps, times the recipe's shape.
- ``H2f`` (second round): H2 with the rate following the target directly,
  only clamped, ``r <- clip(target, r / 2, 2 r)`` (smoothing weight 1,
  ``_rate._SMOOTHING_OVERRIDE``); run with H2 and the recipe from 0.01x,
  0.1x, 1x, 10x and 30x (``h2f`` below).
- ``H2g`` (third round): H2f with the target's averages at decay 0.98
  (about 50 measurements) instead of 0.9 (``_rate._AVERAGING_OVERRIDE``),
  so the frozen level averages most of the level phase (``h2g`` below;
  the recipe's runs are reused from the log).

    python -m benchmarks.notes.horizon_probe lm [seeds...]
    python -m benchmarks.notes.horizon_probe digits [seeds...]
    python -m benchmarks.notes.horizon_probe report
    python -m benchmarks.notes.horizon_probe h2f lm [seeds...]
    python -m benchmarks.notes.horizon_probe h2f digits [seeds...]
    python -m benchmarks.notes.horizon_probe h2f report [seeds...]
    python -m benchmarks.notes.horizon_probe h2g lm [seeds...]
    python -m benchmarks.notes.horizon_probe h2g digits [seeds...]
    python -m benchmarks.notes.horizon_probe h2g report [seeds...]

Each run appends one JSON line to ``horizon_probe.jsonl`` (beside this
file); runs already there are skipped, so an interrupted probe resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

import lyapopt
from benchmarks.gen import gen
from benchmarks.lm_spikes.peers import adamw_recipe
from benchmarks.notes.rate_free_probe import SETTINGS
from benchmarks.optimizers import LYAPOPT_EXTRAS, Optimizer
from benchmarks.tasks import TASKS, Task
from benchmarks.train import Problem, Runner
from lyapopt import _rate

LOG = Path(__file__).with_name("horizon_probe.jsonl")
MULTIPLIERS = (0.1, 1.0, 10.0)
VARIANTS = ("recipe", "H0", "H1", "H2", "H2b", "H3", "GeN")
# The second round (H2f): wider starts, three variants.
WIDE = (0.01, 0.1, 1.0, 10.0, 30.0)
H2F_VARIANTS = ("recipe", "H2", "H2f")
# The third round (H2g): the same starts; only H2g runs, the others are reused.
H2G_VARIANTS = ("recipe", "H2f", "H2g")


@dataclasses.dataclass(frozen=True)
class Setup:
    task: Task
    rate: float  # the recipe's tuned 1x
    evals: int  # evaluations over the run


def setups() -> dict[str, Setup]:
    return {
        # lm_spikes' tuned 1x (its full model; also the best of 0.1x/1x/10x
        # on this model: rate_free_probe.md)
        "lm": Setup(dataclasses.replace(SETTINGS, steps=600).task(), 0.01, 6),
        # 20 epochs of minibatch 64; 1x from the 3-point sweep below
        "digits": Setup(TASKS["mlp_minibatch"], DIGITS_RATE, 5),
    }


# The recipe's best of 0.003 / 0.01 / 0.03 / 0.1 on mlp_minibatch, seed 0 (see
# horizon_probe.md).
DIGITS_RATE = 0.03


def shape(steps: int) -> optax.Schedule:
    """The recipe's schedule shape: warmup over 5%, cosine to a tenth."""
    return optax.warmup_cosine_decay_schedule(
        0.0, 1.0, max(1, steps // 20), steps, end_value=0.1
    )


def direction(lr: Any) -> optax.GradientTransformation:
    """The recipe's direction at a constant rate."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(lr, b2=0.95, weight_decay=0.1),
    )


@contextlib.contextmanager
def switches(
    level: float = 1.0,
    until: int | None = None,
    smoothing: float | None = None,
    averaging: float | None = None,
) -> Iterator[None]:
    """The temporary horizon switches of ``lyapopt._rate``, while a
    ``HeldOutRate`` is built."""
    _rate._LEVEL, _rate._MEASURE_UNTIL = level, until
    _rate._SMOOTHING_OVERRIDE = smoothing
    _rate._AVERAGING_OVERRIDE = averaging
    try:
        yield
    finally:
        _rate._LEVEL, _rate._MEASURE_UNTIL = 1.0, None
        _rate._SMOOTHING_OVERRIDE = None
        _rate._AVERAGING_OVERRIDE = None


def held_out(variant: str) -> Callable[[Any, int], optax.GradientTransformation]:
    def make(lr: Any, n: int) -> optax.GradientTransformation:
        every, rate_shape = 4, shape(n)
        level, until, smoothing, averaging = 1.0, None, None, None
        if variant == "H1":
            rate_shape = None
        elif variant == "H2":
            every, until = 1, n // 10
        elif variant == "H2f":
            every, until, smoothing = 1, n // 10, 1.0
        elif variant == "H2g":
            every, until, smoothing, averaging = 1, n // 10, 1.0, 0.98
        elif variant == "H2b":
            every, until = 1, n // 5
        elif variant == "H3":
            level = 2.0
        with switches(level, until, smoothing, averaging):
            return lyapopt.stabilize(
                direction(lr),
                rate_every=every,
                rate_shape=rate_shape,
                curvature_every=50,
            )

    return make


def optimizer(variant: str) -> tuple[Optimizer, Callable[[Any], dict[str, Any]]]:
    """The variant, and what its runs record of the state after every step."""
    if variant == "recipe":
        return Optimizer("recipe", adamw_recipe), lambda s: {}
    if variant == "GeN":
        opt = Optimizer(
            "GeN",
            lambda lr, n: gen(direction(lr), 4, shape=shape(n)),
            ("fresh_value_fn",),
        )
        return opt, lambda s: {"rate": s.rate, "scale": s.scale}

    def record(state: Any) -> dict[str, Any]:
        stats = lyapopt.stats(state)
        return {"rate": stats["rate"], "scale": stats["rate_scale"]}

    extras = (*LYAPOPT_EXTRAS, "grad")
    return Optimizer(variant, held_out(variant), extras), record


def run(runner: Runner, lr: float, seed: int, setup: Setup) -> dict[str, Any]:
    problem, steps = runner.problem, setup.task.steps
    every = steps // setup.evals
    idx = problem.indices(seed, steps)
    fresh = problem.fresh_indices(seed, steps)
    params, state, lr_arg = runner.init(seed, lr)
    start = time.perf_counter()
    metric, test_loss, kept = [], [], []
    for k in range(0, steps, every):
        sl = slice(k, k + every)
        params, state, _, rec = runner.run(params, state, lr_arg, idx[sl], fresh[sl])
        kept.append(rec)
        ev = runner.evaluate(params, state)
        metric.append(float(ev["metric"]))
        test_loss.append(float(ev["test_loss"]))
    seconds = time.perf_counter() - start
    out: dict[str, Any] = {
        "metric": metric,
        "test_loss": test_loss,
        "seconds": seconds,
    }
    if kept and kept[0]:
        rate = np.concatenate([np.asarray(r["rate"]) for r in kept])
        scale = np.concatenate([np.asarray(r["scale"]) for r in kept])
        points = np.linspace(0, steps - 1, 11).astype(int)[1:]
        out["rate_at"] = points.tolist()
        out["rate"] = [float(rate[i]) for i in points]
        out["scale"] = [float(scale[i]) for i in points]
    stats: dict[str, float] = {}
    with contextlib.suppress(Exception):  # the recipe and GeN have no stats
        stats = {k: float(v) for k, v in lyapopt.stats(state).items()}
    for key in ("rate_measurements", "rate_rejected", "violations", "backtracks"):
        if key in stats:
            out[key] = stats[key]
    if hasattr(state, "accepted"):
        out["gen_accepted"] = int(state.accepted)
        out["gen_rejected"] = int(state.rejected)
        out["gen_failed"] = int(state.failed)
    return out


def done() -> set[tuple[str, str, float, int]]:
    if not LOG.exists():
        return set()
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line]
    return {(r["task"], r["variant"], r["lr"], r["seed"]) for r in rows}


def probe(
    name: str,
    seeds: tuple[int, ...],
    variants: tuple[str, ...],
    multipliers: tuple[float, ...] = MULTIPLIERS,
) -> None:
    setup = setups()[name]
    problem = Problem(setup.task)
    finished = done()
    rates = [setup.rate * m for m in multipliers]
    for variant in variants:
        opt, record = optimizer(variant)
        runner = Runner(problem, opt, record=record)
        first = True
        for seed in seeds:
            for m, lr in zip(multipliers, rates, strict=True):
                if (name, variant, lr, seed) in finished:
                    continue
                result = run(runner, lr, seed, setup)
                row = {
                    "task": name,
                    "variant": variant,
                    "multiplier": m,
                    "lr": lr,
                    "seed": seed,
                    "compiled_here": first,
                    **result,
                }
                first = False
                with LOG.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(
                    f"{name} {variant} {m:g}x seed {seed}: {result['metric'][-1]:.4f}"
                    f" ({result['seconds']:.1f} s)",
                    flush=True,
                )


def sweep_digits() -> None:
    """The recipe on mlp_minibatch at 0.003, 0.01, 0.03, 0.1, seed 0."""
    setup = setups()["digits"]
    runner = Runner(Problem(setup.task), Optimizer("recipe", adamw_recipe))
    for lr in (0.003, 0.01, 0.03, 0.1):
        r = run(runner, lr, 0, setup)
        print(
            json.dumps(
                {"lr": lr, "accuracy": r["metric"], "test_loss": r["test_loss"]}
            ),
            flush=True,
        )


def report() -> None:
    """The tables of horizon_probe.md, from the log."""
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line]
    seeds = tuple(int(s) for s in sys.argv[2:]) or (0, 1)
    for task, key in (("lm", "metric"), ("digits", "metric"), ("digits", "test_loss")):
        table(task, key, [r for r in rows if r["task"] == task and r["seed"] in seeds])
    for task in ("lm", "digits"):
        sub = [r for r in rows if r["task"] == task and r["seed"] in seeds]
        print(f"\n{task}: rate r (multiple of the start) at 10%, 20%, ..., 100%")
        for r in sub:
            if "rate" in r:
                rates = ", ".join(f"{x:.3g}" for x in r["rate"])
                print(f"- {r['variant']} {r['multiplier']:g}x s{r['seed']}: {rates}")


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The first row whose fields equal ``match``, or None."""
    return next((r for r in rows if all(r[k] == v for k, v in match.items())), None)


def table(
    task: str,
    key: str,
    sub: list[dict[str, Any]],
    multipliers: tuple[float, ...] = MULTIPLIERS,
    variants: tuple[str, ...] = VARIANTS,
) -> None:
    """One table: the final ``key`` per variant x start x seed, the worst gap
    to the recipe's 1x of the same seed (relative for bits/byte and losses,
    percentage points for accuracy), and the median seconds of a run."""
    if not sub:
        return
    seeds = sorted({r["seed"] for r in sub})
    cols = [(m, s) for m in multipliers for s in seeds]
    head = " | ".join(f"{m:g}x s{s}" for m, s in cols)
    print(f"\n{task}, {key}\n\n| variant | {head} | worst vs bar | s/run |")
    print("|---|" + "---:|" * (len(cols) + 2))
    bars = {
        s: next(
            (
                r[key][-1]
                for r in sub
                if r["variant"] == "recipe"
                and r["multiplier"] == 1.0
                and r["seed"] == s
            ),
            None,
        )
        for s in seeds
    }
    for variant in variants:
        cells, gaps, secs = [], [], []
        for m, s in cols:
            r = _find(sub, variant=variant, multiplier=m, seed=s)
            if r is None:
                cells.append("")
                continue
            v = r[key][-1]
            cells.append(f"{v:.4f}")
            if not r["compiled_here"]:
                secs.append(r["seconds"])
            bar = bars[s]
            if bar is not None:
                points = task == "digits" and key == "metric"
                gaps.append((bar - v) * 100 if points else (v / bar - 1) * 100)
        unit = " pp" if task == "digits" and key == "metric" else "%"
        worst = f"{max(gaps):+.2f}{unit}" if gaps else ""
        sec = f"{np.median(secs):.1f}" if secs else ""
        print(f"| {variant} | {' | '.join(cells)} | {worst} | {sec} |")


def report_h2f(
    seeds: tuple[int, ...], variants: tuple[str, ...] = H2F_VARIANTS
) -> None:
    """The tables of the second (and third) round: the recipe and two
    variants from every start of ``WIDE``; the frozen effective rate
    ``lr * r`` and guard violations."""
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line]
    rows = [r for r in rows if r["seed"] in seeds and r["variant"] in variants]
    for task, key in (("lm", "metric"), ("digits", "metric"), ("digits", "test_loss")):
        sub = [r for r in rows if r["task"] == task]
        table(task, key, sub, WIDE, variants)
    for task in ("lm", "digits"):
        present = sorted({r["seed"] for r in rows if r["task"] == task})
        cols = [(m, s) for m in WIDE for s in present]
        head = " | ".join(f"{m:g}x s{s}" for m, s in cols)
        for what in ("lr * r frozen", "violations"):
            print(f"\n{task}, {what}\n\n| variant | {head} |")
            print("|---|" + "---:|" * len(cols))
            for variant in variants[1:]:
                cells = []
                for m, s in cols:
                    r = _find(rows, task=task, variant=variant, multiplier=m, seed=s)
                    if r is None:
                        cells.append("")
                    elif what == "violations":
                        cells.append(f"{r.get('violations', float('nan')):.0f}")
                    else:
                        # measured until 10%: rate[0] is at step 10% - 1
                        cells.append(f"{r['lr'] * r['rate'][0]:.4g}")
                print(f"| {variant} | {' | '.join(cells)} |")


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "report"
    if what in ("h2f", "h2g"):
        variants = H2F_VARIANTS if what == "h2f" else H2G_VARIANTS
        name = sys.argv[2] if len(sys.argv) > 2 else "report"
        seeds = tuple(int(s) for s in sys.argv[3:]) or (0, 1)
        if name == "report":
            report_h2f(seeds, variants)
        else:
            probe(name, seeds, variants, WIDE)
    elif what == "report":
        report()
    elif what == "sweep":
        sweep_digits()
    else:
        seeds = tuple(int(s) for s in sys.argv[2:]) or (0, 1)
        probe(what, seeds, VARIANTS)


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before the clock
    main()
