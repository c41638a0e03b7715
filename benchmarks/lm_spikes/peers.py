"""``lm_spikes``' peers: the baseline recipe, the optimizers a user would
reach for against spikes, the learning-rate-free ones, and lyapopt's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optax
from optax import contrib

import lyapopt
from benchmarks.lm_spikes.settings import MULTIPLIERS
from benchmarks.optimizers import LYAPOPT_EXTRAS, Optimizer
from benchmarks.spike_peers import skip_on_spike, spam, zclip

BASELINE = "adamw+clip (recipe)"
# lyapopt's configuration for language models: the recipe, the guard every
# step, the curvature every 50 steps (see ``benchmarks.lm_spikes.cost``).
RECOMMENDED = "stabilize(recipe, curvature_every=50)"
UNTUNED = "lyapunov_adam() untuned"


def recipe_schedule(lr: Any, steps: int, *, warmup: bool = True) -> optax.Schedule:
    """Linear warmup over 5% of the run (where ``warmup``), then cosine decay
    to ``lr / 10``.

    ``lr`` may be a traced array (the runner passes the rate as an argument),
    so the schedule is the rate times a shape that peaks at 1.
    """
    if warmup:
        shape = optax.warmup_cosine_decay_schedule(
            0.0, 1.0, max(1, steps // 20), steps, end_value=0.1
        )
    else:
        shape = optax.cosine_decay_schedule(1.0, steps, alpha=0.1)
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
                extras=LYAPOPT_EXTRAS,
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
                extras=(*LYAPOPT_EXTRAS, "grad"),
            ),
            ours,
        ),
    )
