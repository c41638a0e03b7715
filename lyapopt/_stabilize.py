"""Any optax optimizer under the held-out rate, the caps and the guard."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jax import lax

from lyapopt import _line, _options, _stage
from lyapopt._checks import check_choice
from lyapopt._curvature import CurvatureCap
from lyapopt._guard import Guard
from lyapopt._level import LevelCap
from lyapopt._options import DEFAULTS, GUARD_MODES, StageOptions
from lyapopt._rate import HeldOutRate
from lyapopt._spikes import LossReference

# `stabilize` keeps optax.apply_if_finite's state, and its rule with no
# limit on the non-finite steps in a row: it never lets a NaN through.
_NEVER = int(jnp.iinfo(jnp.int32).max)


class StabilizeState(NamedTuple):
    """State of :func:`stabilize`: the wrapped optimizer's, then each stage's,
    in the order the stages run."""

    inner_state: Any  # optax.ApplyIfFiniteState around the wrapped state
    spikes: Any  # SkipLossSpikesState, or optax.EmptyState without it
    rate: Any  # ScaleByHeldOutRateState, or optax.EmptyState without it
    curvature: Any  # ScaleByCurvatureState, or optax.EmptyState without the cap
    level: Any  # ScaleByLevelState, or optax.EmptyState without the level cap
    guard: Any  # LyapunovGuardState, or optax.EmptyState without the guard


def _keep_dtypes(
    tx: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose updates keep the gradients' dtypes and whose state keeps its own.

    Under ``optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32)``
    with bfloat16 parameters, float32 hyperparameters promote Adam's
    bfloat16 moments to float32; the state would change type from one step
    to the next (and the while_loop that runs it would refuse its carry).
    """
    tx = optax.with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_state = tx.update(updates, state, params, **extra_args)
        return (
            optax.tree.cast_like(new_updates, updates),
            optax.tree.cast_like(new_state, state),
        )

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


class _Proposal(NamedTuple):
    """The wrapped optimizer's step, as :func:`_propose` hands it to the stages."""

    updates: Any  # its update, times a power of two where the largest entry
    # was outside [2^-24, 2^24]: that entry then lies in [1/2, 1)
    factor: jax.Array  # what `updates` is multiplied by to be the step; 0: no step
    slope: jax.Array | None  # g.u for the step, where asked for
    state: optax.ApplyIfFiniteState


def _propose(
    tx: optax.GradientTransformationExtraArgs,
    grads: optax.Updates,
    state: optax.ApplyIfFiniteState,
    params: optax.Params | None,
    extra_args: dict[str, Any],
    slope_dtype: Any = None,
    admitted: jax.Array | None = None,
) -> _Proposal:
    """``tx``'s step, as ``optax.apply_if_finite(tx, ∞)`` would take it, in place.

    The rule and the state are ``apply_if_finite``'s: a gradient with a NaN
    or an Inf never reaches ``tx``, there is no step and ``tx``'s state is
    kept. ``apply_if_finite`` takes ``tx``'s step in a ``lax.cond``, whose
    operand (the gradient) and result (the update) are separate buffers,
    both whole when it ends. Here the step is the body of a
    ``lax.while_loop`` that runs once or not at all, and XLA writes the
    update over the gradient and the state over itself, as ``tx`` alone
    would (``python -m benchmarks.memory --phases``: +0.37 parameter-sized
    buffers over ``optax.adam`` against +1.25). An update whose largest
    entry is outside ``[2^-24, 2^24]`` (an absurd rate, a converged step)
    is then scaled, in place and exactly, by the power of two that brings
    that entry into ``[1/2, 1)``, so that derivatives along it overflow
    nothing; the inverse is the proposal's ``factor``, a product that XLA
    computes where the step is used. With ``slope_dtype``, g.u with
    ``extra_args["grad"]`` (else the gradient) is taken in the loop, while
    the gradient is at hand. A batch a stage refused (``admitted`` False:
    :func:`lyapopt.skip_loss_spikes`) is treated as a non-finite gradient
    is, without being counted as one: it never reaches ``tx``.
    """
    dtype = _line.scalar_dtype(grads)
    finite = jnp.asarray(True)
    for x in jax.tree.leaves(grads):
        finite = finite & jnp.all(jnp.isfinite(x))
    run = finite if admitted is None else finite & admitted

    def step(carry: tuple) -> tuple:
        g, inner_state, slope = carry
        u, inner_state = tx.update(g, inner_state, params, **extra_args)
        if slope_dtype is not None:
            slope = _line.tree_dot(extra_args.get("grad", g), u, slope_dtype)
        return u, inner_state, slope

    zero = jnp.zeros([], slope_dtype or dtype)
    updates, inner_state, slope = _run_if(run, step, (grads, state.inner_state, zero))
    # Only an update whose largest entry is outside [2^-24, 2^24] is scaled
    # (in place): a pass over the update at every step would cost a buffer
    # where XLA keeps it beside the scaled copy.
    largest = _line.tree_max_abs(updates, dtype)
    extreme = run & (largest > 0) & ~((largest >= 2.0**-24) & (largest <= 2.0**24))

    def rescale(carry: tuple) -> tuple:
        c = _line.power_of_two(largest)
        return jax.tree.map(lambda x: x * c.astype(x.dtype), carry[0]), 1 / c

    updates, inverse = _run_if(extreme, rescale, (updates, jnp.ones([], dtype)))
    count = optax.safe_increment
    return _Proposal(
        updates=updates,
        factor=jnp.where(run, inverse, 0),
        slope=None if slope_dtype is None else jnp.where(run, slope, 0),
        state=optax.ApplyIfFiniteState(
            notfinite_count=jnp.where(
                finite,
                jnp.zeros_like(state.notfinite_count),
                count(state.notfinite_count),
            ),
            last_finite=finite,
            total_notfinite=jnp.where(
                finite, state.total_notfinite, count(state.total_notfinite)
            ),
            inner_state=inner_state,
        ),
    )


def _run_if(flag: jax.Array, body: Any, operand: Any) -> Any:
    """``body(operand)`` where ``flag``, else ``operand``: a ``lax.while_loop``
    of at most one pass, whose carry XLA updates in place (a ``lax.cond``
    keeps its operand and its result apart).

    Protected by ``tests/test_memory.py``
    (``test_extra_parameter_sized_buffers_over_the_wrapped_optimizer`` and the
    phases table's row for the proposal alone).
    """

    def once(carry: tuple) -> tuple:
        return body(carry[0]), jnp.zeros_like(flag)

    return lax.while_loop(lambda carry: carry[1], once, (operand, flag))[0]


def stages(options: StageOptions) -> tuple[_stage.Stage, ...]:
    """The loss reference, the held-out rate, the curvature cap, the level
    cap and the guard that ``options`` asks for, in the order they run; a
    stage that is off is :class:`_stage.Off`, so the state keeps its shape."""
    check_choice("stabilize", "guard", options.guard, (*GUARD_MODES, None))
    if options.rate_every is None and options.rate_shape is not None:
        raise ValueError(
            "stabilize: `rate_shape` multiplies the rate that `rate_every` "
            "measures, and `rate_every` is None (the held-out rate is off). Pass "
            "`rate_every=4` to measure the rate every 4 steps, or put the "
            "schedule in the wrapped optimizer's learning rate."
        )
    if options.rate_every is None and options.rate_until is not None:
        raise ValueError(
            "stabilize: `rate_until` ends the measurement of the rate that "
            "`rate_every` turns on, and `rate_every` is None (the held-out rate "
            "is off). Pass `rate_every=1` to measure at every step until "
            "`rate_until`."
        )
    off = _stage.Off()
    return (
        off
        if options.spike_factor is None
        else LossReference(
            options.spike_factor, options.spike_window, options.max_skips
        ),
        off
        if options.rate_every is None
        else HeldOutRate(options.rate_every, options.rate_shape, options.rate_until),
        off
        if options.safety is None
        else CurvatureCap(options.safety, options.curvature_every, options.max_scale),
        off if options.level is None else LevelCap(options.level),
        off
        if options.guard is None
        else Guard(
            options.guard, options.tolerance, options.max_backtracks, options.decrease
        ),
    )


def stabilize(
    tx: optax.GradientTransformation,
    *,
    spike_factor: float | jax.Array | None = DEFAULTS.spike_factor,
    spike_window: int = DEFAULTS.spike_window,
    max_skips: int | jax.Array = DEFAULTS.max_skips,
    rate_every: int | jax.Array | None = DEFAULTS.rate_every,
    rate_until: int | jax.Array | None = DEFAULTS.rate_until,
    rate_shape: optax.ScalarOrSchedule | None = DEFAULTS.rate_shape,
    safety: float | jax.Array | None = DEFAULTS.safety,
    curvature_every: int | jax.Array = DEFAULTS.curvature_every,
    max_scale: float | jax.Array = DEFAULTS.max_scale,
    level: float | jax.Array | None = DEFAULTS.level,
    guard: str | None = DEFAULTS.guard,
    tolerance: float | jax.Array = DEFAULTS.tolerance,
    max_backtracks: int | jax.Array = DEFAULTS.max_backtracks,
    decrease: float | jax.Array = DEFAULTS.decrease,
    axis_name: Any = DEFAULTS.axis_name,
) -> optax.GradientTransformationExtraArgs:
    """Runs any optax optimizer under lyapopt's step-size and acceptance rules.

    ``tx`` chooses the direction and its length (``optax.adamw``,
    ``optax.lion``, a user's own chain); lyapopt then decides how much of it
    to take and whether to take it:

    1. a gradient with a NaN or an Inf is dropped before it reaches ``tx``
       (the rule and the state of :func:`optax.apply_if_finite`, never
       giving up, without its copy of the update), so it corrupts neither
       the parameters nor the state of ``tx``;
    2. :func:`lyapopt.skip_loss_spikes` refuses a batch whose loss is
       ``spike_factor`` times the median of the recent ones (optional; off
       by default): its gradient never reaches ``tx``, as in 1;
    3. :func:`lyapopt.scale_by_held_out_rate` sets the rate from the
       quadratic model along the last step, measured on the current batch
       every ``rate_every`` steps, times the shape ``rate_shape``
       (optional; off by default);
    4. :func:`lyapopt.scale_by_curvature` caps the step at ``safety`` times
       the minimum of the local quadratic model (measured every
       ``curvature_every`` steps);
    5. :func:`lyapopt.scale_by_level` caps it where the linear model reaches
       ``level`` (optional);
    6. :func:`lyapopt.lyapunov_guard` rejects or shrinks a step that raises
       the loss (``guard`` is its mode; ``None`` turns it off).

    ``g.u`` for stages 4-6 comes from the cap's forward-over-forward pass
    where it measures the curvature at every step (the default). Otherwise
    it is the dot product of ``tx``'s update with the gradient, taken right
    after ``tx``'s step, so the gradient is not held until the stages and
    no pass over the data is needed (a forward-mode pass stands in only
    where that dot product over- or underflows). That gradient is the
    incoming ``updates``: place ``stabilize`` first in a chain, or, behind a
    transform that changes the gradient (``optax.clip_by_global_norm``,
    ``optax.add_decayed_weights``), pass the raw gradient as
    ``grad=grads``.

    The guard must be the last transform to touch the updates. A transform
    chained after ``stabilize`` changes the step that was judged into one
    that was not: ``optax.chain(lyapunov_adam(1.0), optax.scale(5.0))``
    takes five times the accepted step, one the guard never judged, and can
    raise the loss as far as an unguarded optimizer would. Put scaling, clipping and weight decay inside
    ``tx`` (or before ``stabilize``) instead.

    A rejected step (the guard's scale 0) leaves the parameters unchanged,
    but ``tx`` has already updated its own state with that gradient (Adam's
    moments, its step count), as a gradient accumulated under
    ``optax.MultiSteps`` would: the next step starts from those moments.
    Keeping the old state instead would hold two copies of it alive at the
    peak of the step.

    With ``rate_every``, give ``tx`` a constant learning rate (the rate
    the measurement starts from) and the schedule's shape as
    ``rate_shape``: a decay inside ``tx`` is undone by the measurement.

    Args:
      tx: the optax optimizer to stabilise.
      spike_factor: refuse a batch whose loss exceeds this multiple of the
        median of the last ``spike_window`` admitted losses
        (:func:`lyapopt.skip_loss_spikes`); ``None`` turns that stage off.
      spike_window: the admitted losses the median is taken over.
      max_skips: refusals in a row after which a batch is admitted whatever
        its loss (the loss's new level becomes the reference).
      rate_every: measure the rate every this many steps
        (:func:`lyapopt.scale_by_held_out_rate`); ``None`` turns that stage
        off.
      rate_until: measure the rate only before this step, then hold it
        (``None``: throughout).
      rate_shape: the schedule shape that multiplies the measured rate.
      safety: the cap's fraction of the model's minimum; ``None`` turns the
        curvature cap off.
      curvature_every: measure the curvature every this many steps.
      max_scale: the most the cap may lengthen a step (1 never lengthens it).
      level: the energy level of :func:`lyapopt.scale_by_level`; ``None``
        turns that cap off.
      guard: the guard's mode (``"backtrack"``, ``"skip"``, ``"record"``,
        ``"check"``), or ``None`` for no guard.
      tolerance: the rise of the loss the guard allows.
      max_backtracks: the guard's halvings in ``"backtrack"`` mode.
      decrease: the guard's sufficient-decrease ``sigma``: a step must lower
        the loss by at least ``sigma`` times what its slope promises. The
        default, 0.25, refuses steps that overshoot the valley.
      axis_name: under ``jax.pmap`` or ``shard_map`` with a per-device
        ``value_fn``, the mapped axis: the loss, slope and curvature are
        averaged over it so every replica takes the same step. ``None``
        under ``jax.jit`` with sharded inputs (the loss is already global).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. With the cap or the guard
      its update needs ``params`` and ``value_fn``; other extra arguments
      that ``value_fn``'s signature names are passed on to it, as optax's
      line searches do.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, lyapopt
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> tx = lyapopt.stabilize(optax.sgd(10.0))  # ten times too large a rate
      >>> x = jnp.zeros(3)
      >>> state = tx.init(x)
      >>> for _ in range(3):
      ...     loss, grads = jax.value_and_grad(f)(x)
      ...     updates, state = tx.update(grads, state, x, value=loss, value_fn=f)
      ...     x = optax.apply_updates(x, updates)
      >>> x
      Array([1., 1., 1.], dtype=float32)
    """
    options = _options.collect(locals())
    if isinstance(tx, optax.MultiSteps):
        raise TypeError(
            "stabilize: `tx` must be an optax GradientTransformation such as "
            "`optax.adam(1e-3)`, got MultiSteps. `optax.MultiSteps` is a class, "
            "not a transformation: pass `optax.MultiSteps(tx, every_k_schedule=k)"
            ".gradient_transformation()`, or accumulate around lyapopt: "
            "`optax.MultiSteps(lyapopt.stabilize(tx), every_k_schedule=k)`."
        )
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            "stabilize: `tx` must be an optax GradientTransformation such as "
            f"`optax.adam(1e-3)`, got {type(tx).__name__}."
        )
    inner = _keep_dtypes(tx)
    chain = stages(options)
    needs_value_fn = any(stage.needs_value_fn for stage in chain)
    # With every stage off (a direction inside `optax.multi_transform`, say)
    # `value_fn` is not used, nor checked.
    uses_value_fn = any(not isinstance(stage, _stage.Off) for stage in chain)
    # With the curvature measured at every step, g.u comes from the cap's
    # pass: a dot product with the gradient would hold the gradient beside
    # the update.
    measures_every_step = any(
        isinstance(stage, CurvatureCap) and stage.every_step for stage in chain
    )

    def init_fn(params: optax.Params) -> StabilizeState:
        return StabilizeState(
            optax.apply_if_finite(inner, _NEVER).init(params),
            *(stage.init(params) for stage in chain),
        )

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, StabilizeState]:
        state = cast(StabilizeState, state)
        # The stages' g.u is a dot product with the gradient of value_fn's loss:
        # the raw gradient, unless a transform before this one changed it
        # (a clip, weight decay); then the caller passes it as `grad`.
        grads = updates
        grad = extra_args.get("grad")
        problem = _stage.start(
            "stabilize",
            updates,
            params,
            value_fn=extra_args.get("value_fn") if uses_value_fn else None,
            grad=grad,
            value=extra_args.get("value"),
            extra_args={
                k: v for k, v in extra_args.items() if k not in ("value_fn", "grad")
            },
            axis_name=options.axis_name,
            needs_value_fn=needs_value_fn,
        )
        # g.u, taken while the gradient is at hand (it need not live until
        # the stages), unless the cap measures it at every step.
        with_slope = (
            not measures_every_step
            and params is not None
            and not _line.is_complex(params)
        )
        # A batch is admitted unless a stage refuses it, before `tx` sees
        # its gradient.
        admitted = None
        for stage, stage_state in zip(chain, state[1:], strict=True):
            verdict = stage.admit(stage_state, problem)
            if verdict is not None:
                admitted = verdict if admitted is None else admitted & verdict
        proposal = _propose(
            inner,
            updates,
            state.inner_state,
            params,
            extra_args,
            _line.scalar_dtype(params) if with_slope else None,
            admitted,
        )
        if not with_slope and not measures_every_step:
            grad = grads if grad is None else grad
        # The caps scale the proposal by their factors; the step is
        # `line.step()`, left to XLA to compute where it is consumed, and the
        # guard applies the factors itself: the capped step is never a
        # second tree beside the proposal. With g.u known, the gradient need
        # not live until the stages.
        line = _stage.LineInfo(
            proposal.updates,
            factors=(proposal.factor,),
            prescaled=True,
            grad=None if proposal.slope is not None else grad,
            slope=proposal.slope,
        )
        new_states = []
        for stage, stage_state in zip(chain, state[1:], strict=True):
            line, stage_state = stage.step(line, stage_state, problem)
            new_states.append(stage_state)
        return line.step(), StabilizeState(proposal.state, *new_states)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
