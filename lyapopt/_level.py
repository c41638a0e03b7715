"""The energy-level cap: no step below a target level of the linear model."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lyapopt import _line
from lyapopt._checks import check_like_params, check_number, require_params

_WHERE = "scale_by_level"


class LevelState(NamedTuple):
    """State of :func:`scale_by_level`."""

    # (V - target) / (-g.u) at the last finite step; +inf where there is no bound.
    s_level: jax.Array
    scale: jax.Array  # the factor applied to the updates at the last step


def scale_by_level(
    target: float | jax.Array = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Caps the step where the linear model of the loss reaches ``target``.

    Along the update ``u`` the linear model ``V + s g.u`` reaches the level
    ``lambda* = target`` at ``s = (V - lambda*) / (-g.u)``; the updates are
    scaled by

    .. math::
      \operatorname{clip}\left(\frac{V - \lambda^*}{-g \cdot u},\ 0,\ 1\right)

    when ``g.u < 0``, and kept when ``g.u >= 0`` (the model never reaches the
    level). With ``u = -g`` it is the Polyak step capped at ``u``. The
    paper (Chaudhary et al., JAIR 2025) speaks of step sizes adapted to the
    "energy-level geometry"; this cap is this project's reading of it.

    ``V`` is the ``value`` extra argument (else ``value_fn(params)``); ``g.u``
    is the dot product with the ``grad`` extra argument when given, else one
    forward-mode pass of ``value_fn`` along ``u``.

    Args:
      target: ``lambda*``, a level the loss cannot go below (0 for most
        losses; the best loss reachable, where it is known).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its update needs
      ``value`` or ``value_fn``, and ``grad`` or ``value_fn`` with ``params``.
    """
    check_number(
        _WHERE, "target", target, fix="Pass a lower bound of the loss, such as 0.0."
    )

    def init_fn(params: optax.Params) -> LevelState:
        dtype = _line.scalar_dtype(params)
        return LevelState(
            s_level=jnp.asarray(jnp.inf, dtype), scale=jnp.ones([], dtype)
        )

    def update_fn(
        updates: optax.Updates,
        state: LevelState,
        params: optax.Params | None = None,
        *,
        value: jax.Array | None = None,
        value_fn: Any = None,
        grad: optax.Updates | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, LevelState]:
        del extra_args
        dtype = state.scale.dtype
        if grad is None or value is None:
            if value_fn is None:
                missing = "`grad`" if value is not None else "`value` or `value_fn`"
                raise ValueError(
                    f"{_WHERE} needs {missing}: call `tx.update(grads, state, params, "
                    "value=loss, grad=grads)` or pass "
                    "`value_fn=lambda p: loss_fn(p, batch)` with `params`."
                )
            require_params(_WHERE, params)
            check_like_params(_WHERE, "updates", updates, params)
        if grad is not None:
            if jax.tree.structure(grad) != jax.tree.structure(updates):
                raise ValueError(
                    f"{_WHERE}: `grad` and `updates` must have the same tree "
                    f"structure; got {jax.tree.structure(grad)} and "
                    f"{jax.tree.structure(updates)}."
                )
            slope = _line.grad_slope(grad, updates, dtype)
            v = _line.value(_WHERE, value_fn, params, dtype) if value is None else value
        else:
            v, slope = _line.slope(_WHERE, value_fn, params, updates, dtype)
            v = v if value is None else value
        v = jnp.asarray(v).astype(dtype)
        descent = slope < 0
        s_level = jnp.where(
            descent, (v - target) / jnp.where(descent, -slope, 1), jnp.inf
        ).astype(dtype)
        finite = jnp.isfinite(v) & jnp.isfinite(slope)
        scale = jnp.where(finite, jnp.clip(s_level, 0, 1), 0).astype(dtype)
        s_level = jnp.where(finite, s_level, state.s_level)
        return _line.scale_updates(updates, scale), LevelState(
            s_level=s_level, scale=scale
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
