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

import functools
import json
import pathlib
import re
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lyapopt
from tests import digits

STEPS = 10
ROWS = 256  # 32 per device on 8 devices
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": lambda **kw: lyapopt.lyapunov_adam(1.0, **kw),
    "adam_every_3": lambda **kw: lyapopt.lyapunov_adam(1.0, curvature_every=3, **kw),
    "adam_rate_every_2": lambda **kw: lyapopt.lyapunov_adam(1.0, rate_every=2, **kw),
    "adam_spikes": lambda **kw: lyapopt.lyapunov_adam(
        1.0, spike_factor=1.5, spike_window=3, **kw
    ),
    "sgd": lambda **kw: lyapopt.lyapunov_sgd(**kw),
    "sgd_first_order": lambda **kw: lyapopt.lyapunov_sgd(
        0.5, safety=None, guard=None, **kw
    ),
    "stabilize_adamw": lambda **kw: lyapopt.stabilize(optax.adamw(0.1), **kw),
}
# FSDP-style: every weight sharded over both mesh axes, biases over one.
FSDP_SPECS = {
    "w1": P("data", "model"),
    "b1": P("model"),
    "w2": P(("data", "model"), None),
    "b2": P(),
}
AXIS_TYPES = {
    "explicit": (AxisType.Explicit, AxisType.Explicit),
    "auto": (AxisType.Auto, AxisType.Auto),
    "mixed": (AxisType.Explicit, AxisType.Auto),
}


def step(
    tx: optax.GradientTransformation,
    params: Any,
    state: Any,
    batch: Any,
    loss_fn: Callable = digits.loss_fn,
):
    """The README's step: the loss, its gradient and value_fn on ``batch``."""
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = tx.update(
        grads, state, params, value=loss, value_fn=lambda p: loss_fn(p, batch)
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


def fsdp_loss_fn(explicit: tuple[str, ...]) -> Callable:
    """:func:`digits.loss_fn` written for a mesh whose ``explicit`` axes are typed.

    Under explicit sharding the user's model says where its arrays go: the
    weights are gathered over "data" for the matmuls (FSDP), and the second
    matmul, contracting over the sharded hidden units, names its output.
    """

    def keep(spec: P) -> P:
        return P(*(a if a in explicit else None for a in spec))

    def loss_fn(params: dict, batch: Any) -> jax.Array:
        if not explicit:
            return digits.loss_fn(params, batch)
        x, y = batch
        w1 = jax.sharding.reshard(params["w1"], keep(P(None, "model")))
        w2 = jax.sharding.reshard(params["w2"], keep(P("model", None)))
        h = jnp.tanh(x @ w1 + params["b1"])
        logits = jnp.matmul(h, w2, out_sharding=keep(P("data", None))) + params["b2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss_fn


def fsdp_start(mesh: Any, tx: optax.GradientTransformation, loss_fn: Callable):
    """The step of ``loss_fn`` and its inputs on ``mesh`` (call it under it)."""
    params = {
        k: jax.device_put(v, NamedSharding(mesh, FSDP_SPECS[k]))
        for k, v in digits.init(jax.random.key(0)).items()
    }
    batch = jax.device_put(digits.batch(ROWS), NamedSharding(mesh, P("data")))
    state = jax.jit(tx.init)(params)
    return functools.partial(step, tx, loss_fn=loss_fn), params, state, batch


def fsdp(kind: str, name: str) -> tuple:
    """Batch over "data" (4) and every weight over "data" x "model" (4 x 2)."""
    types = AXIS_TYPES[kind]
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=types)
    explicit = tuple(
        a
        for a, t in zip(("data", "model"), types, strict=True)
        if t == AxisType.Explicit
    )
    tx = OPTIMIZERS[name]()
    with jax.set_mesh(mesh):
        fsdp_step, params, state, batch = fsdp_start(mesh, tx, fsdp_loss_fn(explicit))
        fsdp_step = jax.jit(fsdp_step)
        for _ in range(STEPS):
            params, state = fsdp_step(params, state, batch)

    def placed(x: jax.Array, k: str) -> bool:
        return x.sharding.is_equivalent_to(NamedSharding(mesh, FSDP_SPECS[k]), x.ndim)

    for k, v in params.items():  # the step kept every parameter where it was
        assert placed(v, k), (k, v.sharding)
    # The state is sharded like the parameters: no replicated copy. (Each
    # parameter of this model has a shape of its own.) A state leaf of
    # another shape (the loss reference's window of losses) is replicated.
    by_shape = {v.shape: k for k, v in params.items()}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if leaf.shape in by_shape:
            assert placed(leaf, by_shape[leaf.shape]), (path, leaf.sharding)
        else:
            assert leaf.sharding.is_fully_replicated, (path, leaf.sharding)
    return params, lyapopt.stats(state)


def pmapped(name: str) -> tuple:
    """``jax.pmap``: each device's own rows, gradients pmean'd by the user, a
    per-device ``value_fn``, and the optimizer told the axis name."""
    tx = OPTIMIZERS[name](axis_name="batch")

    def local_step(params: Any, state: Any, local_batch: Any) -> tuple:
        loss, grads = jax.value_and_grad(digits.loss_fn)(params, local_batch)
        grads = jax.lax.pmean(grads, "batch")
        updates, state = tx.update(
            grads,
            state,
            params,
            value=loss,
            value_fn=lambda p: digits.loss_fn(p, local_batch),
        )
        return optax.apply_updates(params, updates), state

    step = jax.pmap(local_step, axis_name="batch")
    params = digits.init(jax.random.key(0))
    n = jax.local_device_count()
    params, state = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (n, *a.shape)), (params, tx.init(params))
    )
    x, y = digits.batch(ROWS)
    batch = (x.reshape(n, -1, x.shape[-1]), y.reshape(n, -1))
    for _ in range(STEPS):
        params, state = step(params, state, batch)
    for leaf in jax.tree.leaves(params):  # every replica took the same step
        np.testing.assert_array_equal(leaf, jnp.broadcast_to(leaf[0], leaf.shape))
    return jax.tree.map(lambda a: a[0], params), lyapopt.stats(
        jax.tree.map(lambda a: a[0], state)
    )


RUNS = {
    "replicated/adam": lambda: replicated("adam"),
    "sharded_params/adam": lambda: sharded_params("adam"),
    "shard_map/adam": lambda: shard_mapped("adam"),
    "pmap/adam": lambda: pmapped("adam"),
    "pmap/sgd": lambda: pmapped("sgd"),
    "pmap/adam_rate_every_2": lambda: pmapped("adam_rate_every_2"),
    "shard_map/adam_rate_every_2": lambda: shard_mapped("adam_rate_every_2"),
    "pmap/adam_spikes": lambda: pmapped("adam_spikes"),
    "shard_map/adam_spikes": lambda: shard_mapped("adam_spikes"),
    **{
        f"explicit/{name}": functools.partial(fsdp, "explicit", name)
        for name in OPTIMIZERS
    },
    "auto/adam": lambda: fsdp("auto", "adam"),
    "auto/stabilize_adamw": lambda: fsdp("auto", "stabilize_adamw"),
    "mixed/adam": lambda: fsdp("mixed", "adam"),
    "mixed/sgd": lambda: fsdp("mixed", "sgd"),
}


_COLLECTIVE = re.compile(
    r"= (\S+|\([^)]*\)) "
    r"(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
    r"(?:-start)?\("
)


def collectives(tx: optax.GradientTransformation) -> list[list[str]]:
    """The collectives in the compiled explicit-FSDP step: ``[op, result type]``."""
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    with jax.set_mesh(mesh):
        fsdp_step, params, state, batch = fsdp_start(
            mesh, tx, fsdp_loss_fn(("data", "model"))
        )
        hlo = jax.jit(fsdp_step).lower(params, state, batch).compile().as_text()
    return [
        [op, re.sub(r"\{[^}]*\}", "", shape)] for shape, op in _COLLECTIVE.findall(hlo)
    ]


def main(out: str) -> None:
    jax.config.update("jax_default_matmul_precision", "highest")  # as conftest.py
    assert jax.device_count() == 8, jax.devices()
    arrays = {}
    for run, fn in RUNS.items():
        params, stats = fn()
        for k, v in {**params, **stats}.items():
            arrays[f"{run}/{k}"] = np.asarray(v)
    np.savez(out, **arrays)
    found = {
        "optax.adam": collectives(optax.adam(1e-2)),
        "lyapunov_adam": collectives(OPTIMIZERS["adam"]()),
        "lyapunov_sgd": collectives(OPTIMIZERS["sgd"]()),
    }
    pathlib.Path(out).with_suffix(".json").write_text(json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1])
