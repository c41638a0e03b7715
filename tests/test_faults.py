"""Non-finite numbers never reach the parameters; the state records them.

A fault-injection run trains for 2,000 steps with 10% of the batches made
NaN and 1% made Inf, and is compared with the same run on clean batches.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt

STEPS, BATCH, DIM = 2_000, 32, 8
NAN, INF = 1, 2


def _problem() -> tuple[jax.Array, jax.Array, jax.Array]:
    """Noisy linear regression: y = X w* + 0.1 noise, 1,024 rows."""
    kx, kw, kn = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (1024, DIM))
    w = jax.random.normal(kw, (DIM,))
    return x, x @ w + 0.1 * jax.random.normal(kn, (1024,)), w


def _faults() -> np.ndarray:
    """Exactly 10% NaN and 1% Inf steps, at fixed random places."""
    kinds = np.zeros(STEPS, np.int32)
    places = np.random.default_rng(0).permutation(STEPS)
    kinds[places[: STEPS // 10]] = NAN
    kinds[places[STEPS // 10 : STEPS // 10 + STEPS // 100]] = INF
    return kinds


def _train(
    tx: optax.GradientTransformation, faults: np.ndarray
) -> tuple[jax.Array, Any, jax.Array]:
    x, y, _ = _problem()
    batches = jax.random.randint(jax.random.key(1), (STEPS, BATCH), 0, x.shape[0])

    def loss(w: jax.Array, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return jnp.mean((xb @ w - yb) ** 2)

    def step(carry: tuple[jax.Array, Any], inputs: tuple[jax.Array, jax.Array]):
        w, state = carry
        idx, kind = inputs
        poison = jnp.where(kind == NAN, jnp.nan, jnp.where(kind == INF, jnp.inf, 0.0))
        xb, yb = x[idx] + poison, y[idx]
        value, grads = jax.value_and_grad(loss)(w, xb, yb)
        updates, state = tx.update(
            grads, state, w, value=value, value_fn=lambda v: loss(v, xb, yb)
        )
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros(DIM)
    (w, state), _ = jax.jit(lambda w, s: jax.lax.scan(step, (w, s), (batches, faults)))(
        w0, tx.init(w0)
    )
    return w, state, loss(w, x, y)


def _all_finite(tree: Any) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


# With the paper's decay (0.1's default): at a constant rate Adam ends where
# its last minibatches leave it, and the faulty and clean runs end 6.6% apart.
@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda: lyapopt.lyapunov_sgd(0.1, decay_constant=1e-3),
        lambda: lyapopt.lyapunov_adam(0.1, decay_constant=1e-3),
    ],
    ids=["lyapunov_sgd", "lyapunov_adam"],
)
def test_fault_injection_run_ends_like_a_clean_run(make: Any) -> None:
    faults = _faults()
    w, state, final = _train(make(), faults)
    _, clean_state, clean_final = _train(make(), np.zeros_like(faults))
    injected = int(np.sum(faults != 0))
    metrics = lyapopt.stats(state)
    assert _all_finite(w)
    # +inf is the cap's "no bound" marker; nothing else may be non-finite.
    assert _all_finite(jax.tree.map(lambda v: jnp.where(v == jnp.inf, 0, v), state))
    assert int(metrics["nonfinite_gradients"]) == injected == 220
    assert int(metrics["guard_nonfinite"]) == injected
    assert int(lyapopt.stats(clean_state)["nonfinite_gradients"]) == 0
    assert abs(float(final) - float(clean_final)) <= 0.05 * float(clean_final)


def test_a_nan_value_with_finite_gradients_takes_no_step() -> None:
    # The guard judges V(theta) = value_fn(params), not `value`: the loss is
    # NaN at w itself (a forward pass that overflowed), the gradients finite.
    tx = lyapopt.lyapunov_adam()
    w = jnp.ones(3)
    loss = lambda v: jnp.sum(v**2)  # noqa: E731

    def value_fn(v: jax.Array) -> jax.Array:
        return loss(v) + jnp.where(jnp.all(v == w), jnp.nan, 0.0)

    updates, state = tx.update(
        jax.grad(loss)(w), tx.init(w), w, value=jnp.nan, value_fn=value_fn
    )
    np.testing.assert_array_equal(updates, 0.0)
    assert int(lyapopt.stats(state)["guard_nonfinite"]) == 1
    assert _all_finite(jax.tree.map(lambda v: jnp.where(v == jnp.inf, 0, v), state))


def test_a_value_fn_that_returns_nan_takes_no_step() -> None:
    tx = lyapopt.lyapunov_sgd()
    w = jnp.ones(3)
    grads = 2 * w
    updates, state = tx.update(
        grads, tx.init(w), w, value=3.0, value_fn=lambda v: jnp.nan * v.sum()
    )
    np.testing.assert_array_equal(updates, 0.0)
    assert float(lyapopt.stats(state)["curvature_scale"]) == 0.0


def test_the_first_order_rule_drops_faulty_batches_without_the_guard() -> None:
    faults = _faults()
    make = lambda: lyapopt.lyapunov_sgd(0.1, safety=None, guard=None)  # noqa: E731
    w, state, final = _train(make(), faults)
    _, _, clean_final = _train(make(), np.zeros_like(faults))
    assert _all_finite(w) and _all_finite(state)
    assert int(lyapopt.stats(state)["nonfinite_gradients"]) == 220
    assert abs(float(final) - float(clean_final)) <= 0.05 * float(clean_final)
