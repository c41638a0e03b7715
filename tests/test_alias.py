"""lyapunov_sgd and lyapunov_adam."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt
from tests.helpers import make_step, quadratic, rosenbrock, run


def test_first_order_sgd_is_the_papers_rule() -> None:
    lr, alpha, beta = 0.3, 0.05, 2.0
    tx = lyapopt.lyapunov_sgd(
        lr, decay_constant=alpha, modulation=beta, safety=None, guard=None
    )
    loss_fn = quadratic([1.0, 4.0])
    x = jnp.array([1.0, 1.0])
    state = tx.init(x)
    for t in range(5):
        g = jax.grad(loss_fn)(x)
        updates, state = tx.update(g, state, x)  # no value_fn needed
        expected = (
            -lr * math.exp(-alpha * t) / (1 + beta * float(jnp.linalg.norm(g))) * g
        )
        np.testing.assert_allclose(updates, expected, rtol=1e-6)
        x = x + updates


def test_sgd_momentum_accumulates_the_modulated_gradient() -> None:
    tx = lyapopt.lyapunov_sgd(
        1.0, decay_constant=0.0, momentum=0.5, safety=None, guard=None
    )
    x = jnp.zeros(1)
    state = tx.init(x)
    g = jnp.array([3.0])  # modulated: 3 / 4
    u1, state = tx.update(g, state, x)
    u2, state = tx.update(g, state, x)
    np.testing.assert_allclose([u1[0], u2[0]], [-0.75, -0.75 * 1.5], rtol=1e-6)


def test_adam_with_cap_and_guard_off_and_no_decay_is_optax_adam() -> None:
    params, _, loss_fn = rosenbrock()
    ours, _, _ = run(
        lyapopt.lyapunov_adam(1e-2, decay_constant=0.0, safety=None, guard=None),
        loss_fn,
        params,
        steps=100,
    )
    theirs, _, _ = run(optax.adam(1e-2), loss_fn, params, steps=100)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize("factory", [lyapopt.lyapunov_sgd, lyapopt.lyapunov_adam])
@pytest.mark.parametrize("lr", [1e-3, 1.0, 1e3])
def test_defaults_decrease_the_loss_at_every_step_at_any_rate(
    factory, lr: float
) -> None:
    params, _, loss_fn = rosenbrock()
    _, state, losses = run(factory(lr), loss_fn, params, steps=300)
    lyapopt.testing.assert_monotone_decrease(losses)
    assert float(losses[-1]) < float(losses[0])
    assert int(lyapopt.stats(state)["nonfinite_gradients"]) == 0


@pytest.mark.parametrize("factory", [lyapopt.lyapunov_sgd, lyapopt.lyapunov_adam])
def test_a_schedule_is_decayed_on_top(factory) -> None:
    x = jnp.ones(2)
    loss_fn = quadratic([1.0, 1.0])
    constant = factory(optax.constant_schedule(1e-2), decay_constant=0.1)
    number = factory(1e-2, decay_constant=0.1)
    outs = []
    for tx in (constant, number):
        step = jax.jit(make_step(tx, loss_fn))
        p, s = x, tx.init(x)
        for _ in range(5):
            p, s, _ = step(p, s)
        outs.append((p, lyapopt.stats(s)["learning_rate"]))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
    np.testing.assert_allclose(outs[0][1], 1e-2 * math.exp(-0.4), rtol=1e-6)
