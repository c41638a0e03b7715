"""Logging: lyapopt.stats from inside a jitted step, with no host round trip."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

import lyapopt
from tests import digits

BATCH = digits.batch(256)
PARAMS = digits.init(jax.random.key(0))
TX = lyapopt.lyapunov_adam(1.0, decay_constant=0.01)
HOST_CALLS = {"debug_callback", "pure_callback", "io_callback", "callback"}


def step(params: dict, state: Any) -> tuple[dict, Any, dict]:
    loss, grads = jax.value_and_grad(digits.loss_fn)(params, BATCH)
    updates, state = TX.update(
        grads, state, params, value=loss, value_fn=lambda p: digits.loss_fn(p, BATCH)
    )
    return optax.apply_updates(params, updates), state, lyapopt.stats(state)


def primitives(jaxpr: Any) -> set[str]:
    """Every primitive in ``jaxpr`` and the jaxprs nested in its equations."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= primitives(inner)
    return names


def test_a_step_that_returns_its_stats_calls_nothing_on_the_host() -> None:
    def printing_step(params: dict, state: Any) -> tuple:
        out = step(params, state)
        jax.debug.callback(print, out[2]["value_after"])  # the round trip avoided
        return out

    state = TX.init(PARAMS)
    found = primitives(jax.make_jaxpr(step)(PARAMS, state).jaxpr)
    assert {"while", "cond"} <= found  # the guard's loop and the cond were seen
    assert not found & HOST_CALLS
    printing = primitives(jax.make_jaxpr(printing_step)(PARAMS, state).jaxpr)
    assert printing & HOST_CALLS


def test_stats_stacked_by_a_scan_are_each_steps_stats() -> None:
    steps = 8

    @jax.jit
    def many(params: dict, state: Any) -> dict:
        def body(carry: tuple, _: None) -> tuple:
            params, state, metrics = step(*carry)
            return (params, state), metrics

        return jax.lax.scan(body, (params, state), length=steps)[1]

    stacked = jax.device_get(many(PARAMS, TX.init(PARAMS)))  # one transfer
    assert all(v.shape == (steps,) for v in stacked.values())

    jitted = jax.jit(step)
    params, state = PARAMS, TX.init(PARAMS)
    for t in range(steps):
        params, state, metrics = jitted(params, state)
        for name, value in metrics.items():
            np.testing.assert_allclose(
                stacked[name][t], value, rtol=1e-5, err_msg=f"{name}[{t}]"
            )
    np.testing.assert_allclose(
        stacked["learning_rate"], np.exp(-0.01 * np.arange(steps)), rtol=1e-6
    )
