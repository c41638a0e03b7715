"""The optimizers compared, and the lyapopt variants whose step cost is timed.

Each entry builds an optax transformation from a learning rate (a traced
array inside the vmapped sweep) and the run's length, and names the extra
arguments its update needs: optax's line searches reject keywords they do not
know, and Sophia needs ``obj_fn``, so the training loop passes each optimizer
exactly what it asks for.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import optax
from optax import contrib

import lyapopt
from benchmarks.gen import FRESH, gen

LearningRate = float | jax.Array
LEARNING_RATES = tuple(10.0**k for k in range(-4, 4))  # 1e-4 ... 1e3


@dataclass(frozen=True)
class Optimizer:
    """An optimizer of the benchmark.

    ``default_lr`` is the learning rate used untuned (lyapopt's own defaults);
    ``None`` marks a peer, whose learning rate is tuned over the sweep.
    """

    name: str
    make: Callable[[LearningRate, int], optax.GradientTransformation]
    extras: tuple[str, ...] = ()
    default_lr: float | None = None
    # The parameters to evaluate, from (state, params): schedule-free
    # optimizers are evaluated at their averaged iterate, not at ``params``.
    eval_params: Callable[[Any, Any], Any] | None = None

    @property
    def is_lyapopt(self) -> bool:
        return self.default_lr is not None


# The extra arguments of lyapopt's optimizers (and of `stabilize`), for every
# benchmark: the loss at the parameters, and the loss as a function of them.
LYAPOPT_EXTRAS = ("value", "value_fn")
RATE_FREE = "lyapunov_adam/rate_free"


def recipe_shape(steps: int, *, warmup: bool = True) -> optax.Schedule:
    """The language-model recipe's schedule with a peak of 1: a linear warmup
    over 5% of the run (where ``warmup``), then cosine decay to a tenth."""
    if warmup:
        return optax.warmup_cosine_decay_schedule(
            0.0, 1.0, max(1, steps // 20), steps, end_value=0.1
        )
    return optax.cosine_decay_schedule(1.0, steps, alpha=0.1)


def _peers() -> tuple[Optimizer, ...]:
    return (
        Optimizer("optax.sgd", lambda lr, n: optax.sgd(lr, momentum=0.9)),
        Optimizer(
            "sgd+exponential_decay",
            # Decays to a tenth over the run.
            lambda lr, n: optax.sgd(
                optax.exponential_decay(lr, transition_steps=n, decay_rate=0.1),
                momentum=0.9,
            ),
        ),
        Optimizer("optax.adam", lambda lr, n: optax.adam(lr)),
        Optimizer("optax.adamw", lambda lr, n: optax.adamw(lr)),
        Optimizer(
            "optax.polyak_sgd",
            lambda lr, n: optax.polyak_sgd(max_learning_rate=lr),
            extras=("value",),
        ),
        Optimizer(
            "sgd+backtracking_linesearch",
            lambda lr, n: optax.chain(
                optax.sgd(lr),
                optax.scale_by_backtracking_linesearch(max_backtracking_steps=15),
            ),
            extras=("value", "grad", "value_fn"),
        ),
        Optimizer(
            "contrib.sophia", lambda lr, n: contrib.sophia(lr), extras=("obj_fn",)
        ),
        Optimizer("contrib.prodigy", lambda lr, n: contrib.prodigy(lr)),
        # GeN (benchmarks/gen.py) on Adam's direction, the rate from a fresh
        # batch every 4 steps, the shape of the rate-free configuration.
        Optimizer(
            "gen(adam)",
            lambda lr, n: gen(optax.adam(lr), 4, shape=recipe_shape(n)),
            extras=(FRESH,),
        ),
    )


def _default_lr(factory: Callable[..., optax.GradientTransformation]) -> float:
    """The learning rate a user gets by not passing one."""
    return float(inspect.signature(factory).parameters["learning_rate"].default)


def _ours() -> tuple[Optimizer, ...]:
    sgd_lr, adam_lr = (
        _default_lr(lyapopt.lyapunov_sgd),
        _default_lr(lyapopt.lyapunov_adam),
    )
    return (
        Optimizer(
            "lyapunov_sgd",
            lambda lr, n: lyapopt.lyapunov_sgd(lr),
            LYAPOPT_EXTRAS,
            sgd_lr,
        ),
        Optimizer(
            "lyapunov_sgd/every10",
            lambda lr, n: lyapopt.lyapunov_sgd(lr, curvature_every=10),
            LYAPOPT_EXTRAS,
            sgd_lr,
        ),
        Optimizer(
            "lyapunov_adam",
            lambda lr, n: lyapopt.lyapunov_adam(lr),
            LYAPOPT_EXTRAS,
            adam_lr,
        ),
        Optimizer(
            "lyapunov_adam/every10",
            lambda lr, n: lyapopt.lyapunov_adam(lr, curvature_every=10),
            LYAPOPT_EXTRAS,
            adam_lr,
        ),
        # The rate-free configuration: the rate measured every step in the
        # first tenth of the run, from lyapunov_adam's default, then held;
        # the recipe's warmup-cosine shape on it.
        Optimizer(
            RATE_FREE,
            lambda lr, n: lyapopt.lyapunov_adam(
                lr, rate_every=1, rate_until=n // 10, rate_shape=recipe_shape(n)
            ),
            LYAPOPT_EXTRAS,
            adam_lr,
        ),
    )


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (*_peers(), *_ours())}


# The pieces of the stabilised step that are not optimizers of the sweep,
# timed at lyapopt's default rates against optax.sgd and optax.adam. The
# other pieces are in OPTIMIZERS: the defaults (the cap every step and the
# guard) and the every10 variants (the cap every 10 steps and the guard).
def _components() -> tuple[Optimizer, ...]:
    sgd, adam = OPTIMIZERS["lyapunov_sgd"], OPTIMIZERS["lyapunov_adam"]
    return (
        Optimizer(
            "lyapunov_sgd first-order",
            lambda lr, n: lyapopt.lyapunov_sgd(lr, safety=None, guard=None),
            (),
            sgd.default_lr,
        ),
        Optimizer(
            "lyapunov_adam first-order",
            lambda lr, n: lyapopt.lyapunov_adam(lr, safety=None, guard=None),
            (),
            adam.default_lr,
        ),
        Optimizer(
            "lyapunov_adam cap alone",
            lambda lr, n: lyapopt.lyapunov_adam(lr, guard=None),
            adam.extras,
            adam.default_lr,
        ),
        Optimizer(
            "lyapunov_adam guard alone",
            lambda lr, n: lyapopt.lyapunov_adam(lr, safety=None),
            adam.extras,
            adam.default_lr,
        ),
    )


COMPONENTS: dict[str, Optimizer] = {o.name: o for o in _components()}
