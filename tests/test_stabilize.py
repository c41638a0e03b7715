"""stabilize: any optax optimizer under the cap, the level and the guard."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt
from tests.helpers import make_step, quadratic, rosenbrock, run


@pytest.mark.parametrize(
    "tx",
    [optax.adamw(10.0), optax.lion(1.0), optax.sgd(100.0, momentum=0.9)],
    ids=["adamw", "lion", "sgd_momentum"],
)
def test_a_diverging_optimizer_decreases_monotonically_when_stabilised(
    tx: optax.GradientTransformation,
) -> None:
    params, _, loss_fn = rosenbrock()
    _, _, raw = run(tx, loss_fn, params, steps=200)
    _, _, stable = run(lyapopt.stabilize(tx), loss_fn, params, steps=200)
    assert not bool(jnp.all(jnp.diff(raw) <= 0))
    lyapopt.testing.assert_monotone_decrease(stable)
    assert float(stable[-1]) < float(stable[0])


def test_with_everything_off_it_is_the_wrapped_optimizer() -> None:
    params, _, loss_fn = rosenbrock()
    a, _, _ = run(optax.adam(1e-2), loss_fn, params, steps=50)
    b, _, _ = run(
        lyapopt.stabilize(optax.adam(1e-2), safety=None, guard=None),
        loss_fn,
        params,
        50,
    )
    np.testing.assert_array_equal(a, b)


def test_a_non_finite_gradient_reaches_neither_params_nor_inner_state() -> None:
    tx = lyapopt.stabilize(optax.adam(0.1))
    loss_fn = quadratic([1.0, 2.0])
    x = jnp.array([1.0, 1.0])
    state = tx.init(x)
    value = loss_fn(x)
    bad = jnp.array([jnp.nan, 1.0])
    updates, new_state = tx.update(bad, state, x, value=value, value_fn=loss_fn)
    np.testing.assert_array_equal(updates, 0.0)
    chex.assert_trees_all_equal(
        new_state.inner_state.inner_state, state.inner_state.inner_state
    )
    assert int(lyapopt.stats(new_state)["nonfinite_gradients"]) == 1


def test_the_raw_gradient_reaches_the_cap_as_grad() -> None:
    # curvature_every=2: on the second step g.u comes from `grad`, with no
    # pass over value_fn; the cap must equal a fresh measurement here since
    # the curvature of 1/2 c||x||^2 is c in every direction.
    loss_fn = quadratic([3.0, 3.0])
    x0 = jnp.array([1.0, -1.0])
    finals = []
    for every in (1, 2):
        tx = lyapopt.stabilize(optax.sgd(10.0), curvature_every=every, guard=None)
        step = jax.jit(make_step(tx, loss_fn))
        x, s = x0, tx.init(x0)
        for _ in range(4):
            x, s, _ = step(x, s)
        finals.append(x)
    # Both reach the minimum 0 (from 1) to rounding: at every step the
    # slope comes from the cap's pass, every other step from `grad`.
    np.testing.assert_allclose(finals[0], finals[1], rtol=1e-6, atol=1e-20)


def test_level_cap_is_part_of_the_pipeline() -> None:
    loss_fn = quadratic([1.0])
    x = jnp.array([2.0])  # V = 2, g = 2
    tx = lyapopt.stabilize(optax.sgd(1.0), safety=None, level=1.5, guard=None)
    updates, state = tx.update(jax.grad(loss_fn)(x), tx.init(x), x, value=loss_fn(x))
    # The linear model 2 - 4 s reaches 1.5 at s = 1/8.
    np.testing.assert_allclose(updates, [-0.25], rtol=1e-6)
    np.testing.assert_allclose(lyapopt.stats(state)["level_scale"], 0.125, rtol=1e-6)


def test_tx_must_be_a_gradient_transformation() -> None:
    with pytest.raises(
        TypeError, match=r"stabilize: `tx` must be an optax GradientTransformation"
    ):
        lyapopt.stabilize(optax.adam)  # type: ignore[arg-type]


def test_behind_a_clip_a_passed_grad_keeps_the_level_cap_exact() -> None:
    loss_fn = quadratic([1.0, 1.0])  # V = 1/2 ||x||^2, g = x
    x = jnp.array([30.0, 40.0])  # V = 1250, ||g|| = 50
    tx = optax.chain(
        optax.clip_by_global_norm(5.0),
        lyapopt.stabilize(optax.sgd(100.0), safety=None, level=0.0, guard=None),
    )
    g = jax.grad(loss_fn)(x)
    u_clipped = -100.0 * g / 10.0  # sgd(100) on the gradient clipped to norm 5
    exact = float(loss_fn(x)) / float(-(g @ u_clipped))  # (V - 0) / (-g.u) = 0.125
    kwargs = {"value": loss_fn(x), "value_fn": loss_fn}
    _, with_grad = tx.update(g, tx.init(x), x, grad=g, **kwargs)
    _, without = tx.update(g, tx.init(x), x, **kwargs)
    np.testing.assert_allclose(lyapopt.stats(with_grad)["s_level"], exact, rtol=1e-6)
    # Without it the clipped gradient stands in for g: off by the clip's 10x.
    np.testing.assert_allclose(lyapopt.stats(without)["s_level"], 10 * exact, rtol=1e-6)
