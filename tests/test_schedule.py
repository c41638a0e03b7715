"""exponential_schedule and scale_by_logged_learning_rate."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt


@pytest.mark.parametrize("t", [0, 1, 7, 100, 2500])
def test_schedule_is_the_closed_form(t: int) -> None:
    schedule = lyapopt.exponential_schedule(0.5, 2e-3)
    np.testing.assert_allclose(schedule(t), 0.5 * math.exp(-2e-3 * t), rtol=1e-6)


def test_steps_per_epoch_makes_the_decay_per_epoch() -> None:
    schedule = lyapopt.exponential_schedule(1.0, 0.1, steps_per_epoch=50)
    np.testing.assert_allclose(schedule(50 * 3), math.exp(-0.3), rtol=1e-6)
    np.testing.assert_allclose(schedule(25), math.exp(-0.05), rtol=1e-6)


def test_schedule_stops_at_end_value_and_stays_there() -> None:
    schedule = lyapopt.exponential_schedule(1.0, 0.5, end_value=0.01)
    first_below = math.ceil(math.log(100) / 0.5)
    assert float(schedule(first_below - 1)) > 0.01
    for t in (first_below, 10 * first_below, 2**31 - 1):
        assert float(schedule(t)) == pytest.approx(0.01)


def test_zero_decay_constant_is_constant() -> None:
    schedule = lyapopt.exponential_schedule(0.3, 0.0)
    np.testing.assert_allclose(jax.vmap(schedule)(jnp.arange(5)), 0.3, rtol=1e-7)


def test_schedule_runs_under_jit_with_traced_arguments() -> None:
    @jax.jit
    def rate(
        init_value: jax.Array, decay_constant: jax.Array, count: jax.Array
    ) -> jax.Array:
        return lyapopt.exponential_schedule(init_value, decay_constant)(count)

    np.testing.assert_allclose(rate(2.0, 0.25, 4), 2.0 * math.exp(-1.0), rtol=1e-6)


def test_schedule_drives_an_optax_optimizer() -> None:
    tx = optax.sgd(lyapopt.exponential_schedule(1.0, 1.0))
    params = jnp.ones(())
    state = tx.init(params)
    steps = []
    for _ in range(3):
        u, state = tx.update(jnp.ones(()), state)
        steps.append(float(u))
    np.testing.assert_allclose(steps, [-1.0, -math.exp(-1), -math.exp(-2)], rtol=1e-6)


def test_scale_by_logged_learning_rate_records_the_rate() -> None:
    tx = lyapopt.scale_by_logged_learning_rate(lyapopt.exponential_schedule(0.5, 0.1))
    params = jnp.zeros(2)
    state = tx.init(params)
    for t in range(4):
        updates, state = tx.update(jnp.ones(2), state, params)
        np.testing.assert_allclose(updates, -0.5 * math.exp(-0.1 * t), rtol=1e-6)
        np.testing.assert_allclose(
            state.learning_rate, 0.5 * math.exp(-0.1 * t), rtol=1e-6
        )
    assert int(state.count) == 4


def test_scale_by_logged_learning_rate_takes_a_constant() -> None:
    tx = lyapopt.scale_by_logged_learning_rate(0.25)
    updates, state = tx.update(jnp.full(3, 2.0), tx.init(jnp.zeros(3)))
    np.testing.assert_allclose(updates, -0.5)
    assert float(state.learning_rate) == 0.25
