"""hvp, sharpness and segment_profile."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lyapopt


def test_hvp_of_a_quadratic_is_a_times_v() -> None:
    a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    loss = lambda p: 0.5 * p["w"] @ a @ p["w"] + jnp.sum(p["b"] ** 2)  # noqa: E731
    params = {"w": jnp.array([0.3, -1.0]), "b": jnp.array([1.0])}
    v = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([0.5])}
    hv = lyapopt.diagnostics.hvp(loss, params, v)
    np.testing.assert_allclose(hv["w"], a @ v["w"], rtol=1e-6)
    np.testing.assert_allclose(hv["b"], 2 * v["b"], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sharpness_of_a_diagonal_quadratic_is_its_largest_eigenvalue(seed: int) -> None:
    eig = jnp.array([0.5, 2.0, 7.0, 10.0])
    loss = lambda p: 0.5 * jnp.sum(eig * p * p)  # noqa: E731
    got = lyapopt.diagnostics.sharpness(loss, jnp.ones(4), key=jax.random.key(seed))
    assert abs(float(got) - 10.0) < 1e-3


def test_sharpness_runs_under_jit_on_a_tree() -> None:
    loss = lambda p: jnp.sum(p["a"] ** 2) + 3 * jnp.sum(p["b"] ** 2)  # noqa: E731
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
    got = jax.jit(
        lambda p, k: lyapopt.diagnostics.sharpness(loss, p, key=k, num_iters=30)
    )(params, jax.random.key(0))
    np.testing.assert_allclose(got, 6.0, rtol=1e-4)


def test_segment_profile_of_a_parabola() -> None:
    a, b = jnp.array([-1.0, 0.0]), jnp.array([3.0, 0.0])
    ts, values = lyapopt.diagnostics.segment_profile(
        lambda p: jnp.sum(p**2), a, b, num=5
    )
    np.testing.assert_allclose(ts, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(values, (-1.0 + 4.0 * ts) ** 2, rtol=1e-6)


def test_num_below_two_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"segment_profile: `num` must be an integer >= 2"
    ):
        lyapopt.diagnostics.segment_profile(jnp.sum, jnp.ones(1), jnp.ones(1), num=1)
