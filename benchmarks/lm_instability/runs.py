"""The runs: the peers, one run's training loop with lyapopt's per-step
statistics, and what is measured on it (spikes, recoveries, the guard's
decisions around each spike and each bad batch)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lyapopt
from benchmarks.adagc import adagc
from benchmarks.lm_instability.model import LMProblem
from benchmarks.lm_instability.settings import TRIGGERS, Settings, Trigger
from benchmarks.lm_spikes import SPIKE_WINDOW, spikes
from benchmarks.spike_peers import SkipOnSpikeState, skip_on_spike, spam, zclip

Z_LOSS = 1e-4
RECIPE = "adamw (the setting's recipe)"
ARCH = "adamw + qk-norm + z-loss"
RECOMMENDED = "stabilize(recipe, curvature_every=50)"
PROPOSAL = "skip_on_spike(stabilize(recipe))"
# The per-step statistics of lyapopt's guard that a run keeps.
GUARD_KEYS = ("guard_scale", "backtracks")


def schedule(lr: Any, steps: int, warmup: float) -> optax.Schedule:
    """lm_spikes' shape (warmup, cosine to a tenth), the warmup optional."""
    if warmup > 0:
        shape = optax.warmup_cosine_decay_schedule(
            0.0, 1.0, max(1, int(warmup * steps)), steps, end_value=0.1
        )
    else:
        shape = optax.cosine_decay_schedule(1.0, steps, alpha=0.1)
    return lambda count: lr * shape(count)


def adamw(t: Trigger, lr: Any, steps: int) -> optax.GradientTransformation:
    """The trigger's AdamW, without its clipping."""
    return optax.adamw(
        schedule(lr, steps, t.warmup), b2=t.b2, eps=t.eps, weight_decay=0.1
    )


def recipe(t: Trigger, lr: Any, steps: int) -> optax.GradientTransformation:
    """The trigger's AdamW recipe (clipped where the trigger clips)."""
    tx = adamw(t, lr, steps)
    return optax.chain(optax.clip_by_global_norm(1.0), tx) if t.clip else tx


@dataclass(frozen=True)
class Peer:
    """An optimizer of the study on a trigger's setting."""

    name: str
    family: str
    make: Callable[[Trigger, Any, int], optax.GradientTransformation]
    extras: tuple[str, ...] = ()
    qk_norm: bool = False
    z_loss: float = 0.0


_LY = ("value", "value_fn")


def peers() -> tuple[Peer, ...]:
    """The recipe first; every other peer adds one fix to it."""
    opt = "optimizer-side fix"
    return (
        Peer(RECIPE, "recipe", recipe),
        Peer(ARCH, "architectural fix", recipe, qk_norm=True, z_loss=Z_LOSS),
        Peer(
            "zclip+adamw",
            opt,
            lambda t, lr, n: optax.chain(zclip(), adamw(t, lr, n)),
        ),
        Peer(
            "spam",
            opt,
            lambda t, lr, n: spam(
                schedule(lr, n, t.warmup), b2=t.b2, eps=t.eps, weight_decay=0.1
            ),
        ),
        Peer(
            "skip_on_spike(recipe)",
            opt,
            lambda t, lr, n: skip_on_spike(recipe(t, lr, n)),
            extras=("value",),
        ),
        Peer(
            "adagc+adamw",
            opt,
            lambda t, lr, n: optax.chain(adagc(), adamw(t, lr, n)),
        ),
        Peer(
            "lyapunov_adam",
            "lyapopt",
            lambda t, lr, n: lyapopt.lyapunov_adam(lr, b2=t.b2, eps=t.eps),
            extras=_LY,
        ),
        Peer(
            RECOMMENDED,
            "lyapopt",
            lambda t, lr, n: lyapopt.stabilize(recipe(t, lr, n), curvature_every=50),
            extras=(*_LY, "grad"),
        ),
        # Goal 3's proposal, built from existing pieces: the guard judges a
        # step on its own batch, so a garbage batch can pass it; a running
        # reference of recent losses (skip_on_spike's median of the last 50
        # accepted) refuses the batch itself.
        Peer(
            PROPOSAL,
            "proposal: lyapopt + a loss reference",
            lambda t, lr, n: skip_on_spike(
                lyapopt.stabilize(recipe(t, lr, n), curvature_every=50)
            ),
            extras=(*_LY, "grad"),
        ),
    )


PEERS = {p.name: p for p in peers()}


@functools.cache
def lm_problem(
    settings: Settings, qk_norm: bool, norm_dtype: str | None, bad: tuple, z_loss: float
) -> LMProblem:
    """One problem (data on the device, a jitted evaluation) per model and
    data, shared by the peers that train on it."""
    return LMProblem(settings.task(qk_norm, norm_dtype, bad), z_loss=z_loss, bad=bad)


class Runner:
    """One peer on one trigger: ``run(params, state, lr, idx)`` jitted once.

    Like :class:`benchmarks.train.Runner`, plus lyapopt's guard statistics
    after every step (empty for the other peers).
    """

    def __init__(self, settings: Settings, trigger: Trigger, peer: Peer) -> None:
        self.problem = problem = lm_problem(
            settings, peer.qk_norm, trigger.norm_dtype, trigger.bad, peer.z_loss
        )
        steps = settings.steps

        def make(lr: Any) -> optax.GradientTransformation:
            return peer.make(trigger, lr, steps)

        def run(data, params, state, lr, idx):
            tx = make(lr)

            def step(carry, rows):
                params, state = carry
                x, y = problem.batch(data, rows)

                def value_fn(p):
                    return problem.loss(p, x, y)

                value, grads = jax.value_and_grad(value_fn)(params)
                offered = {"value": value, "grad": grads, "value_fn": value_fn}
                extra = {k: offered[k] for k in peer.extras}
                updates, state = tx.update(grads, state, params, **extra)
                st = lyapopt.stats(state)
                kept = {k: st[k].astype(jnp.float32) for k in GUARD_KEYS if k in st}
                if isinstance(state, SkipOnSpikeState):
                    kept["skipped"] = state.skipped.astype(jnp.float32)
                return (optax.apply_updates(params, updates), state), (value, kept)

            (params, state), (values, kept) = jax.lax.scan(step, (params, state), idx)
            finite = jnp.all(
                jnp.asarray([jnp.isfinite(p).all() for p in jax.tree.leaves(params)])
            )
            return params, state, values, kept, finite

        self._init = jax.jit(lambda params, lr: make(lr).init(params))
        self._run = jax.jit(run)

    def init(self, seed: int, lr: float):
        params = self.problem.init_params(seed)
        lr = jnp.asarray(lr, jnp.float32)
        return params, self._init(params, lr), lr


_RUNNERS: dict[tuple, Runner] = {}


def runner(settings: Settings, trigger: Trigger, peer: Peer) -> Runner:
    key = (settings, trigger, peer.name)
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(settings, trigger, peer)
    return _RUNNERS[key]


def train(r: Runner, lr: float, seed: int, steps: int) -> dict[str, Any]:
    """One run; stops early once the parameters are not finite (the rest of
    the batch losses are then NaN: a diverged run)."""
    problem = r.problem
    every = problem.task.eval_every
    idx = problem.indices(seed, steps)
    params, state, lr_arg = r.init(seed, lr)
    ev = problem.evaluate_jit(problem.data, params)
    evals, eval_steps, values, kept = [ev], [0], [], []
    start = time.perf_counter()
    for s in range(0, steps, every):
        rows = jnp.asarray(idx[s : s + every])
        params, state, v, k, finite = r._run(problem.data, params, state, lr_arg, rows)
        values.append(np.asarray(v, np.float64))
        kept.append({n: np.asarray(a) for n, a in k.items()})
        evals.append(problem.evaluate_jit(problem.data, params))
        eval_steps.append(s + len(rows))
        if not bool(finite):
            break
    seconds = time.perf_counter() - start
    loss = np.concatenate(values)
    done = len(loss)
    loss = np.concatenate([loss, np.full(steps - done, np.nan)])
    evals = jax.device_get(evals)
    guard = {n: np.concatenate([k[n] for k in kept]).tolist() for n in kept[0]}
    train_loss = [float(e["train_loss"]) for e in evals]
    bpb = [float(e["metric"]) for e in evals]
    final = train_loss[-1]
    return {
        "learning_rate": lr,
        "seed": seed,
        "steps_run": done,
        "seconds": seconds,
        "eval_steps": eval_steps,
        "bpb": bpb,
        "final_bpb": bpb[-1] if done == steps else math.nan,
        "initial_bpb": bpb[0],
        "diverged": done < steps or not math.isfinite(final) or final > train_loss[0],
        "batch_loss": loss,
        "guard": guard,
    }


# --- what is measured on a run ---------------------------------------------


def clean_losses(loss: np.ndarray, bad: tuple) -> np.ndarray:
    """The batch losses with each bad batch's own loss replaced by the one
    before it: a garbage batch's high loss is not a training spike."""
    out = np.array(loss, np.float64)
    for step, _ in sorted(bad):
        if 0 < step < len(out):
            out[step] = out[step - 1]
    return out


def spike_steps(values: np.ndarray) -> list[int]:
    """The steps that :func:`benchmarks.lm_spikes.spikes` counts."""
    return [t for t in range(SPIKE_WINDOW, len(values)) if spikes_at(values, t)]


def spikes_at(values: np.ndarray, t: int) -> bool:
    return spikes(values[t - SPIKE_WINDOW : t + 1]) == 1


def events(steps: list[int], gap: int = 10) -> list[int]:
    """The first step of each cluster of spike steps (``gap`` apart at most)."""
    out: list[int] = []
    for i, t in enumerate(steps):
        if i == 0 or t - steps[i - 1] > gap:
            out.append(t)
    return out


def recovery(values: np.ndarray, t: int, smooth: int = 10) -> int | None:
    """Steps from a spike at ``t`` until the median of ``smooth`` batch losses
    is back at the median of the ``SPIKE_WINDOW`` before it (None: never)."""
    before = values[max(0, t - SPIKE_WINDOW) : t]
    before = before[np.isfinite(before)]
    if not before.size:
        return None
    level = float(np.median(before))
    for s in range(t + 1, len(values) - smooth + 1):
        w = values[s : s + smooth]
        if np.all(np.isfinite(w)) and np.median(w) <= level:
            return s - t
    return None


def measure(run: dict[str, Any], trigger: Trigger, around: list[int]) -> dict:
    """A run's record as JSON: spikes, recoveries, and the guard's decisions
    within [-5, +20] steps of each step in ``around`` (the recipe's spikes
    and the bad batches) and at each bad batch."""
    loss = run["batch_loss"]
    clean = clean_losses(loss, trigger.bad)
    steps = spike_steps(clean)
    ev = events(steps)
    guard = run["guard"]
    out = {k: v for k, v in run.items() if k not in ("batch_loss", "guard")}
    out |= {
        "spikes": len(steps),
        "spike_steps": steps,
        "events": ev,
        "recovery": [recovery(clean, t) for t in ev],
        "batch_loss": [float(f"{v:.5g}") for v in loss],
    }
    bad_after = []
    for step, kind in trigger.bad:
        if step + 1 < len(loss) and step >= 10:
            ref = float(np.median(clean[max(0, step - SPIKE_WINDOW) : step]))
            nxt = clean[step + 1 : step + 6]
            bad_after.append(
                {
                    "step": step,
                    "kind": kind,
                    "loss_on_bad_batch": float(loss[step]),
                    # The clean loss right after, against the median before.
                    "next_5_max_ratio": float(np.max(nxt) / ref),
                }
            )
    out["bad_batches"] = bad_after
    if "skipped" in guard:
        # skip_on_spike's running count: a rise at a step is a skipped step.
        count = np.asarray(guard["skipped"])
        skipped = np.diff(np.concatenate([[0.0], count])) > 0
        out["skipped"] = int(np.sum(skipped))
        for b in out["bad_batches"]:
            b["skipped"] = bool(skipped[b["step"]])
    if "guard_scale" in guard:
        scale = np.asarray(guard["guard_scale"])
        back = np.asarray(guard["backtracks"])
        n = len(scale)
        out["rejections"] = int(np.sum(scale == 0))
        out["backtracks"] = int(np.sum(back))
        out["guard_around"] = [
            {
                "step": t,
                "rejections": int(np.sum(scale[max(0, t - 5) : t + 21] == 0)),
                "backtracks": int(np.sum(back[max(0, t - 5) : t + 21])),
            }
            for t in around
            if t < n
        ]
        for b in out["bad_batches"]:
            b["guard_scale"] = float(scale[b["step"]])
            b["backtracks"] = int(back[b["step"]])
    return out


def sensitivity(finals: list[float], initial: float) -> float:
    """Wortsman et al.'s learning-rate sensitivity: the mean over the grid of
    ``min(final, initial) - best``, a diverged run counted at the initial."""
    vals = [min(f, initial) if math.isfinite(f) else initial for f in finals]
    return float(np.mean(vals) - min(vals))


# --- the study ---------------------------------------------------------------


def run_study(settings: Settings) -> dict[str, Any]:
    """Every peer on every trigger of ``settings``, over the rate grid."""
    start = time.perf_counter()
    names = settings.peers or tuple(PEERS)
    out: dict[str, Any] = {"settings": asdict(settings), "triggers": {}}
    for tname in settings.triggers:
        trigger = TRIGGERS[tname]
        rates = settings.rates(trigger)
        bad_steps = [s for s, _ in trigger.bad]
        runs: dict[str, list[dict]] = {}
        around: list[int] = list(bad_steps)
        for name in names:
            r = runner(settings, trigger, PEERS[name])
            # The trigger's rate first: the recipe's spikes there are where
            # the guard's decisions are read.
            lanes = [train(r, lr, settings.seed, settings.steps) for lr in rates]
            recs = [measure(lane, trigger, around) for lane in lanes]
            if name == RECIPE:
                around = sorted(set(bad_steps) | set(recs[-1]["events"]))
                recs = [measure(lane, trigger, around) for lane in lanes]
            runs[name] = recs
        initial = runs[RECIPE][0]["initial_bpb"]
        out["triggers"][tname] = {
            "trigger": asdict(trigger),
            "rates": list(rates),
            "around": around,
            "runs": runs,
            "sensitivity": {
                n: sensitivity([r["final_bpb"] for r in rs], initial)
                for n, rs in runs.items()
            },
        }
    out["cost"] = {
        k: time_peers(settings, TRIGGERS[k], names, settings.timing_rounds)
        for k in settings.triggers[:1]
    }
    out["families"] = {n: PEERS[n].family for n in names}
    out["title"] = settings.task().title
    first = TRIGGERS[settings.triggers[0]]
    params = lm_problem(settings, False, None, first.bad, 0.0).init_params(0)
    out["num_params"] = int(sum(x.size for x in jax.tree.leaves(params)))
    out["wall_seconds"] = time.perf_counter() - start
    return out


def time_peers(
    settings: Settings, trigger: Trigger, names: tuple[str, ...], rounds: int
) -> dict[str, dict[str, float]]:
    """Seconds per step of each peer on ``trigger`` at its grid's lowest rate,
    interleaved: one untimed call each, then ``rounds`` rounds of one call of
    ``eval_every`` steps per peer, in an order rotated from round to round."""
    lr = settings.rates(trigger)[0]
    entries = {n: runner(settings, trigger, PEERS[n]) for n in names}
    carries = {n: r.init(settings.seed, lr) for n, r in entries.items()}
    idx = entries[names[0]].problem.indices(settings.seed, settings.eval_every)
    rows = jnp.asarray(idx)

    def once(n: str) -> float:
        params, state, lr_arg = carries[n]
        r = entries[n]
        t0 = time.perf_counter()
        out = r._run(r.problem.data, params, state, lr_arg, rows)
        jax.block_until_ready(out)
        carries[n] = (out[0], out[1], lr_arg)
        return (time.perf_counter() - t0) / len(idx)

    for n in names:
        once(n)
    times: dict[str, list[float]] = {n: [] for n in names}
    for k in range(rounds):
        for n in names[k % len(names) :] + names[: k % len(names)]:
            times[n].append(once(n))
    return {
        n: {"median": float(np.median(t)), "min": float(np.min(t))}
        for n, t in times.items()
    }
