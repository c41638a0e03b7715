"""The loss along a proposed step: the few numbers every step-size rule needs.

For parameters ``theta`` and a proposed update ``u`` the line is
``phi(s) = V(theta + s u)``. Its value and first two derivatives at ``s = 0``
are ``V``, ``g.u`` and ``u.Hu``; forward-over-forward differentiation gives
all three in one call, without the full Hessian-vector product.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

ValueFn = Callable[[Any], jax.Array]


def scalar_dtype(tree: Any) -> jnp.dtype:
    """The dtype of the step-size arithmetic: at least float32.

    bfloat16 and float16 parameters get their curvature and guard scalars in
    float32; float64 parameters (with x64 enabled) keep float64.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.dtype(jnp.float32)
    highest = optax.tree.dtype(tree, "highest")
    if not jnp.issubdtype(highest, jnp.floating):
        highest = jnp.float32
    return jnp.promote_types(highest, jnp.float32)


def _as_scalar(where: str, v: Any, dtype: jnp.dtype) -> jax.Array:
    v = jnp.asarray(v)
    if v.shape != ():
        raise ValueError(
            f"{where}: `value_fn` must return a scalar loss, got shape {v.shape}. "
            "Reduce it (e.g. with `.mean()`) or drop the auxiliary outputs."
        )
    return v.astype(dtype)


def _promoted(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree
    )


def value(where: str, value_fn: ValueFn, params: Any, dtype: jnp.dtype) -> jax.Array:
    """``V(params)`` as a scalar of ``dtype``."""
    return _as_scalar(where, value_fn(params), dtype)


def slope(
    where: str, value_fn: ValueFn, params: Any, updates: Any, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array]:
    """``(V, g.u)``: one forward-mode pass along ``updates``."""
    base, direction = _promoted(params), _promoted(updates)
    v, gu = jax.jvp(
        lambda p: _as_scalar(where, value_fn(p), dtype), (base,), (direction,)
    )
    return v, gu


def grad_slope(grad: Any, updates: Any, dtype: jnp.dtype) -> jax.Array:
    """``g.u`` as a dot product with a given gradient ``g``: no pass over data."""
    return optax.tree.vdot(
        optax.tree.cast(grad, dtype), optax.tree.cast(updates, dtype)
    ).astype(dtype)


def line_derivatives(
    where: str, value_fn: ValueFn, params: Any, updates: Any, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(V, g.u, u.Hu)`` by forward-over-forward differentiation along ``u``.

    A ``jax.jvp`` of a ``jax.jvp``, both in the direction ``u``: the inner one
    gives ``g.u``, the outer one its derivative ``u.Hu``. The primal is
    evaluated at ``params`` itself, so under one ``jax.jit`` with the user's
    ``value_and_grad`` XLA computes the forward pass once for both.
    Low-precision parameters are promoted to float32 for this evaluation, so
    the second derivative is not lost to bfloat16 rounding.
    """
    base, direction = _promoted(params), _promoted(updates)

    def v_and_slope(p: Any) -> tuple[jax.Array, jax.Array]:
        return jax.jvp(
            lambda q: _as_scalar(where, value_fn(q), dtype), (p,), (direction,)
        )

    (v, gu), (_, uhu) = jax.jvp(v_and_slope, (base,), (direction,))
    return v, gu, uhu


def scale_updates(updates: Any, scale: jax.Array) -> Any:
    """``scale * updates``, exactly zero where ``scale == 0``.

    ``jnp.where`` rather than a product, so that a rejected step that held a
    NaN or an Inf becomes zero, not NaN.
    """
    take = scale > 0
    return jax.tree.map(
        lambda u: jnp.where(take, u * scale.astype(u.dtype), jnp.zeros_like(u)),
        updates,
    )
