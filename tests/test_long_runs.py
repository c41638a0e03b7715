"""Long runs: 100,000 steps in lax.scan, saturating counters, a floor that holds."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lyapopt
from tests.helpers import make_step, quadratic

INT32_MAX = int(jnp.iinfo(jnp.int32).max)


def test_100k_steps_reach_the_floor_and_stay_there() -> None:
    steps, rate, floor = 100_000, 1e-3, 1e-2
    schedule = lyapopt.exponential_schedule(0.5, rate, end_value=floor)
    tx = lyapopt.lyapunov_sgd(schedule, decay_constant=0.0)
    loss = quadratic([1.0, 100.0])
    step = make_step(tx, loss)

    def body(carry, _):
        p, s, _ = step(*carry)
        return (p, s), (lyapopt.stats(s)["learning_rate"], p)

    x0 = jnp.array([3.0, -2.0])
    (x, state), (rates, path) = jax.jit(
        lambda x, s: jax.lax.scan(body, (x, s), length=steps)
    )(x0, tx.init(x0))
    reached = math.ceil(math.log(0.5 / floor) / rate)  # 0.5 e^{-rate t} <= floor
    assert float(rates[reached - 2]) > floor
    np.testing.assert_array_equal(rates[reached:], np.float32(floor))
    counts = optax.tree.get_all_with_path(state, "count")
    assert [int(c) for _, c in counts] == [steps, steps]
    # No drift: the iterate reached the minimum and stays there.
    assert float(jnp.max(jnp.abs(path[steps // 2 :]))) < 1e-6
    assert float(loss(x)) <= float(loss(path[steps // 2]))
    finite = jax.tree.map(
        lambda v: jnp.all(jnp.isfinite(jnp.where(v == jnp.inf, 0, v))), state
    )
    assert all(bool(f) for f in jax.tree.leaves(finite))


def test_step_counters_saturate_instead_of_overflowing() -> None:
    tx = lyapopt.lyapunov_sgd(1e3, decay_constant=1e-3)  # decays to 0 at the end
    loss = quadratic([1.0, 4.0])
    x = jnp.ones(2)
    state = optax.tree.set(tx.init(x), count=jnp.asarray(INT32_MAX - 3, jnp.int32))
    step = jax.jit(make_step(tx, loss))
    for _ in range(10):
        x, state, _ = step(x, state)
    assert [int(c) for _, c in optax.tree.get_all_with_path(state, "count")] == [
        INT32_MAX
    ] * 2
    # The schedule at a saturated count is its floor (0 here), not a wrapped-around rate.
    assert float(lyapopt.stats(state)["learning_rate"]) == 0.0


def test_violation_counter_saturates() -> None:
    tx = optax.chain(optax.sgd(10.0), lyapopt.lyapunov_guard(guard="record"))
    loss = quadratic([1.0])  # every step of -10 g overshoots: a violation each time
    x = jnp.ones(1)
    state = optax.tree.set(tx.init(x), violations=jnp.asarray(INT32_MAX - 2, jnp.int32))
    step = jax.jit(make_step(tx, loss))
    for _ in range(5):
        x, state, _ = step(x, state)
    assert int(lyapopt.stats(state)["violations"]) == INT32_MAX
