"""The stage protocol: how a step-size or acceptance rule takes part in a step.

A *stage* decides how much of a proposed step to take (a cap: the
curvature cap, the level cap) or whether to take it (the guard). Every
stage has the same interface, :class:`Stage`: it receives the proposed
step as a :class:`LineInfo`, one typed record of what is known about the
loss along it, with the :class:`Problem` it is solved on, and returns the
record updated and its own state. :func:`lyapopt.stabilize` runs its
stages in a loop over that interface; :func:`transform` makes a stage an
optax transform of its own (:func:`lyapopt.scale_by_curvature`,
:func:`lyapopt.scale_by_level`, :func:`lyapopt.lyapunov_guard`).

The split follows optimistix (``_search.py``): a search's ``step`` returns
``(step_size, accept, result, state)`` from a ``FunctionInfo`` record, and
``g.u`` is computed in one place. Here:

- a cap appends its factor to ``LineInfo.factors`` (:meth:`LineInfo.capped`):
  the capped step stays lazy, ``scaled(updates, factors)``, computed where
  it is consumed, so it is never a second tree beside the proposal;
- the guard returns the step it accepted as ``LineInfo.updates`` with no
  factors left;
- ``g.u`` comes from :func:`grad_dot`: the known slope, else a dot product
  with the gradient, else a forward-mode pass;
- the checks every update starts with, the binding of ``value_fn`` to its
  extra arguments and the refusal of a loss that differs between replicas
  are :func:`start`.

Adding a stage: write its state, a class with ``where``, ``needs_value_fn``,
``init`` and ``step``, a factory that validates its options and returns
``transform(stage)``, and add it to :func:`lyapopt._stabilize.stages`
(``docs/development.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax
from jax.extend import core as jex_core

from lyapopt import _line
from lyapopt._checks import check_like_params, require_params, require_value_fn


class LineInfo(NamedTuple):
    """What is known about the loss ``V`` along the proposed step.

    The step is ``scaled(updates, factors)``: the caps' factors are applied
    where the step is consumed, never held as a tree of their own.

    Attributes:
      updates: the proposal (the wrapped optimizer's update).
      factors: the caps' factors so far, in order; a factor of 0 is no step.
      prescaled: (static) ``updates``' largest entry lies in
        ``[2^-24, 2^24]`` (``stabilize`` scales a proposal outside that
        range by a power of two and puts the inverse first in ``factors``),
        so derivatives along ``updates`` itself overflow nothing.
      grad: the gradient of ``value_fn``'s loss, where it is at hand.
      slope: ``g.u`` along the step, factors applied, where it is known.
      value: ``V(theta)``, where a stage measured it (with ``value_known``).
      value_known: whether ``value`` holds ``V(theta)`` (a boolean array).
      curvature: ``u.Hu / ||u||^2`` along the step, where measured.
    """

    updates: Any
    factors: tuple[jax.Array, ...] = ()
    prescaled: bool = False
    grad: Any = None
    slope: jax.Array | None = None
    value: jax.Array | None = None
    value_known: jax.Array | None = None
    curvature: jax.Array | None = None

    def step(self) -> Any:
        """The step: ``updates`` times the factors (computed where consumed)."""
        return _line.scaled(self.updates, self.factors)

    def norm(self, dtype: Any) -> jax.Array:
        """``||step||``, as ``||updates||`` times the factors."""
        return _line.step_norm(self.updates, self.factors, dtype)

    def direction(self, dtype: Any) -> _line.Direction:
        """The step's norm and direction: ``updates`` itself where prescaled."""
        if self.prescaled:
            return _line.prescaled(self.updates, self.factors, dtype)
        return _line.direction(self.step(), dtype)

    def capped(self, scale: jax.Array, slope: jax.Array | None = None) -> LineInfo:
        """The line after a cap that scales the step by ``scale``.

        ``slope`` is ``g.u`` along the capped step where the cap measured it;
        else a known ``g.u`` is scaled with the step.
        """
        if slope is None and self.slope is not None:
            slope = self.slope * scale.astype(self.slope.dtype)
        return self._replace(factors=(*self.factors, scale), slope=slope)


class Problem(NamedTuple):
    """The loss a step is judged on, as every stage of one update sees it.

    Attributes:
      params: ``theta``.
      value_fn: ``params -> V``, its extra arguments bound and, with
        ``axis_name``, averaged over the mapped axis; ``None`` where the
        caller gave none (the level cap can do without).
      value: the caller's ``value`` extra argument, or ``None``.
      axis_name: the mapped axis the loss is averaged over, or ``None``.
      loss_dtype: the dtype of ``value_fn``'s loss (its trace), or ``None``.
    """

    params: Any
    value_fn: _line.ValueFn | None
    value: Any
    axis_name: Any
    loss_dtype: Any


class Stage(Protocol):
    """A step-size or acceptance rule, as :func:`lyapopt.stabilize` runs it."""

    @property
    def where(self) -> str:
        """The public name, for error messages."""
        ...

    @property
    def needs_value_fn(self) -> bool:
        """Whether ``step`` always evaluates ``value_fn``."""
        ...

    def init(self, params: optax.Params) -> Any:
        """The stage's state (a ``NamedTuple``)."""
        ...

    def admit(self, state: Any, problem: Problem) -> jax.Array | None:
        """Whether the batch is admitted at all (a boolean array), decided
        before the wrapped optimizer sees its gradient; ``None``: this stage
        does not judge batches. :func:`lyapopt.stabilize` treats a refused
        batch as it treats a non-finite gradient: it never reaches the
        wrapped optimizer, and the step's factor is 0."""
        ...

    def step(
        self, line: LineInfo, state: Any, problem: Problem
    ) -> tuple[LineInfo, Any]:
        """The line after this stage, and its new state."""
        ...


class EveryBatch:
    """The ``admit`` of a stage that does not judge batches: every batch is
    admitted."""

    def admit(self, state: Any, problem: Problem) -> None:
        del state, problem


class Off(EveryBatch):
    """A stage that is off: the line passes unchanged, the state is empty, so
    :class:`lyapopt.StabilizeState` keeps its shape whatever is switched off."""

    where = "off"
    needs_value_fn = False

    def init(self, params: optax.Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def step(
        self, line: LineInfo, state: Any, problem: Problem
    ) -> tuple[LineInfo, Any]:
        del problem
        return line, state


def grad_dot(
    where: str,
    line: LineInfo,
    problem: Problem,
    dtype: Any,
    *,
    direction: Callable[[], _line.Direction],
    per_unit: bool,
    norm: jax.Array | None = None,
) -> jax.Array:
    """``g.u`` along the line's step (``per_unit``: ``g.u / ||u||``), in one place.

    1. ``line.slope``, where known (averaged over the mapped axis); per unit
       of length it is divided by ``norm``, or, where it over- or
       underflowed, measured by a forward-mode pass along ``direction()``;
    2. else the dot product with ``line.grad`` (no pass over data);
       complex parameters measured with ``value_fn`` skip this: what a
       complex "gradient" means depends on a convention, the pass needs none;
    3. else one forward-mode pass of ``value_fn`` along ``direction()``.

    ``direction`` is called only where it is needed, so a caller whose
    direction would be a tree of its own pays for it only there.
    """
    axis_name = problem.axis_name

    def measure() -> jax.Array:
        if problem.value_fn is None:
            raise ValueError(f"{where} needs `grad` or `value_fn` to compute g.u.")
        d = direction()
        unit = _line.unit_slope(where, problem.value_fn, problem.params, d, dtype)
        return unit if per_unit else unit * d.norm

    if line.slope is not None:
        gu = _line.across(jnp.asarray(line.slope).astype(dtype), axis_name)
        if not per_unit:
            return gu
        assert norm is not None, "per-unit g.u from a known slope needs the norm"
        if problem.value_fn is None:  # nothing to measure with: g.u as it is
            return _line.times(gu, *_line.inverse(norm))
        return _line.slope_over_norm(gu, norm, measure)
    if line.grad is not None and (
        problem.value_fn is None or not _line.is_complex(problem.params)
    ):
        if per_unit:
            dot = _line.unit_grad_slope(line.grad, direction(), dtype)
        else:
            dot = _line.tree_dot(line.grad, line.step(), dtype)
        return _line.across(dot, axis_name)
    return measure()


def start(
    where: str,
    updates: optax.Updates,
    params: optax.Params | None,
    *,
    value_fn: Any,
    grad: optax.Updates | None,
    value: Any,
    extra_args: dict[str, Any],
    axis_name: Any,
    needs_value_fn: bool,
) -> Problem:
    """The start of every update: its checks, and the problem it is solved on.

    Refuses, with the fix, missing ``params`` or ``value_fn``, trees unlike
    ``params``, and (under ``jax.pmap`` or ``shard_map`` without
    ``axis_name``) a loss that may differ between replicas
    (:func:`refuse_drift`). ``value_fn`` is traced once, at trace time, for
    its loss's dtype and its collectives.
    """
    if value_fn is None and needs_value_fn:
        require_value_fn(where, value_fn)  # raises, with the fix
    if grad is not None and params is not None:
        check_like_params(where, "grad", grad, params)
    if value_fn is None:
        if grad is not None and jax.tree.structure(grad) != jax.tree.structure(updates):
            raise ValueError(
                f"{where}: `grad` and `updates` must have the same tree "
                f"structure; got {jax.tree.structure(grad)} and "
                f"{jax.tree.structure(updates)}."
            )
        return Problem(params, None, value, axis_name, None)
    require_params(where, params)
    value_fn = _line.bind(require_value_fn(where, value_fn), extra_args, axis_name)
    check_like_params(where, "updates", updates, params)
    dtype = _line.scalar_dtype(params)
    traced = jax.make_jaxpr(lambda p: _line.value(where, value_fn, p, dtype))(params)
    if axis_name is None:
        refuse_drift(where, traced)
    return Problem(params, value_fn, value, axis_name, traced.out_avals[0].dtype)


def transform(stage: Stage, axis_name: Any) -> optax.GradientTransformationExtraArgs:
    """``stage`` as an optax transform of its own, chained after a direction.

    The updates it receives are the proposed step; it returns the step the
    stage leaves (a cap's factor applied, or the guard's accepted step).
    """

    def update_fn(
        updates: optax.Updates,
        state: Any,
        params: optax.Params | None = None,
        *,
        value: Any = None,
        value_fn: Any = None,
        grad: optax.Updates | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, Any]:
        problem = start(
            stage.where,
            updates,
            params,
            value_fn=value_fn,
            grad=grad,
            value=value,
            extra_args=extra_args,
            axis_name=axis_name,
            needs_value_fn=stage.needs_value_fn,
        )
        line, state = stage.step(LineInfo(updates, grad=grad), state, problem)
        return line.step(), state

    return optax.GradientTransformationExtraArgs(stage.init, update_fn)


# Collectives whose axes tell a value_fn that communicates; the reductions
# among them also make a loss the same on every replica.
_REDUCTIONS = frozenset(("psum", "psum_invariant", "pmax", "pmin"))
_COLLECTIVES = _REDUCTIONS | {"all_gather", "ppermute", "all_to_all", "psum_scatter"}
# Elementwise primitives through which a common loss stays common (pmean is
# a psum and a division).
_ELEMENTWISE = frozenset(
    ("div", "mul", "add", "sub", "neg", "convert_element_type", "copy")
)


def _axes_of(eqn: Any) -> set[Any]:
    """A collective's named axes (an unnamed pmap axis is an object of JAX's;
    integers are positional axes)."""
    named = eqn.params.get("axes", eqn.params.get("axis_name", ()))
    named = named if isinstance(named, (tuple, list)) else (named,)
    return {a for a in named if not isinstance(a, int)}


def collective_axes(jaxpr: Any) -> set[Any]:
    """The named axes that the collectives of a jaxpr (and its sub-jaxprs) use."""
    axes: set[Any] = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _COLLECTIVES:
            axes |= _axes_of(eqn)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    axes |= collective_axes(inner)
    return axes


def _reduced_over(jaxpr: Any, axes: set[Any]) -> bool:
    """Whether the jaxpr's output is a reduction over all of ``axes`` (then
    elementwise maths with constants): the same on every replica."""
    producers = {id(v): eqn for eqn in jaxpr.eqns for v in eqn.outvars}

    def common(var: Any, depth: int = 0) -> bool:
        if isinstance(var, jex_core.Literal):
            return True
        if depth > 32:
            return False
        eqn = producers.get(id(var))
        if eqn is None:  # an input: per replica
            return False
        name = eqn.primitive.name
        if name in _REDUCTIONS:
            return axes <= _axes_of(eqn)
        if name in ("pjit", "jit", "closed_call"):  # a nested jit: its own output
            inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            return inner is not None and _reduced_over(
                getattr(inner, "jaxpr", inner), axes
            )
        if name in _ELEMENTWISE:
            return all(common(v, depth + 1) for v in eqn.invars)
        return False

    return all(common(v) for v in jaxpr.outvars)


def mapped_axes() -> set[Any]:
    """The axes of the ``jax.pmap`` / ``shard_map`` being traced (none under
    ``jax.jit``). JAX keeps them in its axis environment, which has no
    public accessor: an empty set where that changes."""
    try:
        from jax._src import core

        return set(core.get_axis_env().axis_sizes)
    except Exception:  # a private API: never fail because of it
        return set()


def refuse_drift(where: str, traced: Any) -> None:
    """Raises where replicas would each judge their own loss and drift apart.

    Under ``jax.pmap`` (or ``shard_map``) a ``value_fn`` whose loss differs
    between devices (each device's own batch, with no collective inside,
    or a BatchNorm's cross-device mean) makes each replica cap and judge the
    step on its own loss: the replicas' parameters part (by 1.1 after 50
    steps of ``lyapunov_adam(1.0)`` on a 2-device MLP), and a collective
    inside a backtracking loop that runs a different number of times on
    each device waits forever. ``axis_name`` makes the decision common. A
    loss that is the output of a reduction over every mapped axis, or that
    ``shard_map`` types as the same on every device, needs nothing.
    """
    jaxpr = traced.jaxpr
    mapped = mapped_axes()
    axes = mapped | collective_axes(jaxpr)
    if not axes:
        return
    varying = getattr(traced.out_avals[0], "vma", None)
    if varying is not None:
        if not varying:
            return  # typed as the same loss on every device
    elif _reduced_over(jaxpr, mapped or axes):
        return
    name = sorted(axes, key=str)[0]
    # pmap's axis without `axis_name` is an object, or a private string, of
    # JAX's (it changed between releases): no name a user gave.
    unnamed = not (
        type(name) is str and name.isidentifier() and not name.startswith("_")
    )
    fix = (
        f"Pass the axis to the optimizer: `axis_name={name!r}` (e.g. "
        f"`lyapopt.stabilize(tx, axis_name={name!r})`)"
        if not unnamed
        else "Name the axis, `jax.pmap(step, axis_name='batch')`, and pass it to "
        "the optimizer: `axis_name='batch'` (e.g. `lyapopt.stabilize(tx, "
        "axis_name='batch')`)"
    )
    raise ValueError(
        f"{where}: under a mapped axis ({name!r}: `jax.pmap` or `shard_map`) "
        "`value_fn`'s loss may differ between devices, so each device would cap "
        "and judge the step on its own loss: the replicas' parameters would "
        "drift apart, and a collective inside `value_fn` (a BatchNorm's "
        f"cross-device mean) would wait forever. {fix}, so the loss, slope and "
        "curvature are averaged over it and every replica takes the same step."
    )
