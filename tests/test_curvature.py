"""scale_by_curvature: the cap at the minimum of the quadratic model."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt


def _spd(n: int, seed: int, condition: float) -> jax.Array:
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (n, n)))
    return (q * jnp.geomspace(1.0, condition, n)) @ q.T


@pytest.mark.parametrize("safety", [0.25, 1.0, 1.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scale_on_a_quadratic_is_min_one_safety_gg_over_gag(
    safety: float, seed: int
) -> None:
    a = _spd(6, seed, condition=50.0)
    x = jax.random.normal(jax.random.key(seed + 10), (6,))
    loss = lambda p: 0.5 * p @ a @ p  # noqa: E731
    g = a @ x
    tx = lyapopt.scale_by_curvature(safety)
    updates, state = tx.update(-g, tx.init(x), x, value_fn=loss)
    expected = min(1.0, safety * float(g @ g) / float(g @ a @ g))
    np.testing.assert_allclose(state.scale, expected, rtol=1e-5)
    np.testing.assert_allclose(state.s_star, float(g @ g) / float(g @ a @ g), rtol=1e-5)
    np.testing.assert_allclose(
        state.curvature, float(g @ a @ g) / float(g @ g), rtol=1e-5
    )
    np.testing.assert_allclose(updates, -expected * g, rtol=1e-5)


def test_a_long_step_is_cut_to_the_exact_line_minimum() -> None:
    # On a quadratic the model is exact: safety 1 lands on the line minimum.
    a = jnp.diag(jnp.array([1.0, 10.0, 100.0]))
    loss = lambda p: 0.5 * p @ a @ p  # noqa: E731
    x = jnp.ones(3)
    tx = optax.chain(optax.sgd(1e3), lyapopt.scale_by_curvature())
    value, grads = jax.value_and_grad(loss)(x)
    updates, _ = tx.update(grads, tx.init(x), x, value_fn=loss)
    ts = jnp.linspace(0.9, 1.1, 21)
    along = jax.vmap(lambda t: loss(x + t * updates))(ts)
    assert int(jnp.argmin(along)) == 10
    assert float(loss(x + updates)) < float(value)


def test_no_step_when_the_update_is_not_a_descent_direction() -> None:
    loss = lambda p: jnp.sum(p**2)  # noqa: E731
    x = jnp.array([1.0, -2.0])
    tx = lyapopt.scale_by_curvature()
    updates, state = tx.update(jax.grad(loss)(x), tx.init(x), x, value_fn=loss)
    np.testing.assert_array_equal(updates, 0.0)
    assert float(state.scale) == 0.0


def test_negative_curvature_keeps_the_update() -> None:
    loss = lambda p: -jnp.sum(p**2)  # noqa: E731  # concave: u.Hu < 0
    x = jnp.array([1.0, 2.0])
    u = 0.1 * x  # downhill: g.u = -2 x.u < 0
    tx = lyapopt.scale_by_curvature()
    updates, state = tx.update(u, tx.init(x), x, value_fn=loss)
    np.testing.assert_array_equal(updates, u)
    assert float(state.scale) == 1.0
    assert float(state.s_star) == float("inf")


def test_max_scale_lengthens_a_short_step_up_to_the_minimum() -> None:
    loss = lambda p: 0.5 * jnp.sum(p**2)  # noqa: E731  # s* = 1 / lr along -lr g
    x = jnp.ones(2)
    tx = lyapopt.scale_by_curvature(max_scale=4.0)
    updates, state = tx.update(-0.5 * x, tx.init(x), x, value_fn=loss)
    np.testing.assert_allclose(state.scale, 2.0, rtol=1e-6)
    np.testing.assert_allclose(x + updates, 0.0, atol=1e-6)
    updates, state = tx.update(-0.1 * x, tx.init(x), x, value_fn=loss)
    np.testing.assert_allclose(state.scale, 4.0, rtol=1e-6)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_non_finite_loss_takes_no_step(bad: float) -> None:
    loss = lambda p: jnp.sum(p**2) * bad  # noqa: E731
    x = jnp.ones(2)
    tx = lyapopt.scale_by_curvature()
    updates, state = tx.update(-x, tx.init(x), x, value_fn=loss)
    np.testing.assert_array_equal(updates, 0.0)
    assert float(state.scale) == 0.0


def test_non_finite_update_becomes_zero() -> None:
    loss = lambda p: jnp.sum(p**2)  # noqa: E731
    x = jnp.ones(2)
    tx = lyapopt.scale_by_curvature()
    updates, _ = tx.update(jnp.array([jnp.nan, -1.0]), tx.init(x), x, value_fn=loss)
    np.testing.assert_array_equal(updates, 0.0)


def _counting(loss: Any, calls: list[int]) -> Any:
    def value_fn(p: Any) -> jax.Array:
        jax.debug.callback(lambda: calls.append(1))
        return loss(p)

    return value_fn


def test_every_k_measures_on_every_kth_step_and_reuses_between() -> None:
    a = jnp.array([1.0, 4.0])
    loss = lambda p: 0.5 * jnp.sum(a * p * p)  # noqa: E731
    calls: list[int] = []
    value_fn = _counting(loss, calls)
    tx = lyapopt.scale_by_curvature(curvature_every=3)
    x = jnp.array([1.0, 1.0])
    state = tx.init(x)

    @jax.jit
    def update(x: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        g = jax.grad(loss)(x)
        return tx.update(-0.01 * g, state, x, value_fn=value_fn, grad=g)

    measured = []
    for step in range(6):
        before = len(calls)
        g = jax.grad(loss)(x)
        _, state = update(x, state)
        jax.effects_barrier()
        measured.append(len(calls) > before)
        curvature = float(g @ (a * g)) / float(g @ g)
        if step % 3 == 0:
            np.testing.assert_allclose(state.curvature, curvature, rtol=1e-5)
        x = x * 0.5  # move, so a fresh measurement would differ
    assert measured == [True, False, False, True, False, False]


def test_reused_curvature_with_grad_gives_the_same_cap_on_a_quadratic() -> None:
    # On 1/2 c ||x||^2 the curvature u.Hu/u.u = c in every direction, so a
    # reused estimate is exact and curvature_every=5 must match 1.
    loss = lambda p: 1.5 * jnp.sum(p**2)  # noqa: E731
    x0 = jnp.array([1.0, -2.0, 3.0])
    outs = []
    for every in (1, 5):
        tx = optax.chain(
            optax.sgd(1.0), lyapopt.scale_by_curvature(0.5, curvature_every=every)
        )
        x, state = x0, tx.init(x0)
        for _ in range(7):
            g = jax.grad(loss)(x)
            u, state = tx.update(g, state, x, value_fn=loss, grad=g)
            x = x + u
        outs.append(x)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)


def test_missing_value_fn_names_it_and_shows_how_to_pass_it() -> None:
    tx = lyapopt.scale_by_curvature()
    x = jnp.ones(2)
    with pytest.raises(
        ValueError, match=r"needs the extra argument `value_fn`.*value_fn=lambda"
    ):
        tx.update(x, tx.init(x), x)


def test_missing_params_names_them() -> None:
    tx = lyapopt.scale_by_curvature()
    x = jnp.ones(2)
    with pytest.raises(
        ValueError, match=r"scale_by_curvature needs the current parameters"
    ):
        tx.update(x, tx.init(x), value_fn=jnp.sum)


def test_bfloat16_params_get_float32_curvature() -> None:
    loss = lambda p: 0.5 * jnp.sum(p.astype(jnp.float32) ** 2)  # noqa: E731
    x = jnp.full(8, 3.0, jnp.bfloat16)
    tx = lyapopt.scale_by_curvature()
    updates, state = tx.update(-x, tx.init(x), x, value_fn=loss)
    assert updates.dtype == jnp.bfloat16
    assert state.curvature.dtype == jnp.float32
    np.testing.assert_allclose(state.curvature, 1.0, rtol=1e-6)
