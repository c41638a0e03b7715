"""Replicas under ``jax.pmap`` with a per-device ``value_fn``, on 2 host devices.

Run as ``python -m tests.replica_runs`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``; prints one JSON line:
the error raised without ``axis_name`` (or none), and how far the two
replicas' parameters are apart after 50 steps with it.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import optax

import lyapopt

STEPS = 50


def main() -> None:
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (2, 32, 8))  # each device its own rows
    y = jnp.sin(x @ jax.random.normal(keys[1], (8, 1)))
    params = {
        "w1": jax.random.normal(keys[2], (8, 16)) / 3,
        "w2": jax.random.normal(keys[3], (16, 1)) / 4,
    }

    def value_fn(p, xb, yb):  # the device's own loss: no collective inside
        return jnp.mean((jnp.tanh(xb @ p["w1"]) @ p["w2"] - yb) ** 2)

    def run(tx):
        def local_step(p, s, xb, yb):
            loss, grads = jax.value_and_grad(value_fn)(p, xb, yb)
            grads = jax.lax.pmean(grads, "batch")
            u, s = tx.update(grads, s, p, value=loss, value_fn=value_fn, xb=xb, yb=yb)
            return optax.apply_updates(p, u), s

        step = jax.pmap(local_step, axis_name="batch")
        p = jax.tree.map(lambda a: jnp.stack([a, a]), params)
        s = jax.tree.map(lambda a: jnp.stack([a, a]), tx.init(params))
        for _ in range(STEPS):
            p, s = step(p, s, x, y)
        return max(float(jnp.max(jnp.abs(a[0] - a[1]))) for a in jax.tree.leaves(p))

    try:
        apart = run(lyapopt.lyapunov_adam(1.0))
        error = None
    except ValueError as e:
        apart, error = None, str(e)
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "error_without_axis_name": error,
                "apart_without_axis_name": apart,
                "apart_with_axis_name": run(
                    lyapopt.lyapunov_adam(1.0, axis_name="batch")
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
