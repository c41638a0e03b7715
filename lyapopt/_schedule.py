"""The paper's exponentially decaying learning rate, and a step that logs its rate."""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from lyapopt import _line
from lyapopt._checks import check_bool, check_number


def exponential_schedule(
    init_value: float | jax.Array,
    decay_constant: float | jax.Array,
    *,
    steps_per_epoch: int | jax.Array = 1,
    end_value: float | jax.Array = 0.0,
) -> optax.Schedule:
    r"""The paper's exponentially decaying learning rate.

    .. math::
      \eta(t) = \max\left(\eta_{\text{end}},\ \eta_0 \exp(-\alpha\, t / n)\right)

    where ``t`` counts steps and ``n = steps_per_epoch``, so the decay
    constant ``alpha`` is per epoch (per step with the default ``n = 1``).
    The formula is the paper's; the floor ``end_value`` is ours (optax's name
    for it in :func:`optax.exponential_decay`).

    How it relates to the length of a run: after ``T`` steps the rate is
    ``exp(-alpha T / n)`` of the initial one, and a step of length ``eta(t)``
    per coordinate (Adam, sign methods) can travel at most
    ``eta_0 n / alpha`` in a whole run, however long. For a run of ``T``
    steps that should end at a fraction ``f`` of the initial rate, take
    ``alpha = n ln(1 / f) / T`` (``f = 0.01``: ``alpha = 4.6 n / T``), or
    give ``end_value`` so the run never stops learning.

    Note ``alpha`` is not optax's ``decay_rate``: optax's
    ``exponential_decay(init_value, transition_steps, decay_rate)`` takes the
    factor per transition (1 = constant); here ``alpha = 0`` is constant and
    ``optax.exponential_decay(eta_0, 1, exp(-alpha))`` is the same schedule.

    It is :func:`optax.exponential_decay` with a rescaled clock, so every
    argument may be a traced array: the schedule can be built inside
    :func:`optax.inject_hyperparams` and under ``jax.jit``.

    Args:
      init_value: ``eta_0 > 0``, the learning rate at ``t = 0``.
      decay_constant: ``alpha >= 0``; zero gives a constant learning rate.
      steps_per_epoch: ``n >= 1``; give it to decay per epoch.
      end_value: ``eta_end >= 0``, the floor that the rate never goes below.

    Returns:
      An ``optax.Schedule``: step count -> learning rate.

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      >>> import lyapopt
      >>> schedule = lyapopt.exponential_schedule(1.0, 0.5, end_value=0.2)
      >>> [round(float(schedule(t)), 4) for t in (0, 1, 2, 10)]
      [1.0, 0.6065, 0.3679, 0.2]
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
        "decay_constant",
        decay_constant,
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
    check_number(where, "end_value", end_value, lower=0.0, fix="Pass 0.0 for no floor.")
    # optax.exponential_decay branches in Python on its `decay_rate`; keeping
    # that fixed at 1/e and moving alpha / n into the clock keeps every
    # user argument traceable.
    unit_decay = optax.exponential_decay(
        init_value=init_value,
        transition_steps=1,
        decay_rate=math.exp(-1.0),
        end_value=end_value,
    )

    def schedule(count: jax.typing.ArrayLike) -> jax.typing.ArrayLike:
        return unit_decay(count * (decay_constant / steps_per_epoch))

    return schedule


class ScaleByLoggedLearningRateState(NamedTuple):
    """State of :func:`scale_by_logged_learning_rate`."""

    # int32, saturating; optax's name, though a NamedTuple field of that name
    # shadows tuple.count.
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    learning_rate: jax.Array  # the rate applied at the last step


def scale_by_logged_learning_rate(
    learning_rate: optax.ScalarOrSchedule,
    *,
    flip_sign: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """:func:`optax.scale_by_learning_rate` that keeps the rate it applied.

    Multiplies the updates by ``-learning_rate(t)`` (``+`` with
    ``flip_sign=False``), as optax's transform of the same signature does,
    and stores the rate in its state, so :func:`lyapopt.stats` reports
    ``learning_rate`` and ``step_size``.

    Args:
      learning_rate: a number or an ``optax.Schedule``.
      flip_sign: whether to negate the updates (gradient descent).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Examples:
      >>> import jax.numpy as jnp, lyapopt
      >>> tx = lyapopt.scale_by_logged_learning_rate(0.1)
      >>> updates, state = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
      >>> updates, float(state.learning_rate)
      (Array([-0.1, -0.1], dtype=float32), 0.10000000149011612)
    """
    check_bool("scale_by_logged_learning_rate", "flip_sign", flip_sign)
    schedule = learning_rate if callable(learning_rate) else None
    if schedule is None:
        check_number(
            "scale_by_logged_learning_rate",
            "learning_rate",
            learning_rate,
            lower=0.0,
            fix="Pass a positive learning rate such as 1e-2.",
        )
    sign = -1 if flip_sign else 1

    def init_fn(params: optax.Params) -> ScaleByLoggedLearningRateState:
        return ScaleByLoggedLearningRateState(
            count=_line.scalar(0, jnp.int32),
            learning_rate=_line.scalar(0, _line.scalar_dtype(params)),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        rate = schedule(state.count) if schedule is not None else learning_rate
        rate = jnp.asarray(rate).astype(state.learning_rate.dtype)
        factor = sign * rate
        updates = jax.tree.map(lambda u: factor.astype(u.dtype) * u, updates)
        return updates, ScaleByLoggedLearningRateState(
            count=cast(jax.Array, optax.safe_increment(state.count)),
            learning_rate=rate,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
