"""Peak memory of one training step, from XLA's compiled memory analysis.

    python -m benchmarks.memory            # the table in RESULTS.md
    python -m benchmarks.memory --sizes 1e6
    python -m benchmarks.memory --phases   # where the stabilised step's extra goes

Nothing is allocated: the parameters are ``jax.ShapeDtypeStruct``s, the
optimizer state comes from ``jax.eval_shape(tx.init, ...)``, and the step
(``value_and_grad``, ``tx.update``, ``optax.apply_updates``) is jitted with
the parameters and the state donated, then lowered and compiled. The peak is
``arguments + outputs + temporaries - aliased`` bytes of
``compiled.memory_analysis()``; "extra buffers" is the peak's excess over
the wrapped optimizer's step, in parameter-sized buffers.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import lyapopt

DEPTH, INPUTS, CLASSES, ROWS = 4, 64, 10, 32

# name -> (factory, the optax peer it wraps)
OPTIMIZERS: dict[str, tuple[Callable[[], optax.GradientTransformation], str]] = {
    "optax.sgd": (lambda: optax.sgd(1e-2), "optax.sgd"),
    "optax.adam": (lambda: optax.adam(1e-3), "optax.adam"),
    "lyapunov_sgd first-order": (
        lambda: lyapopt.lyapunov_sgd(safety=None, guard=None),
        "optax.sgd",
    ),
    "lyapunov_adam": (lambda: lyapopt.lyapunov_adam(), "optax.adam"),
    "lyapunov_adam every 10": (
        lambda: lyapopt.lyapunov_adam(curvature_every=10),
        "optax.adam",
    ),
    "stabilize(optax.adamw)": (
        lambda: lyapopt.stabilize(optax.adamw(1e-3)),
        "optax.adam",
    ),
    "lyapunov_adam spike_factor": (
        lambda: lyapopt.lyapunov_adam(spike_factor=1.5),
        "optax.adam",
    ),
    "lyapunov_adam rate-free": (
        lambda: lyapopt.lyapunov_adam(rate_every=1, rate_until=100),
        "optax.adam",
    ),
}


def width_for(size: float) -> int:
    """The hidden width whose MLP (64-w-w-w-w-10) has about ``size`` parameters."""
    a, b = DEPTH - 1, INPUTS + CLASSES + DEPTH
    return int((-b + math.sqrt(b * b + 4 * a * size)) / (2 * a))


def mlp_shapes(width: int) -> list[dict[str, jax.ShapeDtypeStruct]]:
    sizes = [INPUTS] + [width] * DEPTH + [CLASSES]
    return [
        {
            "w": jax.ShapeDtypeStruct((m, n), jnp.float32),
            "b": jax.ShapeDtypeStruct((n,), jnp.float32),
        }
        for m, n in itertools.pairwise(sizes)
    ]


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    logits = x @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


Update = Callable[..., tuple[Any, Any]]  # (grads, state, params, value, value_fn)


def compiled_step(
    tx: optax.GradientTransformation,
    params: Any,
    update: Update | None = None,
    *,
    loss: Callable[[Any, jax.Array, jax.Array], jax.Array] = loss_fn,
    batch: tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct] | None = None,
    extras: tuple[str, ...] = ("value", "value_fn"),
    compiler_options: dict[str, Any] | None = None,
) -> Any:
    """The donated, jitted training step, compiled for ``params``' shapes.

    ``step(params, state, x, y) -> (params, state, loss)`` minimises
    ``loss(params, x, y)`` on a ``batch`` of the given shapes (default: the
    MLP's); the compiled step can be called on arrays of those shapes.
    ``tx.update`` receives the extra arguments named in ``extras``, of
    ``value``, ``value_fn`` and ``grad``. ``update`` replaces it (called as
    ``update(grads, state, params, value, value_fn)``) to measure a piece
    of a step. ``compiler_options`` go to XLA (``Lowered.compile``).
    """

    def default(g: Any, s: Any, p: Any, value: Any, value_fn: Any) -> tuple:
        offered = {"value": value, "value_fn": value_fn, "grad": g}
        return tx.update(g, s, p, **{k: offered[k] for k in extras})

    update = update or default

    def step(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple:
        value, grads = jax.value_and_grad(loss)(p, x, y)
        updates, s = update(grads, s, p, value, lambda q: loss(q, x, y))
        return optax.apply_updates(p, updates), s, value

    state = jax.eval_shape(tx.init, params)
    x, y = batch or (
        jax.ShapeDtypeStruct((ROWS, INPUTS), jnp.float32),
        jax.ShapeDtypeStruct((ROWS,), jnp.int32),
    )
    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, x, y)
    return lowered.compile(compiler_options)


def peak_bytes(compiled: Any) -> int:
    m = compiled.memory_analysis()
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def measure(size: float) -> list[dict[str, Any]]:
    params = mlp_shapes(width_for(size))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    param_bytes = 4 * count
    rows, peaks = [], {}
    for name, (factory, _) in OPTIMIZERS.items():
        start = time.perf_counter()
        compiled = compiled_step(factory(), params)
        seconds = time.perf_counter() - start
        peaks[name] = peak_bytes(compiled)
        rows.append({"name": name, "params": count, "seconds": seconds})
    for row in rows:
        peer = OPTIMIZERS[row["name"]][1]
        row["peak"] = peaks[row["name"]]
        row["ratio_to_adam"] = peaks[row["name"]] / peaks["optax.adam"]
        row["extra_buffers"] = (peaks[row["name"]] - peaks[peer]) / param_bytes
        row["peer"] = peer
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| parameters | optimizer | peak MiB | ratio to optax.adam "
        "| extra parameter-sized buffers (vs peer) | compile s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['params'] / 1e6:.1f}M | {r['name']} | {r['peak'] / 2**20:,.1f} "
            f"| {r['ratio_to_adam']:.2f} | {r['extra_buffers']:+.2f} ({r['peer']}) "
            f"| {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def _with_slope(tx: optax.GradientTransformation) -> Update:
    """``tx``'s step scaled by ``g.u``: the gradient and the update must both
    be whole for that dot product."""

    def update(g: Any, s: Any, p: Any, value: Any, value_fn: Any) -> tuple:
        u, s = tx.update(g, s, p)
        slope = optax.tree.vdot(g, u)
        return jax.tree.map(lambda leaf: leaf * slope, u), s

    return update


def _where_finite(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optax.apply_if_finite`` without its ``lax.cond``: ``tx``'s step is
    taken, then dropped by ``jnp.where`` where the gradient is not finite."""

    def update(g: Any, s: Any, p: Any = None, **extra_args: Any) -> tuple:
        finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(g)])
        )
        u, new = tx.update(g, s, p)
        u = jax.tree.map(lambda leaf: jnp.where(finite, leaf, 0), u)
        return u, jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, s)

    return optax.GradientTransformationExtraArgs(tx.init, update)


def phases(size: float = 1e6) -> str:
    """Where a stabilised Adam step's extra buffers come from: its pieces
    added one at a time, each compiled as a donated step (temporaries and
    peak in parameter-sized buffers; extra = peak over ``optax.adam``'s)."""
    params = mlp_shapes(width_for(size))
    param_bytes = 4 * sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    adam = optax.adam(1e-3)
    finite = optax.apply_if_finite(adam, max_consecutive_errors=2**31 - 1)
    pieces: dict[str, tuple[optax.GradientTransformation, Update | None]] = {
        "optax.adam": (adam, None),
        "optax.adam, then g.u": (adam, _with_slope(adam)),
        "optax.apply_if_finite(optax.adam)": (finite, None),
        "apply_if_finite(adam), then g.u": (finite, _with_slope(finite)),
        "adam dropped by jnp.where, not lax.cond": (_where_finite(adam), None),
        "stabilize(adam): no cap, no guard": (
            lyapopt.stabilize(adam, safety=None, guard=None),
            None,
        ),
        "stabilize(adam): guard alone": (lyapopt.stabilize(adam, safety=None), None),
        "stabilize(adam): cap alone": (lyapopt.stabilize(adam, guard=None), None),
        "stabilize(adam)": (lyapopt.stabilize(adam), None),
    }
    lines = [
        "| step | temporaries | peak | extra vs optax.adam |",
        "|---|---:|---:|---:|",
    ]
    base = None
    for name, (tx, update) in pieces.items():
        compiled = compiled_step(tx, params, update)
        temp = compiled.memory_analysis().temp_size_in_bytes / param_bytes
        peak = peak_bytes(compiled) / param_bytes
        base = peak if base is None else base
        lines.append(f"| {name} | {temp:.2f} | {peak:.2f} | {peak - base:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    parser.add_argument(
        "--phases", action="store_true", help="the pieces of a stabilised step, 1M"
    )
    args = parser.parse_args(argv)
    if args.phases:
        out = phases()
    else:
        out = table([row for size in args.sizes for row in measure(size)])
    print(out)
    return out


if __name__ == "__main__":
    main()
