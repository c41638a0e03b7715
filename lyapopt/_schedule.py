"""The paper's exponentially decaying learning rate, and a step scaled by it."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from lyapopt._checks import check_number


def exponential_schedule(
    init_value: float | jax.Array,
    decay_rate: float | jax.Array,
    *,
    steps_per_epoch: int | jax.Array = 1,
    min_value: float | jax.Array = 0.0,
) -> optax.Schedule:
    r"""The exponentially decaying learning rate of the paper.

    .. math::
      \eta(t) = \max\left(\eta_{\min},\ \eta_0 \exp(-\alpha\, t / n)\right)

    where ``t`` counts steps and ``n = steps_per_epoch``, so ``alpha`` is the
    decay per epoch (per step with the default ``n = 1``). The formula is the
    paper's (Chaudhary et al., JAIR 2025, "exponential decay"); the floor
    ``min_value`` is ours.

    It is :func:`optax.exponential_decay` with a rescaled clock, so every
    argument may be a traced array: the schedule can be built inside
    :func:`optax.inject_hyperparams` and under ``jax.jit``.

    Args:
      init_value: ``eta_0 > 0``, the learning rate at ``t = 0``.
      decay_rate: ``alpha >= 0``; zero gives a constant learning rate.
      steps_per_epoch: ``n >= 1``; give it to decay per epoch.
      min_value: ``eta_min >= 0``, the floor that the rate never goes below.

    Returns:
      An ``optax.Schedule``: step count -> learning rate.
    """
    where = "exponential_schedule"
    check_number(
        where,
        "init_value",
        init_value,
        lower=0.0,
        lower_open=True,
        fix="Pass a positive learning rate such as 1e-2.",
    )
    check_number(
        where,
        "decay_rate",
        decay_rate,
        lower=0.0,
        fix="Pass 0.0 for a constant learning rate.",
    )
    check_number(
        where,
        "steps_per_epoch",
        steps_per_epoch,
        lower=1.0,
        integer=True,
        fix="Pass the number of steps in one epoch, or 1 to decay per step.",
    )
    check_number(where, "min_value", min_value, lower=0.0, fix="Pass 0.0 for no floor.")
    # optax.exponential_decay branches in Python on its `decay_rate`; keeping
    # that fixed at 1/e and moving alpha / n into the clock keeps every
    # user argument traceable.
    unit_decay = optax.exponential_decay(
        init_value=init_value,
        transition_steps=1,
        decay_rate=math.exp(-1.0),
        end_value=min_value,
    )

    def schedule(count: jax.Array) -> jax.Array:
        return unit_decay(count * (decay_rate / steps_per_epoch))

    return schedule


class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate`: the step and its rate."""

    count: jax.Array  # int32, saturating
    learning_rate: jax.Array  # the rate applied at the last step


def scale_by_learning_rate(
    learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
    """Multiplies the updates by ``-learning_rate(t)`` and keeps the rate.

    ``optax.scale_by_learning_rate`` with one difference: the rate it applied
    is in the state, so :func:`lyapopt.stats` can report it.

    Args:
      learning_rate: a number or an ``optax.Schedule``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.
    """
    schedule = learning_rate if callable(learning_rate) else None
    if schedule is None:
        check_number(
            "scale_by_learning_rate",
            "learning_rate",
            learning_rate,
            lower=0.0,
            fix="Pass a positive learning rate such as 1e-2.",
        )

    def init_fn(params: optax.Params) -> ScaleByLearningRateState:
        dtype = optax.tree.dtype(params, "highest")
        return ScaleByLearningRateState(
            count=jnp.zeros([], jnp.int32),
            learning_rate=jnp.zeros([], dtype),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        rate = schedule(state.count) if schedule is not None else learning_rate
        rate = jnp.asarray(rate, state.learning_rate.dtype)
        updates = jax.tree.map(lambda u: (-rate).astype(u.dtype) * u, updates)
        return updates, ScaleByLearningRateState(
            count=numerics.safe_increment(state.count), learning_rate=rate
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
