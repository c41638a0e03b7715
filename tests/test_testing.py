"""lyapopt.testing: assertions for users' tests."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from lyapopt import testing


def test_monotone_sequence_passes() -> None:
    testing.assert_monotone_decrease([3.0, 2.0, 2.0, 1.0])


def test_a_rise_is_reported_with_its_step() -> None:
    with pytest.raises(AssertionError, match=r"rose at step 2: 2.0 -> 2.5"):
        testing.assert_monotone_decrease([3.0, 2.0, 2.5, 1.0])


def test_tolerance_allows_a_small_rise() -> None:
    testing.assert_monotone_decrease([3.0, 2.0, 2.05], tolerance=0.1)


def test_non_finite_values_fail() -> None:
    with pytest.raises(AssertionError):
        testing.assert_monotone_decrease([3.0, float("nan")])


def test_lyapunov_step_passes_a_descent_step_and_fails_an_overshoot() -> None:
    loss = lambda p: jnp.sum(p**2)  # noqa: E731
    x = jnp.array([1.0, 1.0])
    testing.assert_lyapunov_step(loss, x, -0.5 * x)
    with pytest.raises(AssertionError, match=r"raised the loss from 2\.0 to 8\.0"):
        testing.assert_lyapunov_step(loss, x, -3.0 * x)


def test_lyapunov_step_checks_tree_shapes() -> None:
    with pytest.raises(AssertionError):
        testing.assert_lyapunov_step(jnp.sum, jnp.ones(2), jnp.ones(3))
