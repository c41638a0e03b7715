"""Assertions for users' own tests: monotone decrease and Lyapunov steps.

They run on the host, on concrete values (call them outside ``jax.jit``),
and raise ``AssertionError`` with the step and the numbers that broke them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import chex
import jax
import numpy as np
import optax

from lyapopt._checks import check_number


def assert_monotone_decrease(
    values: Sequence[float] | chex.Array, *, tolerance: float = 0.0
) -> None:
    """Asserts that a sequence of losses never rises by more than ``tolerance``.

    Args:
      values: losses in step order (a 1-D sequence of finite numbers).
      tolerance: the rise allowed between consecutive values, ``>= 0``.

    Returns:
      ``None``, when no value exceeds the one before it by more than
      ``tolerance``.

    Raises:
      AssertionError: at the first rise, naming the step and both values.

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      A plateau passes; a rise fails:

      >>> from lyapopt.testing import assert_monotone_decrease
      >>> assert_monotone_decrease([3.0, 2.0, 2.0, 1.0])
      >>> assert_monotone_decrease([3.0, 2.0, 2.5])
      Traceback (most recent call last):
        ...
      AssertionError: the loss rose at step 2: 2.0 -> 2.5 (+0.5, tolerance 0); ...
      >>> assert_monotone_decrease([3.0, 2.0, 2.5], tolerance=1.0)
    """
    check_number(
        "assert_monotone_decrease",
        "tolerance",
        tolerance,
        lower=0.0,
        fix="Pass 0.0 to forbid any rise.",
    )
    values = np.asarray(values, dtype=np.float64)
    chex.assert_rank(values, 1)
    chex.assert_tree_all_finite(values)
    rises = np.flatnonzero(np.diff(values) > tolerance)
    if rises.size:
        i = int(rises[0])
        a, b = float(values[i]), float(values[i + 1])
        raise AssertionError(
            f"the loss rose at step {i + 1}: {a!r} -> {b!r} "
            f"(+{b - a:.3g}, tolerance {tolerance:g}); "
            f"{rises.size} rise(s) in {values.size} values."
        )


def assert_lyapunov_step(
    value_fn: Callable[[optax.Params], jax.Array],
    params: optax.Params,
    updates: optax.Updates,
    *,
    tolerance: float = 0.0,
) -> None:
    """Asserts that ``optax.apply_updates(params, updates)`` does not raise the loss.

    Args:
      value_fn: the loss, params -> scalar (on a fixed batch).
      params: the parameters before the step.
      updates: the step, a tree like ``params``.
      tolerance: the rise allowed, ``>= 0``.

    Returns:
      ``None``, when ``V(params + updates) <= V(params) + tolerance``.

    Raises:
      AssertionError: when the trees differ in structure or shape, when a value
        is not finite, or when ``V(params + updates) > V(params) + tolerance``.

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      On ``V(x) = x^2`` from ``x = 1``, a step to 0.5 passes; a step to -2
      raises the loss and fails:

      >>> import jax.numpy as jnp
      >>> from lyapopt.testing import assert_lyapunov_step
      >>> V = lambda x: jnp.sum(x**2)
      >>> assert_lyapunov_step(V, jnp.array([1.0]), jnp.array([-0.5]))
      >>> assert_lyapunov_step(V, jnp.array([1.0]), jnp.array([-3.0]))
      Traceback (most recent call last):
        ...
      AssertionError: the step raised the loss from 1.0 to 4.0 (+3, tolerance 0).
    """
    check_number(
        "assert_lyapunov_step",
        "tolerance",
        tolerance,
        lower=0.0,
        fix="Pass 0.0 to forbid any rise.",
    )
    chex.assert_trees_all_equal_shapes(params, updates)
    chex.assert_tree_all_finite(updates)
    before = float(value_fn(params))
    after = float(value_fn(optax.apply_updates(params, updates)))
    if not (np.isfinite(before) and np.isfinite(after)):
        raise AssertionError(
            f"a loss is not finite: before {before!r}, after {after!r}."
        )
    if after > before + tolerance:
        raise AssertionError(
            f"the step raised the loss from {before!r} to {after!r} "
            f"(+{after - before:.3g}, tolerance {tolerance:g})."
        )
