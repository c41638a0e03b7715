"""The runs: each peer on each trigger over its rate grid, with lyapopt's
guard statistics after every step, and what is measured on a run (spikes,
recoveries, the guard's decisions around each spike and each bad batch)."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lyapopt
from benchmarks import lm_spikes, train
from benchmarks.lm_instability.model import LMProblem
from benchmarks.lm_instability.peers import PEERS, RECIPE, Peer
from benchmarks.lm_instability.settings import (
    NAME,
    TRIGGERS,
    Bad,
    Settings,
    Trigger,
    task,
)
from benchmarks.lm_spikes import SPIKE_WINDOW, spikes
from benchmarks.spike_peers import SkipOnSpikeState

# The per-step statistics of lyapopt's guard that a run keeps.
GUARD_KEYS = ("guard_scale", "backtracks")


def guard_record(state: Any) -> dict[str, jax.Array]:
    """What a run keeps of the optimizer's state after every step: lyapopt's
    guard statistics, and the running count of skipped steps of
    skip_on_spike and of lyapopt's loss reference (nothing for the other
    peers)."""
    st = lyapopt.stats(state)
    kept = {k: st[k].astype(jnp.float32) for k in GUARD_KEYS if k in st}
    if isinstance(state, SkipOnSpikeState):
        kept["skipped"] = state.skipped.astype(jnp.float32)
    elif "spike_skips" in st:
        kept["skipped"] = st["spike_skips"].astype(jnp.float32)
    return kept


@functools.cache
def lm_problem(
    lm: lm_spikes.Settings,
    qk_norm: bool,
    norm_dtype: str | None,
    bad: Bad,
    z_loss: float,
) -> LMProblem:
    """One problem (data on the device, a jitted evaluation) per model and
    data, shared by the peers that train on it."""
    return LMProblem(task(lm, qk_norm, norm_dtype, bad), z_loss=z_loss, bad=bad)


def runner(settings: Settings, trigger: Trigger, peer: Peer) -> train.Runner:
    """The peer on the trigger's setting: one runner per model, lengths,
    trigger and peer, whatever else ``settings`` selects, so that each
    compiles once in a process."""
    return _runner(settings.lm(), trigger, peer)


@functools.cache
def _runner(lm: lm_spikes.Settings, trigger: Trigger, peer: Peer) -> train.Runner:
    problem = lm_problem(lm, peer.qk_norm, trigger.norm_dtype, trigger.bad, peer.z_loss)
    return train.Runner(problem, peer.optimizer(trigger), record=guard_record)


def lane(r: train.Runner, lr: float, seed: int, steps: int) -> dict[str, Any]:
    """One run, as :func:`measure` reads it."""
    start = time.perf_counter()
    run = train.train(r, lr, seed, steps)
    return {
        "learning_rate": lr,
        "seed": seed,
        # The run's wall time, its evaluations (and the first run's
        # compilation) included.
        "seconds": time.perf_counter() - start,
        "eval_steps": run.eval_steps,
        "bpb": run.metric,
        "final_bpb": run.metric[-1],
        "initial_bpb": run.metric[0],
        "diverged": run.diverged,
        "batch_loss": run.batch_values,
        "guard": run.recorded,
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


def peer_names(settings: Settings) -> tuple[str, ...]:
    """The peers ``settings`` selects, the recipe first whether selected or
    not: every setting's measures read against it."""
    names = settings.peers or tuple(PEERS)
    unknown = [n for n in names if n not in PEERS]
    unknown += [t for t in settings.triggers if t not in TRIGGERS]
    if unknown:
        raise ValueError(
            f"{NAME}: unknown peers or triggers {unknown}; the peers are "
            f"{list(PEERS)}, the triggers {list(TRIGGERS)}."
        )
    return (RECIPE, *(n for n in names if n != RECIPE))


def run(settings: Settings) -> dict[str, Any]:
    """Every peer of ``settings`` on each of its triggers, over the trigger's
    rate grid; the cost per step on the first trigger. Returns the JSON."""
    names = peer_names(settings)
    out: dict[str, Any] = {"settings": asdict(settings), "triggers": {}}
    for tname in settings.triggers:
        trigger = TRIGGERS[tname]
        rates = settings.rates(trigger)
        bad_steps = [s for s, _ in trigger.bad]
        runs: dict[str, list[dict]] = {}
        around: list[int] = list(bad_steps)
        for name in names:
            r = runner(settings, trigger, PEERS[name])
            lanes = [lane(r, lr, settings.seed, settings.steps) for lr in rates]
            recs = [measure(x, trigger, around) for x in lanes]
            if name == RECIPE:
                # The recipe (run first) at the trigger's rate: its spikes
                # are where every peer's guard decisions are read.
                around = sorted(set(bad_steps) | set(recs[-1]["events"]))
                recs = [measure(x, trigger, around) for x in lanes]
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
    first = TRIGGERS[settings.triggers[0]]
    out["cost"] = {first.name: cost(settings, first, names)}
    out["families"] = {n: PEERS[n].family for n in names}
    out["title"] = settings.lm().task().title
    base = lm_problem(settings.lm(), False, first.norm_dtype, first.bad, 0.0)
    out["num_params"] = int(base.num_params())
    return out


def cost(
    settings: Settings, trigger: Trigger, names: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Seconds per step of each peer on ``trigger`` at its grid's lowest rate,
    interleaved (:func:`benchmarks.train.time_steps`), in calls of
    ``eval_every`` steps: the runs' own compiled functions."""
    lr = settings.rates(trigger)[0]
    entries = {n: (runner(settings, trigger, PEERS[n]), lr) for n in names}
    return train.time_steps(entries, settings.timing_rounds)
