"""Precision: bfloat16 parameters get float32 step-size arithmetic; float64 stays float64."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lyapopt

A = jnp.array([1.0, 3.0, 10.0])


def _dtypes_in(jaxpr: Any) -> set[jnp.dtype]:
    """Every dtype an equation of ``jaxpr`` produces, sub-jaxprs included."""
    found: set[jnp.dtype] = set()
    for eqn in jaxpr.eqns:
        found |= {v.aval.dtype for v in eqn.outvars if hasattr(v.aval, "dtype")}
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found |= _dtypes_in(inner)
    return found


def test_bfloat16_params_get_float32_curvature_and_guard() -> None:
    seen: list[jnp.dtype] = []

    def loss(p: jax.Array) -> jax.Array:
        seen.append(p.dtype)  # at trace time: the dtype each evaluation sees
        return 0.5 * jnp.sum(A.astype(p.dtype) * p * p).astype(jnp.float32)

    x = jnp.array([1.0, -2.0, 0.5], jnp.bfloat16)
    tx = lyapopt.lyapunov_adam()
    value, grads = jax.value_and_grad(loss)(x)
    seen.clear()
    updates, state = jax.jit(
        lambda g, s, p: tx.update(g, s, p, value=value, value_fn=loss)
    )(grads, tx.init(x), x)
    assert updates.dtype == jnp.bfloat16
    for name, v in lyapopt.stats(state).items():
        if jnp.issubdtype(v.dtype, jnp.floating) and name != "learning_rate":
            assert v.dtype == jnp.float32, name
    # The line derivatives ran on float32 params; the guard on the bfloat16 step.
    assert jnp.dtype(jnp.float32) in seen and jnp.dtype(jnp.bfloat16) in seen
    np.testing.assert_allclose(
        lyapopt.stats(state)["value_before"], float(value), rtol=0
    )


def test_float64_stays_float64_throughout() -> None:
    with jax.enable_x64(True):
        a = A.astype(jnp.float64)
        loss = lambda p: 0.5 * jnp.sum(a * p * p)  # noqa: E731
        x = jnp.array([1.0, -2.0, 0.5], jnp.float64)
        for tx in (lyapopt.lyapunov_sgd(), lyapopt.lyapunov_adam(curvature_every=3)):
            state = tx.init(x)
            value, grads = jax.value_and_grad(loss)(x)
            jaxpr = jax.make_jaxpr(
                lambda g, s, p, v, tx=tx: tx.update(g, s, p, value=v, value_fn=loss)
            )(grads, state, x, value)
            floats = {
                d for d in _dtypes_in(jaxpr.jaxpr) if jnp.issubdtype(d, jnp.floating)
            }
            assert floats == {jnp.dtype(jnp.float64)}
            updates, state = tx.update(grads, state, x, value=value, value_fn=loss)
            assert updates.dtype == jnp.float64
            assert {
                v.dtype for v in lyapopt.stats(state).values() if v.dtype.kind == "f"
            } == {jnp.dtype(jnp.float64)}
