"""Any optax optimizer under the curvature cap, the level cap and the guard."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lyapopt._checks import check_choice
from lyapopt._curvature import scale_by_curvature
from lyapopt._guard import MODES, lyapunov_guard
from lyapopt._level import scale_by_level

# optax.apply_if_finite gives up after this many non-finite steps in a row;
# a stabilised optimizer never lets a NaN through, so it never gives up.
_NEVER = int(jnp.iinfo(jnp.int32).max)


class StabilizeState(NamedTuple):
    """State of :func:`stabilize`: the wrapped optimizer's, then each stage's."""

    inner_state: Any  # optax.ApplyIfFiniteState around the wrapped state
    curvature: Any  # CurvatureState, or optax.EmptyState without the cap
    level: Any  # LevelState, or optax.EmptyState without the level cap
    guard: Any  # GuardState, or optax.EmptyState without the guard


def stabilize(
    tx: optax.GradientTransformation,
    *,
    safety: float | jax.Array | None = 1.0,
    curvature_every: int | jax.Array = 1,
    max_scale: float | jax.Array = 1.0,
    level: float | jax.Array | None = None,
    guard: str | None = "backtrack",
    tolerance: float | jax.Array = 0.0,
    max_backtracks: int | jax.Array = 8,
    decrease: float | jax.Array = 0.25,
) -> optax.GradientTransformationExtraArgs:
    """Runs any optax optimizer under lyapopt's step-size and acceptance rules.

    ``tx`` chooses the direction and its length (``optax.adamw``,
    ``optax.lion``, a user's own chain); lyapopt then decides how much of it
    to take and whether to take it:

    1. a gradient with a NaN or an Inf is dropped before it reaches ``tx``
       (:func:`optax.apply_if_finite`, never giving up), so it corrupts
       neither the parameters nor the state of ``tx``;
    2. :func:`lyapopt.scale_by_curvature` caps the step at ``safety`` times
       the minimum of the local quadratic model (measured every
       ``curvature_every`` steps);
    3. :func:`lyapopt.scale_by_level` caps it where the linear model reaches
       ``level`` (optional);
    4. :func:`lyapopt.lyapunov_guard` rejects or shrinks a step that raises
       the loss (``guard`` is its mode; ``None`` turns it off).

    The gradient reaches stages 2 and 3 as their ``grad`` extra argument, so
    ``g.u`` is a dot product there, never another pass over the data (the
    level cap's slope, and the cap's between curvature measurements). That
    is the incoming ``updates``: place ``stabilize`` first in a chain, or,
    behind a transform that changes the gradient (``optax.clip_by_global_norm``,
    ``optax.add_decayed_weights``), pass the raw gradient as ``grad=grads``.

    Args:
      tx: the optax optimizer to stabilise.
      safety: the cap's fraction of the model's minimum; ``None`` turns the
        curvature cap off.
      curvature_every: measure the curvature every this many steps.
      max_scale: the most the cap may lengthen a step (1 never lengthens it).
      level: the energy level of :func:`lyapopt.scale_by_level`; ``None``
        (the default) turns that cap off.
      guard: the guard's mode, or ``None`` for no guard.
      tolerance: the rise of the loss the guard allows.
      max_backtracks: the guard's halvings in ``"backtrack"`` mode.
      decrease: the guard's sufficient-decrease ``sigma``: a step must lower
        the loss by at least ``sigma`` times what its slope promises. The
        default, 0.25, refuses steps that overshoot the valley; measured on
        the digits MLP with minibatches it kept ``curvature_every=10`` from
        diverging at learning rates 100 and 1000 (``benchmarks/RESULTS.md``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. With the cap or the guard
      its update needs ``params`` and ``value_fn``; pass ``value`` too, to
      save the guard a forward pass.
    """
    check_choice("stabilize", "guard", guard, (*MODES, None))
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            "stabilize: `tx` must be an optax GradientTransformation such as "
            f"`optax.adam(1e-3)`, got {type(tx).__name__}."
        )
    inner = optax.apply_if_finite(tx, max_consecutive_errors=_NEVER)
    stages = (
        scale_by_curvature(safety, every=curvature_every, max_scale=max_scale)
        if safety is not None
        else optax.identity(),
        scale_by_level(level) if level is not None else optax.identity(),
        lyapunov_guard(
            tolerance=tolerance,
            mode=guard,
            max_backtracks=max_backtracks,
            decrease=decrease,
        )
        if guard is not None
        else optax.identity(),
    )
    stages = tuple(optax.with_extra_args_support(s) for s in stages)

    def init_fn(params: optax.Params) -> StabilizeState:
        return StabilizeState(inner.init(params), *(s.init(params) for s in stages))

    def update_fn(
        updates: optax.Updates,
        state: StabilizeState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, StabilizeState]:
        grads = updates
        updates, inner_state = inner.update(
            grads, state.inner_state, params, **extra_args
        )
        # The stages' g.u is a dot product with the gradient of value_fn's loss:
        # the raw gradient, unless a transform before this one changed it
        # (a clip, weight decay); then the caller passes it as `grad`.
        extra_args = {"grad": grads, **extra_args}
        new_states = []
        for stage, stage_state in zip(stages, state[1:], strict=True):
            updates, stage_state = stage.update(
                updates, stage_state, params, **extra_args
            )
            new_states.append(stage_state)
        return updates, StabilizeState(inner_state, *new_states)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
