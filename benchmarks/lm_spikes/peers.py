"""``lm_spikes``' peers: the baseline recipe, the optimizers a user would
reach for against spikes, the learning-rate-free ones, and lyapopt's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optax
from optax import contrib

import lyapopt
from benchmarks.gen import FRESH, gen
from benchmarks.lm_spikes.settings import MULTIPLIERS, STARTS
from benchmarks.optimizers import LYAPOPT_EXTRAS, OPTIMIZERS, Optimizer, recipe_shape
from benchmarks.spike_peers import skip_on_spike, spam, zclip

BASELINE = "adamw+clip (recipe)"
# lyapopt's configuration for language models: the recipe, the guard every
# step, the curvature every 50 steps (see ``benchmarks.lm_spikes.cost``).
RECOMMENDED = "stabilize(recipe, curvature_every=50)"
UNTUNED = "lyapunov_adam() untuned"
# The rate-free configuration (issue 20): the recipe's direction at a
# constant rate, the rate measured on the next batch during the first tenth
# of the run and held, the recipe's warmup-cosine shape on it.
RATE_FREE = "stabilize(recipe direction, rate_until=n/10)"
GEN = "gen(recipe direction)"
# The rate a user gives who gives none: AdamW's usual default.
UNTUNED_RATE = 1e-3


def recipe_schedule(lr: Any, steps: int, *, warmup: bool = True) -> optax.Schedule:
    """``lr`` times :func:`recipe_shape`.

    ``lr`` may be a traced array (the runner passes the rate as an argument),
    so the schedule is the rate times a shape that peaks at 1.
    """
    shape = recipe_shape(steps, warmup=warmup)
    return lambda count: lr * shape(count)


def recipe_direction(lr: Any) -> optax.GradientTransformation:
    """The recipe at the constant rate ``lr``: the direction that the
    rate-free configuration and GeN scale."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(lr, b2=0.95, weight_decay=0.1),
    )


def rate_free(
    lr: Any, steps: int, *, rate_until: int | None = -1
) -> optax.GradientTransformationExtraArgs:
    """The rate-free configuration: the recipe's direction started at ``lr``;
    the rate measured every step during the first tenth of the run
    (``rate_until``; -1: ``steps // 10``) and held, times the recipe's shape;
    the curvature cap every 50 steps and the guard every step."""
    return lyapopt.stabilize(
        recipe_direction(lr),
        rate_every=1,
        rate_until=steps // 10 if rate_until == -1 else rate_until,
        rate_shape=recipe_shape(steps),
        curvature_every=50,
    )


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
    nothing to it. ``starts`` replaces the multipliers (the rate-free
    configurations: the rate they start from); ``untuned`` is the rate a
    user who gives none gets, run with every seed. ``family`` groups the
    tables and plots.
    """

    optimizer: Optimizer
    family: str
    own_rate: float | None = None
    starts: tuple[float, ...] | None = None
    untuned: float | None = None

    @property
    def name(self) -> str:
        return self.optimizer.name

    @property
    def multipliers(self) -> tuple[float, ...]:
        """The multipliers this peer is run at."""
        if self.starts is not None:
            return self.starts
        return MULTIPLIERS if self.own_rate is None else (1.0,)

    def rate(self, best: float, multiplier: float) -> float:
        return (self.own_rate if self.own_rate is not None else best) * multiplier


def peers() -> tuple[Peer, ...]:
    """Every peer of the study, the baseline first."""

    def make(name: str, fn: Callable[[Any, int], Any], **kw: Any) -> Optimizer:
        return Optimizer(name, fn, **kw)

    clipped = "clipping and skipping"
    free = "learning-rate-free (at its default)"
    measured = "rate set by measurement (from each start)"
    ours = "lyapopt"
    return (
        Peer(make(BASELINE, adamw_recipe), clipped),
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
                extras=LYAPOPT_EXTRAS,
            ),
            ours,
            untuned=OPTIMIZERS["lyapunov_adam"].default_lr,
        ),
        Peer(
            make(
                GEN,
                # GeN's rule on the same direction and shape, a rate every 4
                # steps from a fresh batch (benchmarks/gen.py).
                lambda lr, n: gen(recipe_direction(lr), 4, shape=recipe_shape(n)),
                extras=(FRESH,),
            ),
            measured,
            starts=STARTS,
            untuned=UNTUNED_RATE,
        ),
        Peer(
            make(RATE_FREE, rate_free, extras=(*LYAPOPT_EXTRAS, "grad")),
            ours,
            starts=STARTS,
            untuned=UNTUNED_RATE,
        ),
        Peer(
            make(
                RECOMMENDED,
                lambda lr, n: lyapopt.stabilize(
                    adamw_recipe(lr, n), curvature_every=50
                ),
                # The recipe clips and decays the weights: g.u takes the raw
                # gradient, passed as `grad`.
                extras=(*LYAPOPT_EXTRAS, "grad"),
            ),
            ours,
        ),
    )
