"""The paper's gradient-norm modulation of the step size."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lyapopt import _line
from lyapopt._checks import check_number


class ScaleByGradientModulationState(NamedTuple):
    """State of :func:`scale_by_gradient_modulation`."""

    factor: jax.Array  # 1 / (1 + modulation * ||u||) applied at the last step
    norm: jax.Array  # ||u||, the global L2 norm, at the last finite step
    nonfinite: jax.Array  # int32, steps whose updates held a NaN or an Inf


def scale_by_gradient_modulation(
    modulation: float | jax.Array = 1.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Scales the updates down where the gradient is large.

    .. math::
      u \leftarrow \frac{u}{1 + \beta \lVert u \rVert_2}

    with the global L2 norm over the whole tree. The paper's gradient-based
    modulation is ``eta(theta) = 1 / (1 + ||grad L(theta)||)`` (Chaudhary et
    al., JAIR 2025); the strength ``beta`` is ours (``beta = 1`` is the
    paper's rule, ``beta = 0`` turns it off). Placed first in a chain it sees
    the raw gradient, as in the paper. The step it produces has norm below
    ``1 / beta`` however large the gradient.

    Updates with a NaN or an Inf (a non-finite norm) give a zero step and are
    counted in the state: the norm is computed anyway, so the test is free,
    and :func:`lyapopt.lyapunov_sgd` relies on it when it has neither the
    cap nor the guard.

    Args:
      modulation: ``beta >= 0``, the strength.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state holds the
      factor and the norm.

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      A gradient of norm 3 is scaled by ``1 / (1 + 3) = 0.25``:

      >>> import jax.numpy as jnp, lyapopt
      >>> tx = lyapopt.scale_by_gradient_modulation()
      >>> g = jnp.array([0.0, 3.0])
      >>> updates, state = tx.update(g, tx.init(g))
      >>> updates
      Array([0.  , 0.75], dtype=float32)
      >>> float(state.norm), float(state.factor)
      (3.0, 0.25)
    """
    check_number(
        "scale_by_gradient_modulation",
        "modulation",
        modulation,
        lower=0.0,
        fix="Pass 1.0 for the paper's rule, or 0.0 to turn it off.",
    )

    def init_fn(params: optax.Params) -> ScaleByGradientModulationState:
        dtype = _line.scalar_dtype(params)
        return ScaleByGradientModulationState(
            factor=_line.scalar(1, dtype),
            norm=_line.scalar(0, dtype),
            nonfinite=_line.scalar(0, jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        dtype = state.factor.dtype
        norm = _line.tree_norm(updates, dtype)
        finite = jnp.isfinite(norm)
        beta = jnp.asarray(modulation).astype(dtype)
        factor = jnp.where(finite, 1.0 / (1.0 + beta * norm), 0)
        # The step's norm, ||u|| / (1 + beta ||u||), without forming beta ||u||
        # (it may overflow) or a subnormal factor: u / ||u|| times it.
        length = jnp.where(finite, 1.0 / (1.0 / norm + beta), 0)
        pre, inv = _line.inverse(norm)
        updates = jax.tree.map(
            lambda u: jnp.where(finite, _line.times(u, pre, inv * length), 0), updates
        )
        return updates, ScaleByGradientModulationState(
            factor=factor.astype(dtype),
            norm=jnp.where(finite, norm, state.norm),
            nonfinite=jnp.where(
                finite, state.nonfinite, optax.safe_increment(state.nonfinite)
            ),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
