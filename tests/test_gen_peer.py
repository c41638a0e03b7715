"""benchmarks.gen: GeN's rate from the parabola on a fresh batch, in closed form.

Along ``-G`` the best multiple of gradient descent's step on ``1/2 x.Ax`` is
``|G|^2 / G.AG``; a parabola through three losses of a quadratic is exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks.gen import gen

A = jnp.diag(jnp.array([1.0, 3.0, 9.0]))
X0 = jnp.array([1.0, -1.0, 1.0])


def quadratic(p: jax.Array) -> jax.Array:
    return 0.5 * p @ A @ p


def best(x: jax.Array) -> float:
    g = A @ x
    return float(g @ g) / float(g @ A @ g)


def test_each_fitted_optimum_is_gg_over_ghg_along_minus_g() -> None:
    tx = gen(optax.sgd(1.0), every=1)
    state, x = tx.init(X0), X0
    step = jax.jit(lambda x, s: tx.update(A @ x, s, x, fresh_value_fn=quadratic))
    for _ in range(5):
        expected = best(x)
        updates, state = step(x, state)
        np.testing.assert_allclose(state.optimum, expected, rtol=1e-5)
        x = optax.apply_updates(x, updates)
    assert int(state.accepted) == 5 and int(state.rejected) == 0


def test_the_rate_converges_to_one_over_the_curvature_along_minus_g() -> None:
    # At a fixed point the optimum is a constant X; GeN's smoothing and
    # clamp take the rate from 1 to X (5% a step at most while clipped).
    tx = gen(optax.sgd(1.0), every=1)
    state = tx.init(X0)
    step = jax.jit(lambda s: tx.update(A @ X0, s, X0, fresh_value_fn=quadratic))
    rates = []
    for _ in range(200):
        updates, state = step(state)
        rates.append(float(state.rate))
    np.testing.assert_allclose(rates[-1], best(X0), rtol=1e-5)
    # the first step: 0.9 * 1 + 0.1 * clip(X, 1/2, 2), X = 83/747 < 1/2
    np.testing.assert_allclose(rates[0], 0.9 + 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(updates, -rates[-1] * (A @ X0), rtol=1e-5)


def test_the_rate_is_measured_every_k_steps_only() -> None:
    tx = gen(optax.sgd(0.01), every=4)
    state, x = tx.init(X0), X0
    step = jax.jit(lambda x, s: tx.update(A @ x, s, x, fresh_value_fn=quadratic))
    rates = []
    for _ in range(12):
        updates, state = step(x, state)
        x = optax.apply_updates(x, updates)
        rates.append(float(state.rate))
    assert int(state.accepted) == 3  # at steps 4, 8 and 12
    assert rates[0] == rates[1] == rates[2] == 1.0 and rates[3] > 1.0
    assert rates[3] == rates[4] == rates[5] == rates[6]


def test_the_shape_multiplies_the_rate_outside_the_state() -> None:
    shape = optax.linear_schedule(1.0, 0.0, 10)
    tx = gen(optax.sgd(1.0), every=1, shape=shape)
    state = tx.init(X0)
    for t in range(3):
        updates, state = tx.update(A @ X0, state, X0, fresh_value_fn=quadratic)
        np.testing.assert_allclose(
            updates, -float(shape(t)) * float(state.rate) * (A @ X0), rtol=1e-6
        )
    # the measured rate itself is the unshaped one
    np.testing.assert_allclose(state.rate, 0.95**3, rtol=1e-6)


def test_an_ascent_direction_is_refused() -> None:
    tx = gen(optax.sgd(-1.0), every=1)  # u = +G: the slope B is negative
    state = tx.init(X0)
    _, state = tx.update(A @ X0, state, X0, fresh_value_fn=quadratic)
    assert float(state.rate) == 1.0
    assert int(state.rejected) == 1 and int(state.accepted) == 0


def test_a_concave_line_is_refused() -> None:
    tx = gen(optax.sgd(1.0), every=1)
    state = tx.init(X0)
    _, state = tx.update(A @ X0, state, X0, fresh_value_fn=lambda p: -quadratic(p))
    assert float(state.rate) == 1.0 and int(state.rejected) == 1


@pytest.mark.parametrize(
    ("loss", "accepted"),
    [
        (quadratic, True),  # a parabola: R^2 = 1
        (lambda p: jnp.sum(p**4) * 100.0 - jnp.sum(p), False),  # quartic: R^2 < .99
    ],
)
def test_five_points_refuse_a_poor_parabola(loss, accepted: bool) -> None:
    tx = gen(optax.sgd(0.3), every=1, factors=(-2.0, -1.0, 0.0, 1.0, 2.0))
    state = tx.init(X0)
    _, state = tx.update(jax.grad(loss)(X0), state, X0, fresh_value_fn=loss)
    assert int(state.accepted) == int(accepted)
    assert (float(state.r2) > 0.99) == accepted


def test_a_non_finite_loss_halves_the_rate() -> None:
    tx = gen(optax.sgd(1.0), every=1)
    state = tx.init(X0)
    _, state = tx.update(
        A @ X0, state, X0, fresh_value_fn=lambda p: jnp.log(p[0] - 1.5)
    )
    assert float(state.rate) == 0.5 and int(state.failed) == 1


def test_the_fresh_batch_is_a_required_argument() -> None:
    tx = gen(optax.sgd(1.0))
    with pytest.raises(ValueError, match="fresh_value_fn"):
        tx.update(A @ X0, tx.init(X0), X0, value_fn=quadratic)


def test_the_runner_passes_a_fresh_batch_from_a_second_shuffle() -> None:
    from benchmarks.tasks import TASKS
    from benchmarks.train import Problem

    problem = Problem(TASKS["mlp_minibatch"])
    idx, fresh = problem.indices(0, 40), problem.fresh_indices(0, 40)
    assert idx.shape == fresh.shape
    assert not any(np.array_equal(a, b) for a, b in zip(idx, fresh, strict=True))
