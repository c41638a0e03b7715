"""Diagnostics of the loss around the parameters: Hessian products and profiles."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import jax
import jax.numpy as jnp
import optax

from lyapopt import _line
from lyapopt._checks import check_key, check_like_params, check_number


def hvp(
    value_fn: Callable[[optax.Params], jax.Array],
    params: optax.Params,
    v: optax.Updates,
) -> optax.Updates:
    """The Hessian-vector product ``H(params) v`` by forward-over-reverse.

    ``jax.jvp(jax.grad(value_fn), (params,), (v,))``: several times the cost
    of a ``value_and_grad`` (:doc:`the benchmarks </benchmarks>` measure it), so
    lyapopt's step never calls it; it is for diagnostics such as
    :func:`sharpness`.

    Args:
      value_fn: the loss, params -> scalar.
      params: where to take the Hessian.
      v: a tree like ``params``.

    Returns:
      ``H v``, a tree like ``params``.

    References:
      Pearlmutter, "Fast Exact Multiplication by the Hessian", Neural
      Computation 6 (1994).

    Examples:
      The Hessian of ``x.Ax / 2`` is ``A`` (symmetric), so ``hvp`` gives ``A v``:

      >>> import jax.numpy as jnp
      >>> from lyapopt.diagnostics import hvp
      >>> A = jnp.array([[2.0, 1.0], [1.0, 3.0]])
      >>> f = lambda x: 0.5 * x @ A @ x
      >>> hvp(f, jnp.zeros(2), jnp.array([1.0, 0.0]))
      Array([2., 1.], dtype=float32)
    """
    check_like_params("hvp", "v", v, params)
    return jax.jvp(jax.grad(value_fn), (params,), (v,))[1]


def sharpness(
    value_fn: Callable[[optax.Params], jax.Array],
    params: optax.Params,
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

    References:
      Cohen, Kaur, Li, Kolter and Talwalkar, "Gradient Descent on Neural
      Networks Typically Occurs at the Edge of Stability", ICLR 2021.

    Examples:
      The Hessian of ``(x^2 + 4 y^2) / 2`` is ``diag(1, 4)``:

      >>> import jax, jax.numpy as jnp
      >>> from lyapopt.diagnostics import sharpness
      >>> f = lambda p: 0.5 * (p[0] ** 2 + 4 * p[1] ** 2)
      >>> round(float(sharpness(f, jnp.ones(2), key=jax.random.key(0))), 3)
      4.0
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

    def normalised(v: optax.Updates) -> optax.Updates:
        norm = optax.tree.norm(optax.tree.cast(v, dtype))
        return jax.tree.map(lambda x: x / norm.astype(x.dtype), v)

    def rayleigh(v: optax.Updates) -> tuple[optax.Updates, jax.Array]:
        hv = hvp(value_fn, params, v)
        vhv = optax.tree.vdot(optax.tree.cast(v, dtype), optax.tree.cast(hv, dtype))
        return hv, cast(jax.Array, vhv)

    def body(_: int, v: optax.Updates) -> optax.Updates:
        return normalised(rayleigh(v)[0])

    v = normalised(optax.tree.random_like(key, params))
    v = jax.lax.fori_loop(0, num_iters - 1, body, v)
    return rayleigh(v)[1].astype(dtype)


def segment_profile(
    value_fn: Callable[[optax.Params], jax.Array],
    a: optax.Params,
    b: optax.Params,
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

    References:
      Goodfellow, Vinyals and Saxe, "Qualitatively Characterizing Neural
      Network Optimization Problems", ICLR 2015.

    Examples:
      A step from -1 to 1 over ``f(x) = x^2`` passes the minimum at ``t = 0.5``:

      >>> import jax.numpy as jnp
      >>> from lyapopt.diagnostics import segment_profile
      >>> f = lambda x: jnp.sum(x**2)
      >>> t, values = segment_profile(f, jnp.array([-1.0]), jnp.array([1.0]), num=5)
      >>> t
      Array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
      >>> values
      Array([1.  , 0.25, 0.  , 0.25, 1.  ], dtype=float32)
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
