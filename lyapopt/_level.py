"""The energy-level cap: no step below a target level of the linear model."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lyapopt import _line, _stage
from lyapopt._checks import check_number

_WHERE = "scale_by_level"


class ScaleByLevelState(NamedTuple):
    """State of :func:`scale_by_level`: diagnostics only.

    Attributes:
      s_level: ``(V - level) / (-g.u)`` at the last finite step; ``+inf``
        where there is no bound.
      scale: the factor applied to the updates at the last step.
    """

    s_level: jax.Array
    scale: jax.Array


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
    return _stage.transform(LevelCap(level), axis_name)


@dataclasses.dataclass(frozen=True)
class LevelCap(_stage.EveryBatch):
    """The level cap as a stage (:class:`lyapopt._stage.Stage`)."""

    level: float | jax.Array
    where: str = _WHERE
    needs_value_fn: bool = False  # `value` and `grad` will do

    def __post_init__(self) -> None:
        check_number(
            _WHERE,
            "level",
            self.level,
            fix="Pass a lower bound of the loss, such as 0.0.",
        )

    def init(self, params: optax.Params) -> ScaleByLevelState:
        dtype = _line.scalar_dtype(params)
        return ScaleByLevelState(
            s_level=_line.scalar(jnp.inf, dtype), scale=_line.scalar(1, dtype)
        )

    def step(
        self, line: _stage.LineInfo, state: ScaleByLevelState, problem: _stage.Problem
    ) -> tuple[_stage.LineInfo, ScaleByLevelState]:
        dtype = state.scale.dtype
        if problem.value_fn is None:
            if (line.grad is None and line.slope is None) or problem.value is None:
                missing = "`grad`" if problem.value is not None else "`value`"
                raise ValueError(
                    f"{_WHERE} needs `value_fn`, or else both `value` and `grad`; "
                    f"{missing} is missing: call `tx.update(grads, state, params, "
                    "value_fn=lambda p: loss_fn(p, batch))`, or pass "
                    "`value=loss, grad=grads`."
                )
            v = _line.across(
                _line.loss_scalar(_WHERE, problem.value, dtype, name="value"),
                problem.axis_name,
            )
        else:
            v = _line.value(_WHERE, problem.value_fn, problem.params, dtype)
        # A known g.u needs only the norm (no tree beside the proposal); the
        # direction, a tree, only where a forward-mode pass measures g.u.
        norm = line.norm(v.dtype)
        slope = _stage.grad_dot(
            _WHERE,
            line,
            problem,
            v.dtype,
            direction=lambda: line.direction(v.dtype),
            per_unit=True,
            norm=norm,
        )
        descent = slope < 0
        gap = v - jnp.asarray(self.level).astype(v.dtype)
        unit_length = gap / jnp.where(descent, -slope, 1)
        s_level = jnp.where(
            descent, unit_length / jnp.where(norm > 0, norm, 1), jnp.inf
        )
        finite = jnp.isfinite(v) & jnp.isfinite(slope) & jnp.isfinite(norm)
        scale = jnp.where(finite, jnp.clip(s_level, 0, 1), 0).astype(dtype)
        return line.capped(scale), ScaleByLevelState(
            s_level=jnp.where(finite, s_level, state.s_level).astype(dtype),
            scale=scale,
        )
