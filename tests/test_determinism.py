"""Determinism: bitwise-identical runs, and decisions independent of device count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # runs in subprocesses

# A data-parallel run of lyapunov_adam at a rate large enough to make the
# guard backtrack; prints the parameters' hash and every step's decisions.
SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import lyapopt

    n_devices = int(sys.argv[1])
    mesh = Mesh(np.array(jax.devices()[:n_devices]), ("data",))
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (256, 16))
    y = jnp.tanh(x @ jax.random.normal(kw, (16,)))
    x, y = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, y))
    params = {"w": jnp.zeros((16, 32)) + 0.1, "v": jnp.zeros(32) + 0.1}
    params = jax.device_put(params, NamedSharding(mesh, P()))

    def loss_fn(p):
        return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] - y) ** 2)

    tx = lyapopt.lyapunov_adam(3.0, curvature_every=3)

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(grads, s, p, value=value, value_fn=loss_fn)
        return optax.apply_updates(p, u), s, lyapopt.stats(s)

    state = tx.init(params)
    decisions = []
    for _ in range(30):
        params, state, m = step(params, state)
        decisions.append([int(m["backtracks"]), float(m["curvature_scale"]), float(m["value_after"])])
    flat = np.concatenate([np.asarray(l).ravel() for l in jax.tree.leaves(params)])
    print(json.dumps({
        "devices": len(jax.devices()),
        "hash": hashlib.sha256(flat.tobytes()).hexdigest(),
        "params": flat.tolist(),
        "decisions": decisions,
    }))
    """
)


def _run(n_devices: int) -> dict:
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}"
    )
    env.setdefault("JAX_PLATFORMS", "cpu")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n_devices)],
        capture_output=True, text=True, env=env, check=True, timeout=300,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_same_seed_gives_bitwise_identical_parameters_run_to_run() -> None:
    first, second = _run(1), _run(1)
    assert first["hash"] == second["hash"]
    assert first["decisions"] == second["decisions"]


def test_decisions_do_not_depend_on_the_device_count() -> None:
    one, eight = _run(1), _run(8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    d1, d8 = np.asarray(one["decisions"]), np.asarray(eight["decisions"])
    assert d1[:, 0].sum() > 0  # the guard did backtrack: there were decisions to make
    np.testing.assert_array_equal(
        d1[:, 0], d8[:, 0]
    )  # the same backtracks, step by step
    np.testing.assert_allclose(d1[:, 1:], d8[:, 1:], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(one["params"], eight["params"], rtol=1e-4, atol=1e-6)
