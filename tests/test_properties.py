"""Property tests on random quadratics (hypothesis).

Dimension 1 to 50, condition numbers up to 1e6, convex, singular and
indefinite, learning rates 1e-6 to 1e6. An n-dimensional problem is padded
with zeros to 50 dimensions (the padding adds nothing to V, its gradient or
its curvature), so every example runs through one compiled step.
"""

from __future__ import annotations

import functools
from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings

import lyapopt

# Float rounding allowance when the test recomputes V outside the guard's jit.
ROUNDING = 1e-5
MAX_DIM = 50


@st.composite
def quadratics(draw: Any, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(A, x, lr): V(x) = 1/2 x.Ax with A = Q diag(eig) Q^T."""
    n = draw(st.integers(1, 50))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    log_condition = draw(st.floats(0.0, 6.0))
    eig = np.exp(rng.uniform(0.0, log_condition * np.log(10.0), n))
    if kind in ("singular", "any") and n > 1 and draw(st.booleans()):
        eig[: draw(st.integers(1, n - 1))] = 0.0
    if kind == "any" and draw(st.booleans()):
        eig *= rng.choice([-1.0, 1.0], n)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = np.zeros((MAX_DIM, MAX_DIM), np.float32)
    a[:n, :n] = (q * eig) @ q.T
    x = np.zeros(MAX_DIM, np.float32)
    x[:n] = rng.normal(size=n) * 10 ** draw(st.floats(-3.0, 3.0))
    lr = 10 ** draw(st.floats(-6.0, 6.0))
    return a, x, lr


OPTIMIZERS = {
    "guard_backtrack": lambda lr: lyapopt.stabilize(optax.sgd(lr), safety=None),
    "guard_skip": lambda lr: lyapopt.stabilize(
        optax.sgd(lr), safety=None, guard="skip"
    ),
    "cap_alone": lambda lr: optax.chain(optax.sgd(lr), lyapopt.scale_by_curvature()),
    "lyapunov_sgd": lyapopt.lyapunov_sgd,
    "lyapunov_adam": lyapopt.lyapunov_adam,
}


@functools.partial(jax.jit, static_argnames="name")
def _one_step(a: jax.Array, x: jax.Array, lr: jax.Array, name: str):
    """One step from x on 1/2 x.Ax; the rate is traced, so one compile per name."""
    tx = OPTIMIZERS[name](lr)
    loss = lambda p: 0.5 * p @ a @ p  # noqa: E731
    value, grads = jax.value_and_grad(loss)(x)
    updates, state = tx.update(grads, tx.init(x), x, value=value, value_fn=loss)
    new = optax.apply_updates(x, updates)
    return new, state, value, loss(new)


def _finite(tree: Any) -> bool:
    # +inf is the cap's documented "no bound" marker.
    return all(
        bool(jnp.all(jnp.isfinite(jnp.where(leaf == jnp.inf, 0, leaf))))
        for leaf in jax.tree.leaves(tree)
    )


def _allowance(before: jax.Array) -> float:
    return ROUNDING * max(1.0, abs(float(before)))


@settings(max_examples=60, deadline=None)
@given(problem=quadratics("any"), mode=st.sampled_from(["backtrack", "skip"]))
def test_guard_never_lets_v_increase(problem: tuple, mode: str) -> None:
    new, state, before, after = _one_step(*problem, name=f"guard_{mode}")
    guard = state.guard  # stabilize's state: (inner, curvature, level, guard)
    assert float(guard.value_after) <= float(
        guard.value_before
    )  # the guard's own numbers
    assert float(after) <= float(before) + _allowance(before)
    assert _finite(new) and _finite(state)


@settings(max_examples=60, deadline=None)
@given(problem=quadratics("singular"))
def test_cap_alone_never_lets_v_increase_on_convex_quadratics(problem: tuple) -> None:
    new, state, before, after = _one_step(*problem, name="cap_alone")
    assert float(after) <= float(before) + _allowance(before)
    assert _finite(new) and _finite(state)


@settings(max_examples=60, deadline=None)
@given(problem=quadratics("any"), adam=st.booleans())
def test_optimizers_at_any_rate_stay_finite_and_never_increase(
    problem: tuple, adam: bool
) -> None:
    name = "lyapunov_adam" if adam else "lyapunov_sgd"
    new, state, before, after = _one_step(*problem, name=name)
    assert float(after) <= float(before) + _allowance(before)
    assert _finite(new) and _finite(state)
