"""The loss along a proposed step: the few numbers every step-size rule needs.

For parameters ``theta`` and a proposed update ``u`` the line is
``phi(s) = V(theta + s u)``. Its value and first two derivatives at ``s = 0``
are ``V``, ``g.u`` and ``u.Hu``; forward-over-forward differentiation gives
all three in one call, without the full Hessian-vector product.

The derivatives are taken along the unit direction ``u / ||u||`` and the
norm is kept apart, so that an absurd learning rate (``||u|| = 1e20``) does
not overflow ``u.Hu``: every rule works with ``g.u / ||u||`` and
``u.Hu / ||u||^2`` and divides by ``||u||`` last.

The tree reductions here are written out leaf by leaf (a sum of elementwise
products) rather than with ``optax.tree.vdot``, which flattens and reshapes
its leaves and so fails under JAX's explicit sharding
("ShardingTypeError: This reshape is not supported").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

ValueFn = Callable[..., Any]

# The extra arguments that optax gives a meaning; every other one is meant
# for `value_fn` (as in optax.scale_by_backtracking_linesearch).
OPTAX_EXTRA_ARGS = ("value", "grad", "value_fn")


def real_dtype(dtype: Any) -> jnp.dtype:
    """The real dtype of ``dtype``: complex64 -> float32, complex128 -> float64."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.finfo(dtype).dtype
    return dtype


def scalar_dtype(tree: Any) -> jnp.dtype:
    """The dtype of the step-size arithmetic: the leaves' real dtype, at least float32.

    bfloat16 and float16 parameters get their curvature and guard scalars in
    float32; float64 (and complex128) parameters keep float64. Works on
    ``jax.ShapeDtypeStruct`` leaves, as ``jax.eval_shape`` passes them.
    """
    dtype = jnp.dtype(jnp.float32)
    for leaf in jax.tree.leaves(tree):
        leaf_dtype = real_dtype(getattr(leaf, "dtype", None) or jnp.result_type(leaf))
        if jnp.issubdtype(leaf_dtype, jnp.floating):
            dtype = jnp.promote_types(dtype, leaf_dtype)
    return dtype


def scalar(value: Any, dtype: Any) -> jax.Array:
    """A fresh scalar array: every state field gets its own buffer (donation)."""
    return jnp.full([], value, dtype)


def is_complex(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is complex."""
    return any(
        jnp.issubdtype(jnp.result_type(x), jnp.complexfloating)
        for x in jax.tree.leaves(tree)
    )


def tree_dot(a: Any, b: Any, dtype: Any) -> jax.Array:
    """``Re <a, b> = sum Re(conj(a) b)`` over the leaves, in ``dtype``."""

    def leaf(x: jax.Array, y: jax.Array) -> jax.Array:
        work = jnp.promote_types(jnp.result_type(x, y), dtype)
        return jnp.sum(jnp.real(jnp.conj(x.astype(work)) * y.astype(work)), dtype=dtype)

    return sum(jax.tree.leaves(jax.tree.map(leaf, a, b)), jnp.zeros([], dtype))


def tree_max_abs(tree: Any, dtype: Any) -> jax.Array:
    """``max |x|`` over the leaves, in ``dtype`` (NaN if any leaf holds one)."""
    maxima = [jnp.max(jnp.abs(x)).astype(dtype) for x in jax.tree.leaves(tree)]
    out = jnp.zeros([], dtype)
    for m in maxima:
        # jnp.maximum propagates NaN, as the test for a finite step needs.
        out = jnp.maximum(out, m)
    return out


def inverse(m: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(pre, inv)`` with ``x * pre * inv == x / m``, both normal numbers.

    XLA turns a division by a scalar into a product with its reciprocal, and
    ``1 / m`` is subnormal (flushed to zero on CPUs) for ``m > 2^126``; the
    exact power of two ``pre`` keeps it normal. 0 when ``m`` is 0 or not
    finite.
    """
    ok = jnp.isfinite(m) & (m > 0)
    pre = jnp.where(m > 2.0**64, 2.0**-64, 1.0).astype(m.dtype)
    inv = jnp.where(ok, 1 / jnp.where(ok, m * pre, 1), 0)
    return pre, inv


def times(x: jax.Array, pre: jax.Array, inv: jax.Array) -> jax.Array:
    return (x * pre.astype(x.dtype)) * inv.astype(x.dtype)


def power_of_two(m: jax.Array) -> jax.Array:
    """``2^-e`` with ``m = f 2^e``, ``1/2 <= f < 1``: ``m`` times it is exact and
    near 1.

    The exponent is clipped to normal numbers: for ``m`` near the largest
    float ``m 2^-e`` may reach 4, and for a subnormal ``m`` (whose norm is
    flushed to zero on CPUs anyway) it stays below 1. 1 when ``m`` is 0 or
    not finite.
    """
    info = jnp.finfo(m.dtype)
    _, e = jnp.frexp(jnp.where(jnp.isfinite(m), m, 0))
    k = jnp.clip(-e, int(info.minexp), int(info.maxexp) - 1)
    return jnp.ldexp(jnp.ones([], m.dtype), k)


def tree_norm(tree: Any, dtype: Any) -> jax.Array:
    """The global L2 norm, without overflow or underflow.

    One pass, ``sqrt(sum |x|^2)``, when that sum is a normal number; only
    when it overflows, underflows or is not finite, a second, scaled pass:
    ``||c x|| / c`` with ``c`` the power of two that brings ``m = max |x|``
    near 1 (exact scaling, one scalar: XLA:CPU materialises every scalar
    that a fused reduction multiplies by as a leaf-sized array). NaN when a
    leaf holds a NaN or an Inf.
    """
    squares = tree_dot(tree, tree, dtype)
    info = jnp.finfo(dtype)
    plain = jnp.isfinite(squares) & (squares >= jnp.sqrt(info.tiny))

    def scaled() -> jax.Array:
        m = tree_max_abs(tree, dtype)
        c = power_of_two(m)

        def times_c(x: jax.Array) -> jax.Array:
            work = jnp.promote_types(x.dtype, dtype)
            return x.astype(work) * c.astype(work)

        unit = jax.tree.map(times_c, tree)
        norm = jnp.sqrt(tree_dot(unit, unit, dtype)) / c
        return jnp.where(jnp.isfinite(m), norm, jnp.nan)

    return lax.cond(plain, lambda: jnp.sqrt(squares), scaled)


def value_fn_kwargs(value_fn: ValueFn, extra_args: Mapping[str, Any]) -> dict:
    """The extra arguments meant for ``value_fn``: those its signature names.

    The rule of ``optax.scale_by_backtracking_linesearch``, so code written
    for it works unchanged: ``tx.update(..., value_fn=f, batch=b)`` calls
    ``f(params, batch=b)``. The other extra arguments are ignored.
    """
    extra = {k: v for k, v in extra_args.items() if k not in OPTAX_EXTRA_ARGS}
    if not extra:
        return {}
    try:
        names = inspect.signature(value_fn).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return {}
    return {k: v for k, v in extra.items() if k in names}


def across(x: jax.Array, axis_name: Any) -> jax.Array:
    """``x`` averaged over the mapped axis ``axis_name`` (itself when ``None``)."""
    return x if axis_name is None else lax.pmean(x, axis_name)


def bind(
    value_fn: ValueFn, extra_args: Mapping[str, Any], axis_name: Any = None
) -> ValueFn:
    """``value_fn`` as a function of the params alone: its extra arguments
    bound, and its loss averaged over ``axis_name`` when given (every
    derivative of it then is too: ``pmean`` is linear)."""
    kwargs = value_fn_kwargs(value_fn, extra_args)
    if not kwargs and axis_name is None:
        return value_fn
    return lambda params: across(value_fn(params, **kwargs), axis_name)


def loss_scalar(where: str, v: Any, dtype: Any, name: str = "value_fn") -> jax.Array:
    """Checks a loss and returns it in ``dtype`` or the loss's own wider dtype.

    A float64 loss on float32 parameters keeps float64: rounding it to the
    parameters' precision could hide a real rise.
    """
    what = "`value_fn` returned" if name == "value_fn" else f"`{name}` is"
    if isinstance(v, (tuple, list, dict)):
        raise TypeError(
            f"{where}: {what} a {type(v).__name__}, not a scalar loss. For a loss "
            "with auxiliary outputs (`has_aux`), pass only the loss: "
            "`value_fn=lambda p: loss_fn(p, batch)[0]`, `value=loss` (not "
            "`(loss, aux)`); with Flax NNX use `lyapopt.flax.nnx_value_fn(..., "
            "has_aux=True)`."
        )
    v = jnp.asarray(v)
    if v.shape != ():
        raise ValueError(
            f"{where}: {what} an array of shape {v.shape}, not a scalar loss. "
            "Reduce it to one number, e.g. with `.mean()`."
        )
    if not jnp.issubdtype(v.dtype, jnp.floating):
        raise TypeError(
            f"{where}: {what} a loss of dtype {v.dtype}; it must be a real "
            "floating-point scalar. Compute the loss in floating point (e.g. "
            "`.astype(jnp.float32)`): a step cannot be judged on an integer or "
            "complex loss."
        )
    return v.astype(jnp.promote_types(dtype, v.dtype))


def value(where: str, value_fn: ValueFn, params: Any, dtype: Any) -> jax.Array:
    """``V(params)``, checked, in at least ``dtype``."""
    return loss_scalar(where, value_fn(params), dtype)


def _promoted(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree
    )


class Direction(NamedTuple):
    """A proposed update as its norm and its unit direction."""

    norm: jax.Array  # ||u||, NaN or Inf when u holds a NaN or an Inf
    # u / ||u|| in at least float32, zero when ||u|| is 0 or not finite; or
    # (`prescaled`) the tree handed on, of norm `length`
    unit: Any
    finite: jax.Array  # whether ||u|| is finite
    length: Any = 1.0  # ||unit||


def direction(updates: Any, dtype: Any) -> Direction:
    """Splits ``updates`` into its norm and its unit direction (no overflow)."""
    norm = tree_norm(updates, dtype)
    finite = jnp.isfinite(norm)
    pre, inv = inverse(norm)
    unit = jax.tree.map(
        lambda u: times(jnp.where(finite, u, 0), pre, inv), _promoted(updates)
    )
    return Direction(norm, unit, finite)


def prescaled(updates: Any, factors: tuple[jax.Array, ...], dtype: Any) -> Direction:
    """The direction of ``scaled(updates, factors)``, with ``updates`` as its tangent.

    For ``updates`` whose largest entry lies in ``[2^-24, 2^24]``
    (``stabilize`` scales a proposal outside that range by a power of two,
    and hands the inverse on as the first factor): derivatives along them
    overflow nothing, and no tree ``u / ||u||`` is made beside them. Zero
    derivatives where the step is zero (a factor of 0: a gradient that was
    not finite).
    """
    length = tree_norm(updates, dtype)
    norm = times_factors(length, factors)
    zero = norm == 0
    return Direction(
        norm, _promoted(updates), jnp.isfinite(norm), jnp.where(zero, jnp.inf, length)
    )


def _per_length(x: jax.Array, d: Direction) -> jax.Array:
    """``x`` (a derivative along ``d.unit``) per unit of its length; 0 for a zero step."""
    if isinstance(d.length, float):
        return x
    return jnp.where(jnp.isinf(d.length), 0, x / d.length.astype(x.dtype))


def unit_slope(
    where: str, value_fn: ValueFn, params: Any, d: Direction, dtype: Any
) -> jax.Array:
    """``g.u / ||u||``: one forward-mode pass along the unit direction."""
    _, slope = jax.jvp(
        lambda p: value(where, value_fn, p, dtype), (_promoted(params),), (d.unit,)
    )
    return _per_length(slope, d)


def unit_grad_slope(grad: Any, d: Direction, dtype: Any) -> jax.Array:
    """``g.u / ||u||`` as a dot product with a given gradient: no pass over data."""
    return _per_length(tree_dot(grad, d.unit, dtype), d)


def slope(
    where: str,
    value_fn: ValueFn | None,
    params: Any,
    d: Direction,
    dtype: Any,
    grad: Any = None,
    axis_name: Any = None,
) -> jax.Array:
    """``g.u / ||u||`` from ``grad`` when given, else by a forward-mode pass.

    With ``axis_name``, the dot product is averaged over that axis like the
    loss (``value_fn`` is bound with it), so replicas agree even when each
    holds its own gradient.

    Complex parameters always take the forward-mode pass: what a complex
    "gradient" means depends on a convention (JAX's ``grad`` or its
    conjugate, which optax's tests pass), and the pass needs none.
    """
    if grad is not None and (value_fn is None or not is_complex(params)):
        return across(unit_grad_slope(grad, d, dtype), axis_name)
    if value_fn is None:
        raise ValueError(f"{where} needs `grad` or `value_fn` to compute g.u.")
    return unit_slope(where, value_fn, params, d, dtype)


def unit_derivatives(
    where: str, value_fn: ValueFn, params: Any, d: Direction, dtype: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(V, g.u / ||u||, u.Hu / ||u||^2)`` by forward-over-forward differentiation.

    A ``jax.jvp`` of a ``jax.jvp``, both along the unit direction: the inner
    one gives the slope, the outer one its derivative, the curvature, and
    the primal is ``V`` itself. Low-precision parameters are promoted to
    float32 for this evaluation, so the second derivative is not lost to
    bfloat16 rounding; ``V`` is then NaN, since the loss of the promoted
    parameters is not the loss of the stored ones.

    Returns:
      ``(V, g.u / ||u||, u.Hu / ||u||^2)``.
    """

    def v_and_slope(p: Any) -> tuple[jax.Array, jax.Array]:
        return jax.jvp(lambda q: value(where, value_fn, q, dtype), (p,), (d.unit,))

    (v, gu), (_, uhu) = jax.jvp(v_and_slope, (_promoted(params),), (d.unit,))
    gu, uhu = _per_length(gu, d), _per_length(_per_length(uhu, d), d)
    promoted = any(
        jnp.promote_types(x.dtype, jnp.float32) != x.dtype
        for x in jax.tree.leaves(params)
    )
    return (jnp.full_like(v, jnp.nan) if promoted else v), gu, uhu


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


def step_norm(updates: Any, factors: tuple[jax.Array, ...], dtype: Any) -> jax.Array:
    """``||scaled(updates, factors)||`` as ``||updates||`` times the factors.

    No pass over the scaled step: a fused reduction of it would hold it, or
    (XLA:CPU) a leaf-sized copy of each factor. 0 where a factor is not
    positive, as the scaled step is.
    """
    return times_factors(tree_norm(updates, dtype), factors)


def times_factors(norm: jax.Array, factors: tuple[jax.Array, ...]) -> jax.Array:
    """``norm`` (of a tree) times ``factors``: 0 where a factor is not positive."""
    for factor in factors:
        norm = jnp.where(factor > 0, norm * factor.astype(norm.dtype), 0)
    return norm


def slope_over_norm(
    gu: jax.Array, norm: jax.Array, measure: Callable[[], jax.Array]
) -> jax.Array:
    """``g.u / ||u||`` from a given ``g.u``, or ``measure()`` where that is out of range.

    Where ``g.u`` overflowed (an absurd rate) or underflowed (a converged
    step), ``measure`` (a forward-mode pass along ``u / ||u||``) gives it
    instead; a NaN stays NaN, as the dot product with a NaN gradient is.
    """
    normal = jnp.abs(gu) >= jnp.finfo(gu.dtype).tiny
    return lax.cond(
        jnp.isnan(gu) | (normal & jnp.isfinite(gu)),
        lambda: times(gu, *inverse(norm.astype(gu.dtype))),
        measure,
    )


def scaled(updates: Any, factors: tuple[jax.Array, ...]) -> Any:
    """``updates`` through ``scale_updates`` by each of ``factors`` in turn.

    The caps' factors applied lazily: a caller that recomputes this where it
    is consumed (a loss evaluation, the final step) never holds the scaled
    tree beside ``updates``.
    """
    for factor in factors:
        updates = scale_updates(updates, factor)
    return updates


def scaled_by(updates: Any, factors: tuple[jax.Array, ...], scale: jax.Array) -> Any:
    """``scale_updates(scaled(updates, factors), scale)``, the same numbers, with
    each factor tied to ``scale``.

    The factors enter as ``where(scale > 0, factor, 0)``: the same where the
    step is taken, and a product that changes with ``scale``, so XLA has
    nothing to hoist out of a backtracking loop over ``scale`` (a hoisted
    capped step would be a second tree beside the proposal). The order of
    the products is kept, ``scale`` (a power of two) last: the step, the
    loss judged at it and the parameters stored from it agree to the bit,
    whether or not XLA contracts ``params + step`` into fused multiply-adds.
    """
    tied = tuple(jnp.where(scale > 0, f, jnp.zeros_like(f)) for f in factors)
    return scale_updates(scaled(updates, tied), scale)


def _stored(x: jax.Array) -> jax.Array:
    """``x`` rounded to its own dtype, as it will be stored.

    XLA may keep a bfloat16 sum in float32 ("excess precision") until it is
    written; ``lax.reduce_precision`` forces the rounding, so the loss is
    judged at the parameters the user will hold.
    """
    dtype = jnp.dtype(x.dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        info = jnp.finfo(dtype)
        return lax.reduce_precision(
            x, exponent_bits=info.nexp, mantissa_bits=info.nmant
        )
    return x


def moved(params: Any, updates: Any, scale: jax.Array | None = None) -> Any:
    """``params + scale * updates`` (``params + updates`` without ``scale``),
    rounded as ``optax.apply_updates`` stores it."""
    if scale is not None:
        updates = scale_updates(updates, scale)
    return jax.tree.map(_stored, optax.apply_updates(params, updates))


def _exact_step(trial: jax.Array, param: jax.Array, like: jax.Array) -> jax.Array:
    """The update of ``like``'s dtype that takes ``param`` to ``trial`` to the bit.

    ``trial - param``, then, where ``optax.apply_updates`` would not round
    ``param`` plus it back to ``trial`` (at a power of two, where the
    spacing of floats changes), its neighbour on the side of ``trial``.
    Protected by ``tests/test_guard.py::
    test_the_update_returned_lands_on_the_parameters_judged_to_the_bit``,
    which also checks that the plain difference misses somewhere.
    """
    dtype = jnp.dtype(like.dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        return (trial - param).astype(dtype)
    work = jnp.promote_types(param.dtype, dtype)
    step = (trial.astype(work) - param.astype(work)).astype(dtype)
    back = moved(param, step)

    def mend(d: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
        far = jnp.asarray(jnp.inf, d.dtype)
        toward = jnp.nextafter(d, jnp.where(b < t, far, -far))
        return jnp.where(b == t, d, toward)

    if jnp.issubdtype(dtype, jnp.complexfloating):
        real = mend(step.real, back.real, trial.real)
        imag = mend(step.imag, back.imag, trial.imag)
        return lax.complex(real, imag)
    return mend(step, back, trial)


def difference(trial: Any, params: Any, like: Any) -> Any:
    """The update (dtypes of ``like``) with ``moved(params, it) == trial``, leaf
    by leaf, to the bit."""
    return jax.tree.map(_exact_step, trial, params, like)


def halfway(params: Any, trial: Any) -> Any:
    """The parameters half the step from ``params`` to ``trial``, as stored."""
    step = difference(trial, params, trial)
    return moved(params, jax.tree.map(lambda d: d / 2, step))
