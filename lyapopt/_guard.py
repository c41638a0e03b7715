"""The Lyapunov guard: the loss, as a Lyapunov function, must not go up."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.experimental import checkify
from optax._src import numerics

from lyapopt import _line
from lyapopt._checks import (
    check_choice,
    check_like_params,
    check_number,
    require_params,
    require_value_fn,
)

_WHERE = "lyapunov_guard"
MODES = ("record", "backtrack", "skip", "check")


class GuardState(NamedTuple):
    """State of :func:`lyapunov_guard`."""

    value_before: jax.Array  # V(theta), at the last step where it was finite
    value_after: jax.Array  # V after the step taken, where it was finite
    scale: jax.Array  # the factor applied to the proposed step (0 = no step)
    backtracks: jax.Array  # int32, halvings used at the last step
    violations: jax.Array  # int32, steps whose proposal raised V (saturating)
    nonfinite: jax.Array  # int32, steps where V(theta) was NaN or Inf (saturating)


def lyapunov_guard(
    *,
    tolerance: float | jax.Array = 0.0,
    mode: str = "backtrack",
    max_backtracks: int | jax.Array = 8,
    decrease: float | jax.Array = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Checks, and where asked enforces, that the step does not raise the loss.

    The paper (Chaudhary et al., JAIR 2025) takes the loss as the Lyapunov
    function, ``V(theta) = L(theta)``, and asks every step for a monotone
    decrease. The guard evaluates ``V(theta + u)`` with ``value_fn`` on the
    same batch and calls the step a *violation* when

    .. math::
      V(\theta + u) > V(\theta) + \text{tolerance}

    or when either value is not finite. With ``decrease = sigma > 0`` it also
    asks for Armijo's sufficient decrease: a step ``s u`` must give

    .. math::
      V(\theta + s u) \le V(\theta) + \text{tolerance} + \sigma\, s\, g \cdot u

    which, on a quadratic, accepts exactly the steps up to ``2 (1 - sigma)``
    times the model's minimum (``sigma = 1/2``: up to the minimum). It
    refuses steps that overshoot the valley yet still lower the loss a
    little, the steps that make a reused curvature unsafe. ``g.u`` is the
    dot product with the ``grad`` extra argument, else one forward-mode pass.

    ``V(theta)`` is the ``value`` extra argument when given (pass it: it saves
    a forward pass), else ``value_fn(params)``. What happens on a violation
    depends on ``mode``:

    - ``"record"``: the step is taken; the violation is counted.
    - ``"backtrack"``: ``u`` is halved until ``V`` does not rise, at most
      ``max_backtracks`` times; if it still rises, no step is taken.
    - ``"skip"``: no step is taken.
    - ``"check"``: as ``"record"``, plus a ``checkify`` check that raises
      when the user's jitted step is wrapped in
      ``chex.chexify(jax.jit(step), async_check=False)`` (``chexify`` must be
      the outermost wrapper; without it the check costs nothing).

    In ``"backtrack"`` and ``"skip"`` modes an accepted step never raises
    ``V`` on the batch ``value_fn`` closes over, by construction; the
    population loss is another matter.

    Args:
      tolerance: the rise allowed, ``>= 0``.
      mode: one of ``"record"``, ``"backtrack"``, ``"skip"``, ``"check"``.
      max_backtracks: halvings tried in ``"backtrack"`` mode, ``>= 0``.
      decrease: Armijo's ``sigma`` in ``[0, 1)``; 0 asks only that the loss
        does not rise.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its update needs ``params``
      and the extra argument ``value_fn``; ``value`` and ``grad`` are optional.
    """
    check_number(
        _WHERE,
        "tolerance",
        tolerance,
        lower=0.0,
        fix="Pass 0.0 to forbid any rise of the loss.",
    )
    check_choice(_WHERE, "mode", mode, MODES)
    check_number(
        _WHERE,
        "decrease",
        decrease,
        lower=0.0,
        upper=1.0,
        upper_open=True,
        fix="Pass 0.0 to ask only for no rise, or 0.25 for a sufficient decrease.",
    )
    check_number(
        _WHERE,
        "max_backtracks",
        max_backtracks,
        lower=0.0,
        integer=True,
        fix="Pass 8, or 0 to skip a step that raises the loss.",
    )

    def init_fn(params: optax.Params) -> GuardState:
        dtype = _line.scalar_dtype(params)
        zero = jnp.zeros([], jnp.int32)
        return GuardState(
            value_before=jnp.zeros([], dtype),
            value_after=jnp.zeros([], dtype),
            scale=jnp.ones([], dtype),
            backtracks=zero,
            violations=zero,
            nonfinite=zero,
        )

    def update_fn(
        updates: optax.Updates,
        state: GuardState,
        params: optax.Params | None = None,
        *,
        value: jax.Array | None = None,
        value_fn: Any = None,
        grad: optax.Updates | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, GuardState]:
        del extra_args
        require_params(_WHERE, params)
        value_fn = require_value_fn(_WHERE, value_fn)
        check_like_params(_WHERE, "updates", updates, params)
        dtype = state.scale.dtype
        if value is None:
            before = _line.value(_WHERE, value_fn, params, dtype)
        else:
            before = jnp.asarray(value).astype(dtype)
        bound = before + jnp.asarray(tolerance, dtype)
        judged = jnp.isfinite(before)
        if isinstance(decrease, (int, float)) and decrease == 0:
            required = jnp.zeros([], dtype)  # per unit of scale
        else:
            if grad is not None:
                check_like_params(_WHERE, "grad", grad, params)
                slope = _line.grad_slope(grad, updates, dtype)
            else:
                _, slope = _line.slope(_WHERE, value_fn, params, updates, dtype)
            required = jnp.asarray(decrease, dtype) * jnp.minimum(slope, 0)

        def value_at(scale: jax.Array) -> jax.Array:
            moved = optax.apply_updates(params, _line.scale_updates(updates, scale))
            return _line.value(_WHERE, value_fn, moved, dtype)

        def holds(v: jax.Array, scale: jax.Array) -> jax.Array:
            # False for NaN on either side: a step we cannot judge is refused.
            demanded = scale * required
            # A decrease below float resolution cannot be checked: ask only
            # for no rise there, or converged steps would all be refused.
            resolvable = -demanded > 8 * jnp.finfo(dtype).eps * jnp.abs(before)
            return judged & (v <= bound + jnp.where(resolvable, demanded, 0))

        one = jnp.ones([], dtype)
        after = value_at(one)
        violated = judged & ~holds(after, one)
        scale, backtracks = one, jnp.zeros([], jnp.int32)
        if mode == "check":
            checkify.check(
                holds(after, one),
                "lyapunov_guard: the step raised the loss from {before} to {after} "
                "(tolerance {tol}).",
                before=before,
                after=after,
                tol=jnp.asarray(tolerance, dtype),
                debug=True,
            )
        elif mode == "skip":
            scale = jnp.where(holds(after, one), one, 0).astype(dtype)
        elif mode == "backtrack":

            def shrinking(carry: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
                k, s, v = carry
                return judged & (k < max_backtracks) & ~holds(v, s)

            def halve(carry: tuple[jax.Array, jax.Array, jax.Array]):
                k, s, _ = carry
                return k + 1, s / 2, value_at(s / 2)

            backtracks, scale, after = lax.while_loop(
                shrinking, halve, (backtracks, scale, after)
            )
            scale = jnp.where(holds(after, scale), scale, 0).astype(dtype)
        if mode in ("skip", "backtrack"):
            after = jnp.where(scale > 0, after, before)

        def count(event: jax.Array, n: jax.Array) -> jax.Array:
            return jnp.where(event, numerics.safe_increment(n), n)

        return _line.scale_updates(updates, scale), GuardState(
            value_before=jnp.where(judged, before, state.value_before),
            value_after=jnp.where(jnp.isfinite(after), after, state.value_after),
            scale=scale,
            backtracks=backtracks,
            violations=count(violated, state.violations),
            nonfinite=count(~judged, state.nonfinite),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
