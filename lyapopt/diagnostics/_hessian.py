"""Diagnostics of the loss around the parameters: Hessian products and profiles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lyapopt import _line
from lyapopt._checks import check_key, check_like_params, check_number


def hvp(value_fn: Callable[[Any], jax.Array], params: Any, v: Any) -> Any:
    """The Hessian-vector product ``H(params) v`` by forward-over-reverse.

    ``jax.jvp(jax.grad(value_fn), (params,), (v,))``: about 2.7x a
    ``value_and_grad``, so lyapopt's step never calls it; it is for
    diagnostics such as :func:`sharpness`.

    Args:
      value_fn: the loss, params -> scalar.
      params: where to take the Hessian.
      v: a tree like ``params``.

    Returns:
      ``H v``, a tree like ``params``.
    """
    check_like_params("hvp", "v", v, params)
    return jax.jvp(jax.grad(value_fn), (params,), (v,))[1]


def sharpness(
    value_fn: Callable[[Any], jax.Array],
    params: Any,
    *,
    num_iters: int = 20,
    key: jax.Array,
) -> jax.Array:
    """The top eigenvalue of the Hessian, by power iteration on :func:`hvp`.

    Power iteration finds the eigenvalue of largest magnitude; near a minimum
    that is the sharpness ``lambda_max``. Gradient descent with learning rate
    ``eta`` is stable on the quadratic model only while
    ``eta * lambda_max < 2`` (the "edge of stability").

    Args:
      value_fn: the loss, params -> scalar.
      params: where to take the Hessian.
      num_iters: power iterations (>= 1), one HVP each.
      key: a ``jax.random`` key for the start vector.

    Returns:
      The Rayleigh quotient ``v.Hv / v.v`` of the last iterate, a scalar of
      the parameters' (at least float32) dtype.
    """
    check_number(
        "sharpness",
        "num_iters",
        num_iters,
        lower=1.0,
        integer=True,
        fix="Pass a number of power iterations such as 20.",
    )
    check_key("sharpness", key)
    dtype = _line.scalar_dtype(params)

    def normalised(v: Any) -> Any:
        norm = optax.tree.norm(optax.tree.cast(v, dtype))
        return jax.tree.map(lambda x: x / norm.astype(x.dtype), v)

    def rayleigh(v: Any) -> tuple[Any, jax.Array]:
        hv = hvp(value_fn, params, v)
        return hv, optax.tree.vdot(
            optax.tree.cast(v, dtype), optax.tree.cast(hv, dtype)
        )

    def body(_: int, v: Any) -> Any:
        return normalised(rayleigh(v)[0])

    v = normalised(optax.tree.random_like(key, params))
    v = jax.lax.fori_loop(0, num_iters - 1, body, v)
    return rayleigh(v)[1].astype(dtype)


def segment_profile(
    value_fn: Callable[[Any], jax.Array],
    a: Any,
    b: Any,
    num: int = 11,
) -> tuple[jax.Array, jax.Array]:
    """The loss along the segment from ``a`` to ``b``.

    Args:
      value_fn: the loss, params -> scalar.
      a: the start (e.g. the parameters before a step).
      b: the end (e.g. the parameters after it).
      num: points on the segment, ends included (>= 2).

    Returns:
      ``(t, values)``: ``t`` from 0 to 1 and ``value_fn((1 - t) a + t b)``.
    """
    check_number(
        "segment_profile",
        "num",
        num,
        lower=2.0,
        integer=True,
        fix="Pass the number of points, ends included, such as 11.",
    )
    check_like_params("segment_profile", "b", b, a)
    dtype = _line.scalar_dtype(a)
    ts = jnp.linspace(0.0, 1.0, num, dtype=dtype)

    def at(t: jax.Array) -> jax.Array:
        point = jax.tree.map(lambda x, y: (x + t * (y - x)).astype(x.dtype), a, b)
        return jnp.asarray(value_fn(point)).astype(dtype)

    return ts, jax.lax.map(at, ts)
