"""The energy-level cap: no step below a target level of the linear model."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lyapopt import _line
from lyapopt._checks import (
    check_like_params,
    check_number,
    require_params,
)

_WHERE = "scale_by_level"


class ScaleByLevelState(NamedTuple):
    """State of :func:`scale_by_level`."""

    # (V - level) / (-g.u) at the last finite step; +inf where there is no bound.
    s_level: jax.Array
    scale: jax.Array  # the factor applied to the updates at the last step


def scale_by_level(
    level: float | jax.Array, *, axis_name: Any = None
) -> optax.GradientTransformationExtraArgs:
    r"""Caps the step where the linear model of the loss reaches ``level``.

    Along the update ``u`` the linear model ``V + s g.u`` reaches the level
    ``lambda* = level`` at ``s = (V - lambda*) / (-g.u)``; the updates are
    scaled by

    .. math::
      \operatorname{clip}\left(\frac{V - \lambda^*}{-g \cdot u},\ 0,\ 1\right)

    when ``g.u < 0``, and kept when ``g.u >= 0`` (the model never reaches the
    level). With ``u = -g`` it is the Polyak step capped at ``u``. The
    paper speaks of step sizes adapted to the "energy-level geometry"; this
    cap is this project's reading of it.

    ``V`` is ``value_fn(params)`` when ``value_fn`` is given (under one
    ``jax.jit`` with the user's ``value_and_grad``, XLA computes that forward
    pass once for both), else the ``value`` extra argument. ``g.u`` is the
    dot product with the ``grad`` extra argument when given, else one
    forward-mode pass of ``value_fn`` along ``u``.

    Args:
      level: ``lambda*``, a level the loss cannot go below (0 for most
        losses; the best loss reachable, where it is known).
      axis_name: under ``jax.pmap`` or ``shard_map``, the axis over which
        the per-device loss is averaged (see :class:`lyapopt.StageOptions`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its update needs
      ``value_fn`` (with ``params``), or both ``value`` and ``grad``.

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      On ``f(x) = x^2`` from ``x = 1`` a step of ``-10 g`` is cut where the
      linear model reaches 0, the Polyak step:

      >>> import jax, jax.numpy as jnp, optax, lyapopt
      >>> f = lambda x: jnp.sum(x**2)
      >>> tx = optax.chain(optax.sgd(10.0), lyapopt.scale_by_level(0.0))
      >>> x = jnp.array([1.0])
      >>> updates, _ = tx.update(jax.grad(f)(x), tx.init(x), x, value_fn=f)
      >>> updates
      Array([-0.5], dtype=float32)
    """
    check_number(
        _WHERE, "level", level, fix="Pass a lower bound of the loss, such as 0.0."
    )

    def init_fn(params: optax.Params) -> ScaleByLevelState:
        dtype = _line.scalar_dtype(params)
        return ScaleByLevelState(
            s_level=_line.scalar(jnp.inf, dtype), scale=_line.scalar(1, dtype)
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByLevelState,
        params: optax.Params | None = None,
        *,
        value: jax.Array | None = None,
        value_fn: Any = None,
        grad: optax.Updates | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByLevelState]:
        dtype = state.scale.dtype
        # From `stabilize`: g.u, and the proposal before the caps' factors.
        known_slope = extra_args.pop(_line.SLOPE, None)
        factors = tuple(extra_args.pop(_line.FACTORS, ()))
        if value_fn is None:
            if (grad is None and known_slope is None) or value is None:
                missing = "`grad`" if value is not None else "`value`"
                raise ValueError(
                    f"{_WHERE} needs `value_fn`, or else both `value` and `grad`; "
                    f"{missing} is missing: call `tx.update(grads, state, params, "
                    "value_fn=lambda p: loss_fn(p, batch))`, or pass "
                    "`value=loss, grad=grads`."
                )
            v = _line.across(
                _line.loss_scalar(_WHERE, value, dtype, name="value"), axis_name
            )
        else:
            require_params(_WHERE, params)
            check_like_params(_WHERE, "updates", updates, params)
            value_fn = _line.bind(value_fn, extra_args, axis_name)
            v = _line.value(_WHERE, value_fn, params, dtype)
        if grad is not None and jax.tree.structure(grad) != jax.tree.structure(updates):
            raise ValueError(
                f"{_WHERE}: `grad` and `updates` must have the same tree "
                f"structure; got {jax.tree.structure(grad)} and "
                f"{jax.tree.structure(updates)}."
            )
        step = _line.scaled(updates, factors)
        if known_slope is None:
            d = _line.direction(step, v.dtype)
            norm = d.norm
            slope = _line.slope(_WHERE, value_fn, params, d, v.dtype, grad, axis_name)
        else:
            # g.u over ||u||, without a tree beside the proposal; the
            # forward-mode pass only where g.u is out of range.
            norm = _line.step_norm(updates, factors, v.dtype)
            gu = _line.across(jnp.asarray(known_slope).astype(v.dtype), axis_name)
            if value_fn is None:  # nothing to measure with: g.u as it is
                slope = _line.times(gu, *_line.inverse(norm))
            else:

                def measure() -> jax.Array:
                    # The direction of the scaled step is the proposal's, or
                    # none where a factor is 0: no scaled tree.
                    d = _line.direction(updates, v.dtype)
                    unit = _line.unit_slope(_WHERE, value_fn, params, d, v.dtype)
                    moves = jnp.all(jnp.array([f > 0 for f in factors], bool))
                    return jnp.where(moves, unit, 0)

                slope = _line.slope_over_norm(gu, norm, measure)
        descent = slope < 0
        gap = v - jnp.asarray(level).astype(v.dtype)
        unit_length = gap / jnp.where(descent, -slope, 1)
        s_level = jnp.where(
            descent, unit_length / jnp.where(norm > 0, norm, 1), jnp.inf
        )
        finite = jnp.isfinite(v) & jnp.isfinite(slope) & jnp.isfinite(norm)
        scale = jnp.where(finite, jnp.clip(s_level, 0, 1), 0).astype(dtype)
        return _line.scale_updates(step, scale), ScaleByLevelState(
            s_level=jnp.where(finite, s_level, state.s_level).astype(dtype),
            scale=scale,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
