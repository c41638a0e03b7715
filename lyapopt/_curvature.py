"""The curvature cap: no step past the minimum of the local quadratic model."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from optax._src import numerics

from lyapopt import _line
from lyapopt._checks import (
    check_like_params,
    check_number,
    require_params,
    require_value_fn,
)

_WHERE = "scale_by_curvature"


class CurvatureState(NamedTuple):
    """State of :func:`scale_by_curvature`."""

    count: jax.Array  # int32, steps taken (saturating)
    s_star: jax.Array  # -g.u / u.Hu at the last finite step; +inf when no bound
    scale: jax.Array  # the factor applied to the updates at the last step
    curvature: jax.Array  # u.Hu / u.u, last measured (reused between measures)


def cap_scale(
    slope: jax.Array,
    curvature: jax.Array,
    safety: jax.Array | float,
    max_scale: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """``(s*, scale)`` for a step with ``g.u = slope`` and ``u.Hu = curvature``.

    Along ``u`` the quadratic model ``m(s) = V + s g.u + s^2/2 u.Hu`` is
    smallest at ``s* = -g.u / u.Hu``. The step is scaled by
    ``min(max_scale, safety * s*)``, by ``max_scale`` when ``u.Hu <= 0``
    (the model gives no bound), and by 0 when ``g.u >= 0`` (not a descent
    direction) or a number is not finite.
    """
    dtype = slope.dtype
    safety = jnp.asarray(safety, dtype)
    max_scale = jnp.asarray(max_scale, dtype)
    positive = curvature > 0
    s_star = jnp.where(positive, -slope / jnp.where(positive, curvature, 1), jnp.inf)
    ok = jnp.isfinite(slope) & jnp.isfinite(curvature) & (slope < 0)
    scale = jnp.where(ok, jnp.minimum(max_scale, safety * s_star), 0)
    return s_star.astype(dtype), scale.astype(dtype)


def scale_by_curvature(
    safety: float | jax.Array = 1.0,
    *,
    every: int | jax.Array = 1,
    max_scale: float | jax.Array = 1.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Caps the step at the minimum of the local quadratic model of the loss.

    With ``g.u`` and ``u.Hu`` the first and second derivatives of
    ``s -> V(theta + s u)`` at 0, the quadratic model
    ``m(s) = V + s g.u + s^2/2 u.Hu`` decreases for ``0 < s < 2 s*`` and is
    smallest at ``s* = -g.u / u.Hu``. The updates ``u`` are scaled by

    .. math::
      \min(\text{max\_scale},\ \text{safety} \cdot s^*)

    so ``safety = 1`` stops at the model's minimum and any
    ``0 < safety < 2`` decreases the model. When ``g.u >= 0`` the update is
    not a descent direction and no step is taken; when ``u.Hu <= 0``
    (negative curvature) the model gives no bound and the step is
    ``max_scale * u``; a non-finite number gives no step.

    The paper (Chaudhary et al., JAIR 2025) argues monotone decrease of
    ``V = L`` from a second-order Taylor expansion; this cap is this
    project's construction from that argument, not a formula of the paper.

    Both scalars come from one forward-over-forward call along ``u`` (0.9-1.4x
    a ``value_and_grad`` in ``benchmarks/RESULTS.md``, about half a full
    Hessian-vector product).
    With ``every = k`` they are measured every ``k`` steps; in between the
    last curvature ``u.Hu / u.u`` is reused and ``g.u`` is the dot product
    of ``u`` with the ``grad`` extra argument when given (free), else one
    forward-mode pass. A reused curvature is not a guarantee: chain
    :func:`lyapopt.lyapunov_guard` after it.

    Args:
      safety: the fraction of ``s*`` to take, ``> 0``.
      every: measure the curvature every ``every >= 1`` steps.
      max_scale: the largest factor, ``>= 1``; above 1 the cap may also
        lengthen a step that stops short of the model's minimum.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its update needs
      ``params`` and the extra argument ``value_fn`` (the loss on the current
      batch as a function of the parameters); ``grad`` is optional.
    """
    check_number(
        _WHERE,
        "safety",
        safety,
        lower=0.0,
        lower_open=True,
        fix="Pass 1.0 to stop at the model's minimum.",
    )
    check_number(
        _WHERE,
        "every",
        every,
        lower=1.0,
        integer=True,
        fix="Pass 1 to measure the curvature at every step.",
    )
    check_number(
        _WHERE,
        "max_scale",
        max_scale,
        lower=1.0,
        fix="Pass 1.0 never to lengthen a step.",
    )

    def init_fn(params: optax.Params) -> CurvatureState:
        dtype = _line.scalar_dtype(params)
        return CurvatureState(
            count=jnp.zeros([], jnp.int32),
            s_star=jnp.asarray(jnp.inf, dtype),
            scale=jnp.ones([], dtype),
            curvature=jnp.zeros([], dtype),
        )

    def update_fn(
        updates: optax.Updates,
        state: CurvatureState,
        params: optax.Params | None = None,
        *,
        value_fn: Any = None,
        grad: optax.Updates | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, CurvatureState]:
        del extra_args
        require_params(_WHERE, params)
        value_fn = require_value_fn(_WHERE, value_fn)
        check_like_params(_WHERE, "updates", updates, params)
        if grad is not None:
            check_like_params(_WHERE, "grad", grad, params)
        dtype = state.scale.dtype
        sq_norm = optax.tree.norm(optax.tree.cast(updates, dtype), squared=True)

        def measure() -> tuple[jax.Array, jax.Array]:
            _, slope, curv = _line.line_derivatives(
                _WHERE, value_fn, params, updates, dtype
            )
            return slope, curv

        def reuse() -> tuple[jax.Array, jax.Array]:
            if grad is not None:
                slope = _line.grad_slope(grad, updates, dtype)
            else:
                _, slope = _line.slope(_WHERE, value_fn, params, updates, dtype)
            return slope, state.curvature * sq_norm

        if isinstance(every, int) and every == 1:
            measured = jnp.asarray(True)
            slope, curv = measure()
        else:
            measured = state.count % jnp.asarray(every, state.count.dtype) == 0
            slope, curv = lax.cond(measured, measure, reuse)

        s_star, scale = cap_scale(slope, curv, safety, max_scale)
        has_norm = measured & (sq_norm > 0) & jnp.isfinite(curv)
        curvature = jnp.where(
            has_norm, curv / jnp.where(has_norm, sq_norm, 1), state.curvature
        )
        return _line.scale_updates(updates, scale), CurvatureState(
            count=numerics.safe_increment(state.count),
            s_star=jnp.where(jnp.isnan(s_star), state.s_star, s_star),
            scale=scale,
            curvature=curvature.astype(dtype),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
