"""scale_by_level: the energy-level (Polyak-type) cap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lyapopt

A = jnp.array([1.0, 3.0, 10.0])


def loss(p: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum(A * p * p)


@pytest.mark.parametrize("lr", [1e-3, 0.1, 10.0])
@pytest.mark.parametrize("level", [0.0, 1.0])
def test_scale_is_clipped_polyak_step(lr: float, level: float) -> None:
    x = jnp.array([1.0, -1.0, 2.0])
    value, g = jax.value_and_grad(loss)(x)
    tx = lyapopt.scale_by_level(level)
    updates, state = tx.update(-lr * g, tx.init(x), x, value=value, grad=g)
    # Linear model V - s lr g.g reaches the level at s = (V - level) / (lr g.g).
    expected = float(np.clip((value - level) / (lr * g @ g), 0.0, 1.0))
    np.testing.assert_allclose(state.scale, expected, rtol=1e-6)
    np.testing.assert_allclose(updates, -lr * expected * g, rtol=1e-6)


def test_value_fn_alone_gives_the_same_scale_as_value_and_grad() -> None:
    x = jnp.array([1.0, -1.0, 2.0])
    value, g = jax.value_and_grad(loss)(x)
    tx = lyapopt.scale_by_level(0.5)
    _, with_grad = tx.update(-g, tx.init(x), x, value=value, grad=g)
    _, with_fn = tx.update(-g, tx.init(x), x, value_fn=loss)
    np.testing.assert_allclose(with_fn.scale, with_grad.scale, rtol=1e-6)
    np.testing.assert_allclose(with_fn.s_level, with_grad.s_level, rtol=1e-6)


def test_no_step_below_the_level() -> None:
    x = jnp.array([0.1, 0.0, 0.0])
    value, g = jax.value_and_grad(loss)(x)
    tx = lyapopt.scale_by_level(1.0)  # V = 0.005 is already below it
    updates, state = tx.update(-g, tx.init(x), x, value=value, grad=g)
    assert float(state.scale) == 0.0
    np.testing.assert_array_equal(updates, 0.0)


def test_ascent_direction_is_left_to_other_stages() -> None:
    x = jnp.array([1.0, 1.0, 1.0])
    value, g = jax.value_and_grad(loss)(x)
    tx = lyapopt.scale_by_level(0.0)
    updates, state = tx.update(g, tx.init(x), x, value=value, grad=g)
    assert float(state.scale) == 1.0
    np.testing.assert_array_equal(updates, g)


def test_without_grad_or_value_fn_the_error_names_them() -> None:
    tx = lyapopt.scale_by_level(0.0)
    x = jnp.ones(3)
    needs = r"scale_by_level needs `value_fn`, or else both `value` and `grad`"
    with pytest.raises(ValueError, match=needs + r".*`grad` is missing"):
        tx.update(x, tx.init(x), x, value=1.0)
    with pytest.raises(ValueError, match=needs + r".*`value` is missing"):
        tx.update(x, tx.init(x), x)
