"""Argument checks shared by every lyapopt factory and update function.

Checks run when a transformation is built, as in optax. Under
``optax.inject_hyperparams`` a factory is called again with traced arrays;
a traced value cannot be inspected, so it is checked only for its type and
passes on (it was checked, as a number, when the user first built it).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax


def _concrete_float(name: str, where: str, value: Any) -> float | None:
    """Returns ``value`` as a float, or None when it is traced."""
    if isinstance(value, bool):
        raise TypeError(
            f"{where}: `{name}` must be a real number, got the bool {value!r}."
        )
    if isinstance(value, jax.core.Tracer):
        if value.shape != ():
            raise TypeError(
                f"{where}: `{name}` must be a scalar, got an array of shape "
                f"{value.shape}."
            )
        return None
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        if np.shape(value) != ():
            raise TypeError(
                f"{where}: `{name}` must be a scalar, got an array of shape "
                f"{np.shape(value)}."
            )
        if not jnp.issubdtype(value.dtype, jnp.number) or jnp.issubdtype(
            value.dtype, jnp.complexfloating
        ):
            raise TypeError(
                f"{where}: `{name}` must be a real number, got an array of dtype "
                f"{value.dtype}."
            )
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"{where}: `{name}` must be a real number, got {value!r} of type "
        f"{type(value).__name__}."
    )


def check_number(
    where: str,
    name: str,
    value: Any,
    *,
    lower: float | None = None,
    lower_open: bool = False,
    upper: float | None = None,
    upper_open: bool = False,
    integer: bool = False,
    fix: str = "",
) -> None:
    """Raises TypeError/ValueError unless ``value`` is a number in range.

    The message names the function, the argument, the value and the fix.
    """
    v = _concrete_float(name, where, value)
    if v is None:
        return
    bounds = []
    if lower is not None:
        bounds.append(f"{'>' if lower_open else '>='} {lower:g}")
    if upper is not None:
        bounds.append(f"{'<' if upper_open else '<='} {upper:g}")
    kind = "an integer" if integer else "a finite number"
    wanted = kind + (" " + " and ".join(bounds) if bounds else "")
    bad = (
        not math.isfinite(v)
        or (integer and v != int(v))
        or (lower is not None and (v <= lower if lower_open else v < lower))
        or (upper is not None and (v >= upper if upper_open else v > upper))
    )
    if bad:
        raise ValueError(
            f"{where}: `{name}` must be {wanted}, got {value!r}."
            + (f" {fix}" if fix else "")
            + _low_precision_hint(value)
        )


def _low_precision_hint(value: Any) -> str:
    """The fix for a hyperparameter that low precision pushed out of range."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        return ""
    if jnp.finfo(dtype).bits >= 32:
        return ""
    return (
        f" The value is a {jnp.dtype(dtype).name} array: `optax.inject_hyperparams` "
        "stores hyperparameters in the parameters' dtype unless told otherwise, "
        "and in it 0.999 rounds to 1. Pass "
        "`optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32)`."
    )


def check_choice(where: str, name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raises ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{where}: `{name}` must be one of {shown}; got {value!r}.")


def require_params(where: str, params: optax.Params | None) -> None:
    """Raises ValueError when the update was called without ``params``."""
    if params is None:
        raise ValueError(
            f"{where} needs the current parameters: call "
            "`tx.update(grads, state, params, value_fn=...)` with `params`."
        )
    require_leaves(where, params)
    masked = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    if any(isinstance(x, optax.MaskedNode) for x in masked):
        raise ValueError(
            f"{where} is inside `optax.masked`, which hands it only part of the "
            "parameters, so `value_fn` cannot be evaluated. Choose the direction per "
            "leaf and stabilise the whole tree instead: `lyapopt.stabilize("
            "optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, "
            "labels))`."
        )


def require_value_fn(where: str, value_fn: Any) -> Callable[..., Any]:
    """Returns ``value_fn``; raises ValueError with the fix when it is missing."""
    if value_fn is None:
        raise ValueError(
            f"{where} needs the extra argument `value_fn`, the loss as a function "
            "of the parameters on the current batch: call `tx.update(grads, state, "
            "params, value=loss, value_fn=lambda p: loss_fn(p, batch))`. In a Flax "
            "script: `optimizer.update(model, grads, value=loss, "
            "value_fn=lyapopt.flax.nnx_value_fn(model, loss_fn, batch))` with NNX, "
            "or `lyapopt.flax.apply_gradients(state, grads=grads, value=loss, "
            "value_fn=...)` in place of Linen's `state.apply_gradients`."
        )
    if not callable(value_fn):
        raise TypeError(
            f"{where}: `value_fn` must be a callable params -> scalar loss, got "
            f"{type(value_fn).__name__}."
        )
    return value_fn


def require_leaves(where: str, params: optax.Params) -> None:
    """Raises ValueError when ``params`` has no array leaves to optimise."""
    if not jax.tree.leaves(params):
        raise ValueError(
            f"{where}: `params` has no leaves, so there is nothing to optimise and "
            "no loss to judge. Pass the tree of parameter arrays (e.g. "
            "`variables['params']`, or `nnx.state(model, nnx.Param)`)."
        )


def check_like_params(
    where: str, name: str, tree: optax.Params, params: optax.Params | None
) -> None:
    """Raises unless ``tree`` matches ``params`` leaf for leaf, in shape.

    Also refuses parameters that are not floating point, which no step can move.
    """
    t_def, p_def = jax.tree.structure(tree), jax.tree.structure(params)
    if t_def != p_def:
        raise ValueError(
            f"{where}: `{name}` and `params` must have the same tree structure; "
            f"got {t_def} and {p_def}. Pass a tree built from the same params, "
            "e.g. their gradients."
        )
    for t, p in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True):
        if jnp.shape(t) != jnp.shape(p):
            raise ValueError(
                f"{where}: a leaf of `{name}` has shape {jnp.shape(t)} where its "
                f"parameter has shape {jnp.shape(p)}; they must match."
            )
    for p in jax.tree.leaves(params):
        if not jnp.issubdtype(jnp.result_type(p), jnp.inexact):
            raise TypeError(
                f"{where}: `params` holds an array of dtype {jnp.result_type(p)}; "
                "a step can only move floating-point parameters. Cast it with "
                "`.astype(jnp.float32)` or keep it out of the optimised tree."
            )


def check_key(where: str, key: Any) -> None:
    """Raises TypeError unless ``key`` is a ``jax.random`` key."""
    is_typed = isinstance(key, jax.Array) and jnp.issubdtype(
        key.dtype, jax.dtypes.prng_key
    )
    is_raw = (
        isinstance(key, (jax.Array, np.ndarray))
        and key.dtype == jnp.uint32
        and key.shape == (2,)
    )
    if not (is_typed or is_raw):
        raise TypeError(
            f"{where}: `key` must be a jax.random key, got {key!r}. "
            "Pass e.g. `key=jax.random.key(0)`."
        )


def check_bool(where: str, name: str, value: Any) -> None:
    """Raises TypeError unless ``value`` is a Python bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{where}: `{name}` must be True or False, got {value!r}.")
