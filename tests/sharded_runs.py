"""Data-parallel lyapopt runs on many devices, for tests/test_sharding.py.

Run as ``python -m tests.sharded_runs OUT.npz`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: JAX fixes the number
of CPU devices when it starts, so the 8-device runs need their own process.
It saves the parameters and the stats of every run to ``OUT.npz``; the test
compares them with the same runs on one device.

The step is :func:`step` in every form: the loss is the mean over the global
batch, so under ``jax.jit`` with a sharded batch the curvature and the guard
see the global batch without anything said; under ``shard_map`` the loss is
averaged across devices explicitly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lyapopt
from tests import digits

STEPS = 10
ROWS = 256  # 32 per device on 8 devices
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "adam": lambda: lyapopt.lyapunov_adam(1.0),
}


def step(tx: optax.GradientTransformation, params: Any, state: Any, batch: Any):
    """The README's step: the loss, its gradient and value_fn on ``batch``."""
    loss, grads = jax.value_and_grad(digits.loss_fn)(params, batch)
    updates, state = tx.update(
        grads, state, params, value=loss, value_fn=lambda p: digits.loss_fn(p, batch)
    )
    return optax.apply_updates(params, updates), state


def train(tx: optax.GradientTransformation, params: Any, batch: Any) -> tuple:
    """``STEPS`` jitted steps; returns the params and the last step's stats."""
    jitted = jax.jit(lambda p, s, b: step(tx, p, s, b))
    state = jax.jit(tx.init)(params)
    for _ in range(STEPS):
        params, state = jitted(params, state, batch)
    return params, lyapopt.stats(state)


def replicated(name: str) -> tuple:
    """Batch sharded over 8 devices, params replicated (an Explicit mesh)."""
    mesh = jax.make_mesh((8,), ("data",))
    with jax.set_mesh(mesh):
        params = jax.device_put(
            digits.init(jax.random.key(0)), NamedSharding(mesh, P())
        )
        batch = jax.device_put(digits.batch(ROWS), NamedSharding(mesh, P("data")))
        assert len(batch[0].addressable_shards) == 8
        return train(OPTIMIZERS[name](), params, batch)


def sharded_params(name: str) -> tuple:
    """Batch over 4 devices x hidden units over 2 (Auto mesh, sharding propagated)."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model"), "b2": P()}
    with jax.set_mesh(mesh):
        params = {
            k: jax.device_put(v, NamedSharding(mesh, specs[k]))
            for k, v in digits.init(jax.random.key(0)).items()
        }
        batch = jax.device_put(digits.batch(ROWS), NamedSharding(mesh, P("data")))
        params, stats = train(OPTIMIZERS[name](), params, batch)
    assert params["w1"].sharding.spec == specs["w1"], params["w1"].sharding
    return params, stats


def shard_mapped(name: str) -> tuple:
    """``shard_map`` over 8 devices: each sees its rows; the loss is pmean'd."""
    mesh = jax.make_mesh((8,), ("data",))
    tx = OPTIMIZERS[name]()

    def local_step(params: Any, state: Any, local_batch: Any) -> tuple:
        def value_fn(p: Any) -> jax.Array:
            return jax.lax.pmean(digits.loss_fn(p, local_batch), "data")

        # The gradient of the averaged loss is the averaged gradient.
        loss, grads = jax.value_and_grad(value_fn)(params)
        updates, state = tx.update(grads, state, params, value=loss, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    sharded_step = jax.jit(
        jax.shard_map(
            local_step, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P()
        )
    )
    with jax.set_mesh(mesh):
        params = digits.init(jax.random.key(0))
        state = tx.init(params)
        batch = jax.device_put(digits.batch(ROWS), NamedSharding(mesh, P("data")))
        for _ in range(STEPS):
            params, state = sharded_step(params, state, batch)
    return params, lyapopt.stats(state)


RUNS = {
    "replicated/adam": lambda: replicated("adam"),
    "sharded_params/adam": lambda: sharded_params("adam"),
    "shard_map/adam": lambda: shard_mapped("adam"),
}


def main(out: str) -> None:
    jax.config.update("jax_default_matmul_precision", "highest")  # as conftest.py
    assert jax.device_count() == 8, jax.devices()
    arrays = {}
    for run, fn in RUNS.items():
        params, stats = fn()
        for k, v in {**params, **stats}.items():
            arrays[f"{run}/{k}"] = np.asarray(v)
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
