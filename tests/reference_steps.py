"""Steps of lyapopt's stages on the guarantee test's problems, as a reference.

``python -m tests.reference_steps tests/data/steps_0_2.npz`` recorded them
with lyapopt 0.2 (commit 84b4bec), before the stages shared one protocol;
``tests/test_protocol.py`` runs the same configurations now and compares.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lyapopt

N, DIM, STEPS = 64, 8, 4


def _problems(dtype: Any) -> tuple:
    """Random quadratics plus a ripple, as in tests/test_guarantee.py."""
    keys = jax.random.split(jax.random.key(1), 4)
    centers = jax.random.normal(keys[0], (N, DIM)) * 3
    scales = jnp.exp(jax.random.uniform(keys[1], (N, DIM), minval=-3, maxval=3))
    starts = (jax.random.normal(keys[2], (N, DIM)) * 3).astype(dtype)
    rates = jnp.exp(jax.random.uniform(keys[3], (N,), minval=-3, maxval=3))
    return centers, scales, starts, rates


# name -> (optimizer from a rate, whether `grad` is passed, parameter dtype)
CONFIGS: dict[str, tuple[Callable[[Any], Any], bool, Any]] = {
    "adam": (lambda r: lyapopt.lyapunov_adam(r), False, jnp.float32),
    "adam_bf16": (lambda r: lyapopt.lyapunov_adam(r), False, jnp.bfloat16),
    "sgd_every2_level": (
        lambda r: lyapopt.stabilize(optax.sgd(r), level=-20.0, curvature_every=2),
        False,
        jnp.float32,
    ),
    "adam_every3_skip": (
        lambda r: lyapopt.stabilize(optax.adam(r), curvature_every=3, guard="skip"),
        False,
        jnp.float32,
    ),
    "sgd_guard_only": (
        lambda r: lyapopt.stabilize(optax.sgd(r), safety=None),
        False,
        jnp.float32,
    ),
    "sgd_level_record": (
        lambda r: lyapopt.stabilize(
            optax.sgd(r), safety=None, level=-5.0, guard="record"
        ),
        False,
        jnp.float32,
    ),
    "sgd_cap_no_guard": (
        lambda r: lyapopt.stabilize(optax.sgd(r), guard=None),
        False,
        jnp.float32,
    ),
    "chain_cap_guard": (
        lambda r: optax.chain(
            optax.sgd(r), lyapopt.scale_by_curvature(), lyapopt.lyapunov_guard()
        ),
        False,
        jnp.float32,
    ),
    "chain_cap_guard_grad": (
        lambda r: optax.chain(
            optax.sgd(r), lyapopt.scale_by_curvature(), lyapopt.lyapunov_guard()
        ),
        True,
        jnp.float32,
    ),
    "chain_every2_level_guard_grad": (
        lambda r: optax.chain(
            optax.adam(r),
            lyapopt.scale_by_curvature(curvature_every=2),
            lyapopt.scale_by_level(-20.0),
            lyapopt.lyapunov_guard(),
        ),
        True,
        jnp.float32,
    ),
    "chain_every2_level_guard": (
        lambda r: optax.chain(
            optax.adam(r),
            lyapopt.scale_by_curvature(curvature_every=2),
            lyapopt.scale_by_level(-20.0),
            lyapopt.lyapunov_guard(),
        ),
        False,
        jnp.float32,
    ),
}


def trajectory(name: str) -> dict[str, np.ndarray]:
    """The parameters after each step and the final state's leaves."""
    make, with_grad, dtype = CONFIGS[name]
    centers, scales, starts, rates = _problems(dtype)

    def one(center, scale, start, rate):
        def f(p):
            q = p.astype(jnp.float32)
            return 0.5 * jnp.sum(scale * (q - center) ** 2) + jnp.sum(jnp.sin(3 * q))

        tx = make(rate)
        p, state, path = start, tx.init(start), []
        for _ in range(STEPS):
            g = jax.grad(f)(p)
            extra = {"grad": g} if with_grad else {}
            u, state = tx.update(g, state, p, value=f(p), value_fn=f, **extra)
            p = optax.apply_updates(p, u)
            path.append(p)
        return jnp.stack(path), state

    path, state = jax.jit(jax.vmap(one))(centers, scales, starts, rates)
    out = {"params": np.asarray(path.astype(jnp.float32))}
    for i, leaf in enumerate(jax.tree.leaves(state)):
        out[f"state{i}"] = np.asarray(leaf.astype(jnp.float32))
    return out


def main(path: str) -> None:
    arrays = {
        f"{name}/{key}": value
        for name in CONFIGS
        for key, value in trajectory(name).items()
    }
    np.savez_compressed(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
