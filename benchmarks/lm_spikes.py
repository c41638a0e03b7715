"""``lm_spikes``: loss spikes on a byte-level Transformer LM, 1x to 30x the tuned rate.

The study, in this order:

1. **baseline sweep**: the usual recipe (AdamW with b2 = 0.95, linear warmup
   over the first 5% of the steps then cosine decay to a tenth, weight decay
   0.1, ``clip_by_global_norm(1.0)``) at learning rates on a half-decade grid
   (``10**(k/2)``), seed 0; its best rate (lowest final validation bits per
   byte) is ``1x``;
2. **multipliers**: every peer that takes a learning rate at ``1x, 3x, 10x,
   30x`` the baseline's best (exactly ``1, 10**0.5, 10, 10**1.5``, so that
   every multiplier of the baseline is a point of its sweep), seed 0. The
   learning-rate-free optimizers take no rate of the baseline's: they run
   once, at their authors' default, untuned, and that one run stands in
   every multiplier's column;
3. **seeds**: every peer at its best multiplier (the learning-rate-free
   ones at their default), seeds 1 and 2;
4. **untuned**: ``lyapunov_adam()`` at its default rate, three seeds;
5. **cost**: the seconds per step of every peer at ``1x``, interleaved in one
   timing run (:func:`benchmarks.train.time_steps`).

Per run: the spikes (a step whose batch loss exceeds ``SPIKE_FACTOR`` times
the median of the previous ``SPIKE_WINDOW`` steps' batch losses; a non-finite
loss counts), divergence (a non-finite final loss, or one above the
initial), the final validation bits per byte, the batch-loss curve, and the
step at which the validation bits per byte first reach the target (the tuned
baseline's mean final value plus ``TARGET_SLACK``).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optax
from optax import contrib
from tqdm.auto import tqdm

import lyapopt
from benchmarks import report
from benchmarks.models import ByteTransformer
from benchmarks.optimizers import OPTIMIZERS, Optimizer
from benchmarks.spike_peers import skip_on_spike, spam, zclip
from benchmarks.tasks import TASKS, Task, _stdlib_lm
from benchmarks.train import CHUNK, Lane, Problem, Runner, time_steps, train

NAME = "lm_spikes"
MULTIPLIERS = (1.0, 10**0.5, 10.0, 10**1.5)
LABELS = ("1x", "3x", "10x", "30x")
SPIKE_FACTOR, SPIKE_WINDOW = 1.5, 50
TARGET_SLACK = 0.02  # 2% above the tuned baseline's final bits per byte
BASELINE = "adamw+clip (recipe)"
# lyapopt's configuration for language models: the recipe, the guard every
# step, the curvature every 50 steps (see ``cost_breakdown``).
RECOMMENDED = "stabilize(recipe, curvature_every=50)"
BEGIN = f"<!-- BEGIN GENERATED: `python -m benchmarks --tasks {NAME}` -->"
END = f"<!-- END GENERATED: {NAME} -->"


@dataclass(frozen=True)
class Settings:
    """The model, the data and the lengths of the study."""

    layers: int = 4
    width: int = 32
    heads: int = 1
    mlp_ratio: int = 2  # the MLP's width over the model's
    context: int = 128
    batch: int = 16
    steps: int = 1000
    eval_every: int = 100
    eval_windows: int = 128
    seeds: int = 3
    sweep_from: float = 10**-2.5  # the baseline's sweep starts here ...
    sweep_points: int = 5  # ... with this many rates, and more if needed
    timing_rounds: int = 5
    workers: int = 2  # processes for the runs (1: all in this one)

    def task(self, chunk: int | None = None) -> Task:
        """The task; ``chunk`` steps per jitted call (default: ``eval_every``)."""
        return Task(
            name=NAME,
            title=(
                f"byte-level Transformer LM ({self.layers} layers, width "
                f"{self.width}, {self.heads} head{'s' * (self.heads > 1)}, MLP "
                f"{self.mlp_ratio}x, context {self.context}), batch {self.batch}"
            ),
            make_model=lambda rngs: ByteTransformer(
                layers=self.layers,
                width=self.width,
                heads=self.heads,
                context=self.context,
                mlp_ratio=self.mlp_ratio,
                rngs=rngs,
            ),
            load=lambda: _stdlib_lm(self.context, self.eval_windows),
            metric="bits_per_byte",
            target=math.inf,
            steps=self.steps,
            eval_every=self.eval_every,
            batch_size=self.batch,
            chunk=chunk or self.eval_every,
        )


QUICK = Settings(
    layers=1,
    width=16,
    heads=2,
    context=32,
    steps=60,
    eval_every=10,
    eval_windows=16,
    seeds=2,
    sweep_points=2,
    timing_rounds=2,
    workers=1,
)


# --- the peers -----------------------------------------------------------------


def recipe_schedule(lr: Any, steps: int) -> optax.Schedule:
    """Linear warmup over 5% of the run, then cosine decay to ``lr / 10``.

    ``lr`` may be a traced array (the runner passes the rate as an argument),
    so the schedule is the rate times a shape that peaks at 1.
    """
    shape = optax.warmup_cosine_decay_schedule(
        0.0, 1.0, max(1, steps // 20), steps, end_value=0.1
    )
    return lambda count: lr * shape(count)


def adamw_recipe(
    lr: Any, steps: int, *, clip: bool = True
) -> optax.GradientTransformation:
    """The baseline: AdamW (b2 0.95, weight decay 0.1), warmup + cosine, clip 1.0."""
    adamw = optax.adamw(recipe_schedule(lr, steps), b2=0.95, weight_decay=0.1)
    return optax.chain(optax.clip_by_global_norm(1.0), adamw) if clip else adamw


@dataclass(frozen=True)
class Peer:
    """An optimizer of the study, and the rate that is its ``1x``.

    ``own_rate`` is ``None`` for a peer run at multiples of the baseline's
    tuned rate, else the peer's own default (the learning-rate-free
    optimizers), at which it runs once: the baseline's multiplier means
    nothing to it. ``family`` groups the tables and plots.
    """

    optimizer: Optimizer
    family: str
    own_rate: float | None = None

    @property
    def name(self) -> str:
        return self.optimizer.name

    @property
    def multipliers(self) -> tuple[float, ...]:
        """The multipliers this peer is run at."""
        return MULTIPLIERS if self.own_rate is None else (1.0,)

    def rate(self, best: float, multiplier: float) -> float:
        return (self.own_rate if self.own_rate is not None else best) * multiplier


_LYAPOPT = ("value", "value_fn")


def peers() -> tuple[Peer, ...]:
    """Every peer of the study, the baseline first."""

    def make(name: str, fn: Callable[[Any, int], Any], **kw: Any) -> Optimizer:
        return Optimizer(name, fn, **kw)

    clipped = "clipping and skipping"
    free = "learning-rate-free (at its default)"
    ours = "lyapopt"
    return (
        Peer(make(BASELINE, adamw_recipe), clipped),
        Peer(
            make("adamw (no clip)", lambda lr, n: adamw_recipe(lr, n, clip=False)),
            clipped,
        ),
        Peer(
            make(
                "adaptive_grad_clip+adamw",
                lambda lr, n: optax.chain(
                    optax.adaptive_grad_clip(0.05), adamw_recipe(lr, n, clip=False)
                ),
            ),
            clipped,
        ),
        Peer(
            make(
                "zclip+adamw",
                lambda lr, n: optax.chain(zclip(), adamw_recipe(lr, n, clip=False)),
            ),
            clipped,
        ),
        Peer(
            make(
                "spam",
                lambda lr, n: spam(recipe_schedule(lr, n), b2=0.95, weight_decay=0.1),
            ),
            clipped,
        ),
        Peer(
            make(
                "skip_on_spike(recipe)",
                lambda lr, n: skip_on_spike(adamw_recipe(lr, n)),
                extras=("value",),
            ),
            clipped,
        ),
        Peer(make("contrib.prodigy", lambda lr, n: contrib.prodigy(lr)), free, 1.0),
        Peer(make("contrib.dog", lambda lr, n: contrib.dog(lr)), free, 1.0),
        Peer(
            make(
                "contrib.schedule_free_adamw",
                lambda lr, n: contrib.schedule_free_adamw(lr),
                eval_params=contrib.schedule_free_eval_params,
            ),
            free,
            0.0025,
        ),
        Peer(
            make(
                "contrib.mechanize(adamw)",
                # Mechanic learns the scale of its base optimizer's step: the
                # base keeps the recipe's schedule shape at a peak of 1.
                lambda lr, n: contrib.mechanize(
                    optax.adamw(recipe_schedule(lr, n), b2=0.95, weight_decay=0.1)
                ),
            ),
            free,
            1.0,
        ),
        Peer(
            make(
                "lyapunov_adam",
                lambda lr, n: lyapopt.lyapunov_adam(lr),
                extras=_LYAPOPT,
            ),
            ours,
        ),
        Peer(
            make(
                RECOMMENDED,
                lambda lr, n: lyapopt.stabilize(
                    adamw_recipe(lr, n), curvature_every=50
                ),
                # The recipe clips and decays the weights: g.u takes the raw
                # gradient, passed as `grad`.
                extras=(*_LYAPOPT, "grad"),
            ),
            ours,
        ),
    )


UNTUNED = "lyapunov_adam() untuned"


# --- the runs ------------------------------------------------------------------


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
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One peer's share: every multiplier (those not ``given``), then the seeds
    at its best one, all in one process so that the peer compiles once."""
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
    if name != "lyapunov_adam":
        return runs, seeds
    # And lyapopt untuned, at its default rate: the runs above where that
    # rate is one of them (the same rate and seed is the same run).
    default = OPTIMIZERS["lyapunov_adam"].default_lr
    if math.isclose(default, best["learning_rate"], rel_tol=1e-6):
        return runs, seeds + [r | {"multiplier": None} for r in seeds]
    same = [r for r in runs if math.isclose(default, r["learning_rate"], rel_tol=1e-6)]
    lanes = [(default, s, None) for s in range(len(same), settings.seeds)]
    untuned = [r | {"multiplier": None} for r in same] + _lanes(settings, name, lanes)
    return runs, seeds + untuned


def run_study(settings: Settings) -> dict[str, Any]:
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
        runs, seeds = {}, {}
        for p in tqdm(study, desc=f"{NAME}: peers", unit="peer"):
            runs[p.name], seeds[p.name] = jobs[p.name].result()
    ours = seeds["lyapunov_adam"]
    seeds["lyapunov_adam"] = ours[: settings.seeds]
    seeds[UNTUNED] = ours[settings.seeds :]

    # 5. The cost per step at 1x, interleaved, alone on the machine, in
    # calls of CHUNK steps (the runs' calls of ``eval_every`` steps would make
    # every measurement as long).
    entries = {
        p.name: (_runner(settings, p.name, CHUNK), p.rate(best_lr, 1.0)) for p in study
    }
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
        "default_lr": OPTIMIZERS["lyapunov_adam"].default_lr,
        "per_step": per_step,
        "wall_seconds": time.perf_counter() - start,
    }


# --- the report ----------------------------------------------------------------


def _mean_bpb(runs: list[dict[str, Any]]) -> float:
    values = [r["final_bpb"] for r in runs]
    if any(r["diverged"] for r in runs) or not all(map(math.isfinite, values)):
        return math.nan
    return float(np.mean(values))


def summary(study: dict[str, Any]) -> dict[str, Any]:
    """The numbers the goals are judged on."""
    base = _mean_bpb(study["seeds"][BASELINE])
    target = base * (1 + TARGET_SLACK)
    step_s = {n: t["median"] for n, t in study["per_step"].items()}
    out: dict[str, Any] = {"baseline_bpb": base, "target_bpb": target, "peers": {}}
    for name, runs in study["runs"].items():
        seeds = study["seeds"][name]
        reached = [
            next(
                (
                    s
                    for s, v in zip(r["eval_steps"], r["bpb"], strict=True)
                    if v <= target
                ),
                None,
            )
            for r in seeds
        ]
        hit = [s for s in reached if s is not None]
        out["peers"][name] = {
            "spikes": [r["spikes"] for r in runs],
            "diverged": [r["diverged"] for r in runs],
            "gap_percent": [100 * (r["final_bpb"] - base) / base for r in runs],
            "seeds_bpb": [r["final_bpb"] for r in seeds],
            "seeds_mean": _mean_bpb(seeds),
            "best_multiplier": seeds[0]["multiplier"],
            "cost_ratio": step_s[name] / step_s[BASELINE],
            "seconds_to_target": (
                float(np.median(hit)) * step_s[name] if len(hit) == len(seeds) else None
            ),
        }
    untuned = study["seeds"][UNTUNED]
    out["untuned"] = {
        "bpb": [r["final_bpb"] for r in untuned],
        "mean": _mean_bpb(untuned),
        "gap_percent": 100 * (_mean_bpb(untuned) - base) / base,
        "spikes": [r["spikes"] for r in untuned],
    }
    return out


def goals(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The four goals: what was measured, and whether each holds."""
    s = summary(study)
    ours = [n for n, f in study["families"].items() if f == "lyapopt"]
    peers_ = s["peers"]
    calm = {
        n: sum(peers_[n]["spikes"]) == 0 and not any(peers_[n]["diverged"])
        for n in ours
    }
    worst = {n: max(peers_[n]["gap_percent"]) for n in ours}
    return [
        {
            "goal": "1. no spike, no divergence for lyapopt at 1x-30x",
            "measured": ", ".join(f"{n}: spikes {peers_[n]['spikes']}" for n in ours),
            "holds": all(calm.values()),
        },
        {
            "goal": "2. lyapopt within 1% of the tuned baseline at every multiplier",
            "measured": ", ".join(f"{n}: worst {w:+.1f}%" for n, w in worst.items()),
            "holds": any(w <= 1.0 for w in worst.values()),
        },
        {
            "goal": "3. lyapunov_adam() untuned within 1% of the tuned baseline",
            "measured": f"{s['untuned']['gap_percent']:+.2f}% "
            f"({s['untuned']['mean']:.4f} vs {s['baseline_bpb']:.4f} bits/byte)",
            "holds": s["untuned"]["gap_percent"] <= 1.0,
        },
        {
            "goal": "4. step cost at most 1.5x the baseline's",
            "measured": ", ".join(f"{n}: {peers_[n]['cost_ratio']:.2f}x" for n in ours),
            "holds": any(peers_[n]["cost_ratio"] <= 1.5 for n in ours),
        },
    ]


def _f(x: float | None, spec: str = ".3f") -> str:
    return report._fmt(x, spec)


def markdown(study: dict[str, Any], meta: dict[str, Any], plots: dict[str, str]) -> str:
    """The generated section of RESULTS.md."""
    s = summary(study)
    st = study["settings"]
    lines = [
        BEGIN,
        "",
        f"## Loss spikes on a language model (`{NAME}`)",
        "",
        f"    {meta['command']}",
        "",
        f"{study['title']}: {st['num_params']:,} parameters, {st['steps']} steps, "
        f"validation bits per byte on {st['eval_windows']} held-out windows every "
        f"{st['eval_every']} steps. The whole study took "
        f"{study['wall_seconds'] / 60:.1f} minutes"
        + (" (`--quick`: a smoke test, not results)." if meta.get("quick") else ".")
        + f" Machine: {meta['machine']['cpu_model']}, `nproc` = "
        f"{meta['machine']['nproc']}.",
        "",
        f"- Baseline (`{BASELINE}`): AdamW (b2 0.95), warmup over 5% of the steps "
        "then cosine decay to a tenth, weight decay 0.1, `clip_by_global_norm(1.0)`. "
        f"Its sweep (seed 0): "
        + ", ".join(
            f"{r['learning_rate']:.3g} → {_f(r['final_bpb'])}" for r in study["sweep"]
        )
        + f"; best rate (1x) = {study['best_lr']:.3g}.",
        f"- Spike: a step whose batch loss exceeds {SPIKE_FACTOR}x the median of "
        f"the previous {SPIKE_WINDOW} steps' batch losses (a non-finite loss "
        "counts). Diverged: a non-finite final loss, or one above the initial.",
        "- Learning-rate-free peers run once, at their authors' default rate "
        "(untuned): the baseline's multiplier means nothing to them, and their "
        "one run stands in every column. Every other peer runs at the "
        "multiplier times the baseline's best rate.",
        "",
        "**Final validation bits/byte (seed 0) and spikes, at each multiplier**",
        "",
    ]
    rows = []
    for name, runs in study["runs"].items():
        cells = [
            f"{_f(r['final_bpb'])}{' (div.)' if r['diverged'] else ''} / {r['spikes']}"
            for r in runs
        ]
        if len(runs) == 1:  # learning-rate-free: one run, at its default
            cells += ["(rate-free: the 1x run)"] * (len(MULTIPLIERS) - 1)
        rows.append([f"`{name}`", study["families"][name], *cells])
    lines += report._table(
        ["peer", "family", *(f"{m}: bits/byte / spikes" for m in LABELS)],
        rows,
        "ll" + "r" * 4,
    )
    lines += [
        "",
        f"**At each peer's best multiplier, {st['seeds']} seeds; cost at 1x** "
        f"(target for the time: {_f(s['target_bpb'])} bits/byte, the baseline's "
        f"mean + {100 * TARGET_SLACK:g}%)",
        "",
    ]
    rows = []
    for name, p in s["peers"].items():
        b = p["seeds_bpb"]
        free = len(study["runs"][name]) == 1
        rows.append(
            [
                f"`{name}`",
                "default" if free else LABELS[MULTIPLIERS.index(p["best_multiplier"])],
                f"{_f(p['seeds_mean'])} [{_f(min(b))}-{_f(max(b))}]",
                f"{100 * (p['seeds_mean'] - s['baseline_bpb']) / s['baseline_bpb']:+.2f}%",
                f"{p['cost_ratio']:.2f}",
                _f(p["seconds_to_target"], ".3g"),
            ]
        )
    u = s["untuned"]
    rows.append(
        [
            f"`{UNTUNED}`",
            f"lr {study['default_lr']:g}",
            f"{_f(u['mean'])} [{_f(min(u['bpb']))}-{_f(max(u['bpb']))}]",
            f"{u['gap_percent']:+.2f}%",
            "",
            "",
        ]
    )
    lines += report._table(
        [
            "peer",
            "best at",
            "bits/byte, mean [min-max]",
            "vs baseline",
            "step cost x baseline",
            "seconds to target",
        ],
        rows,
    )
    lines += ["", "**Goals**", ""]
    lines += report._table(
        ["goal", "measured", "holds"],
        [
            [g["goal"], g["measured"], "yes" if g["holds"] else "**no**"]
            for g in goals(study)
        ],
        "lll",
    )
    lines += [
        "",
        f"![batch loss at 10x, every peer]({plots['curves']})",
        "",
        f"![final bits/byte against the multiplier]({plots['rates']})",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def _columns(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per multiplier: a learning-rate-free peer's one run stands in
    every column."""
    return runs * len(MULTIPLIERS) if len(runs) == 1 else runs


def plot(study: dict[str, Any], out: Path, rel: Path) -> dict[str, str]:
    """The two figures: batch loss at 10x, and bits/byte against the multiplier."""
    plt = report._pyplot()
    names = list(study["runs"])
    colors = plt.get_cmap("tab20").colors
    style = {
        n: {
            "color": colors[i % len(colors)],
            "linewidth": 1.6 if study["families"][n] == "lyapopt" else 0.8,
            "linestyle": "-" if study["families"][n] == "lyapopt" else "--",
        }
        for i, n in enumerate(names)
    }
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    at10 = LABELS.index("10x")
    finite = []
    for name in names:
        run = _columns(study["runs"][name])[at10]
        loss = np.asarray(run["batch_loss"], np.float64)
        finite += list(loss[np.isfinite(loss)])
        ax.plot(np.arange(len(loss)), loss, label=name, **style[name])
    if finite:
        ax.set_ylim(0.8 * min(finite), min(max(finite), 3 * float(np.median(finite))))
    ax.set_xlabel("step")
    ax.set_ylabel("batch cross-entropy (nats)")
    ax.set_title(f"{NAME}: every peer at 10x (spikes are the peaks)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    curves = out / f"{NAME}_curves_10x.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))

    def ok(r: dict[str, Any]) -> bool:
        return not r["diverged"] and math.isfinite(r["final_bpb"])

    kept = [r["final_bpb"] for n in names for r in study["runs"][n] if ok(r)]
    top = 1.05 * max(kept, default=1.0)  # diverged runs are drawn here, as x
    for name in names:
        runs = _columns(study["runs"][name])  # rate-free: level across the axis
        y = [r["final_bpb"] if ok(r) else top for r in runs]
        ax.plot(MULTIPLIERS, y, marker="o", markersize=3, label=name, **style[name])
        bad = [(m, top) for m, r in zip(MULTIPLIERS, runs, strict=True) if not ok(r)]
        if bad:
            ax.scatter(
                *zip(*bad, strict=True), marker="x", s=40, color=style[name]["color"]
            )
    base = summary(study)["baseline_bpb"]
    ax.axhline(base, color="black", linewidth=0.6)
    ax.axhline(1.01 * base, color="gray", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_xticks(MULTIPLIERS, LABELS)
    ax.set_xlabel("learning-rate multiplier")
    ax.set_ylabel("final validation bits/byte (x at the top: diverged)")
    ax.set_title(
        f"{NAME}: quality against rate (lines: tuned baseline, +1%)", fontsize=10
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    rates = out / f"{NAME}_rates.png"
    fig.savefig(rates, dpi=110)
    plt.close(fig)
    return {
        "curves": report._relative(curves, rel),
        "rates": report._relative(rates, rel),
    }


def write(md: Path, text: str) -> None:
    """Replaces this study's section of ``md`` (appends it the first time)."""
    old = md.read_text() if md.exists() else "# lyapopt benchmarks\n"
    new = report.replace_section(old, text, BEGIN, END)
    md.write_text(new if new is not None else old.rstrip("\n") + "\n\n" + text)


# --- where the stabilised step's cost goes -----------------------------------

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
    extras = (*_LYAPOPT, "grad")
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
    return "\n".join(report._table(["step", "ms", "x recipe"], rows))


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
        _LYAPOPT,
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
        report._table(
            ["task", "optax.adamw ms", *(f"`{o.name}` x adamw" for o in opts[1:])],
            rows,
        )
    )


if __name__ == "__main__":
    print(cost_breakdown(Settings()))
    print()
    print(suite_cost())
