"""Targets and steps shared by the test files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parent.parent


def parabola(dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array, Callable]:
    """``sum((x - x*)^2)`` from (-1, 10, 1); minimum at x* = (1, -1, 1)."""
    target = jnp.array([1.0, -1.0, 1.0], dtype)
    return (
        jnp.array([-1.0, 10.0, 1.0], dtype),
        target,
        lambda p: jnp.sum((p - target) ** 2),
    )


def rosenbrock(dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array, Callable]:
    """Rosenbrock's valley from (0, 0); minimum 0 at (1, 1)."""

    def f(p: jax.Array) -> jax.Array:
        return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2

    return jnp.zeros(2, dtype), jnp.ones(2, dtype), f


def quadratic(eigenvalues: Any, dtype: Any = jnp.float32) -> Callable:
    """``1/2 x.Ax`` with ``A = diag(eigenvalues)``."""
    a = jnp.asarray(eigenvalues, dtype)
    return lambda x: 0.5 * jnp.sum(a * x * x)


def make_step(
    tx: optax.GradientTransformation, loss_fn: Callable, **extra: Any
) -> Callable:
    """An optax-style step: value_and_grad, update with value and value_fn, apply."""

    def step(params: Any, state: Any) -> tuple[Any, Any, jax.Array]:
        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(
            grads, state, params, value=value, value_fn=loss_fn, **extra
        )
        return optax.apply_updates(params, updates), state, value

    return step


def run(
    tx: optax.GradientTransformation, loss_fn: Callable, params: Any, steps: int
) -> tuple[Any, Any, jax.Array]:
    """``steps`` jitted steps in a ``lax.scan``; returns params, state, losses."""
    step = make_step(tx, loss_fn)

    def body(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], jax.Array]:
        p, s, v = step(*carry)
        return (p, s), v

    @jax.jit
    def scan(p: Any, s: Any) -> tuple[tuple[Any, Any], jax.Array]:
        return jax.lax.scan(body, (p, s), length=steps)

    (params, state), losses = scan(params, tx.init(params))
    return params, state, losses


def run_on_devices(module: str, out: Path, devices: int) -> dict[str, np.ndarray]:
    """``python -m module OUT`` in a process with ``devices`` CPU devices.

    JAX fixes the number of CPU devices when it starts, so multi-device runs
    need their own process. Returns the arrays the module saved to ``OUT``.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        **os.environ,
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-m", module, str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))
