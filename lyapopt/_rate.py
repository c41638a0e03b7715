"""The held-out rate: the learning rate set from the quadratic model along the
last step, measured on the batch that step never saw."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from lyapopt import _line, _stage
from lyapopt._checks import check_number

_WHERE = "scale_by_held_out_rate"
# GeN's smoothing of the rate: rate <- (1 - w) rate + w clip(target, rate / c,
# c rate), with w = 0.1 and c = 2 (Bu & Xu, 2025).
_SMOOTHING = 0.1
_CLAMP = 2.0
# Ours: the decay of the averages whose ratio is the target (about 10
# measurements; the ratio of two averages started at 0 needs no debiasing).
_AVERAGING = 0.9
# Ours, with `rate_until` (a level measured early, then held): the target
# averaged over about 50 measurements, most of a level phase, and followed
# without a second smoothing (the clamp alone), so that the level settles
# within the phase (benchmarks/notes/horizon_probe.md, variant H2g).
_LEVEL_AVERAGING = 0.98
_LEVEL_SMOOTHING = 1.0


class ScaleByHeldOutRateState(NamedTuple):
    """State of :func:`scale_by_held_out_rate`.

    Decisions (what the next step uses):

    Attributes:
      count: int32, steps taken (saturating); the rate is measured when
        ``count >= 1`` and ``count % rate_every == 0``.
      rate: the multiplier ``r`` of the proposed step, before the shape;
        starts at 1 (the wrapped optimizer's own rate).
      previous: ``theta`` at the last step, a tree like the parameters, in
        their dtype: the one parameter-sized buffer of this stage.
      length: ``||u||`` of the proposal this stage received at the last
        step, where this step measures (else 0).
      numerator: the moving average of ``X kappa`` over accepted
        measurements, ``X`` the measured best multiple of the proposal and
        ``kappa = p.Hp / ||p||^2``.
      denominator: the moving average of ``kappa``; the target of the rate
        is ``numerator / denominator``.

    Diagnostics (read by :func:`lyapopt.stats`):

    Attributes:
      scale: the factor applied to the proposal at the last step,
        ``rate * shape(count)``.
      optimum: ``X`` at the last accepted measurement.
      measurements: int32, measurements accepted.
      rejected: int32, measurements refused: no step was taken
        (``p = 0``), no step is proposed on the current batch (a batch
        refused by :func:`lyapopt.skip_loss_spikes`, a non-finite
        gradient: not a batch to measure on), the curvature along ``p`` was
        not positive, or a number was not finite.
    """

    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    rate: jax.Array
    previous: Any
    length: jax.Array
    numerator: jax.Array
    denominator: jax.Array
    scale: jax.Array
    optimum: jax.Array
    measurements: jax.Array
    rejected: jax.Array


def scale_by_held_out_rate(
    rate_every: int | jax.Array = 4,
    *,
    rate_until: int | jax.Array | None = None,
    rate_shape: optax.ScalarOrSchedule | None = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Sets the learning rate from the quadratic model along the last step,
    measured on data that step was not computed from.

    The proposed update ``u_t`` (the wrapped optimizer's step, at its own
    rate) is scaled by ``r_t * shape(t)``: ``r`` is measured, ``shape`` is
    the user's schedule shape (1 when not given).

    **The measurement** (every ``rate_every`` steps). At step ``t`` the
    step actually taken last, ``p = theta_t - theta_{t-1}`` (after any cap
    and the guard), is judged on ``value_fn``, the loss of the current
    batch, which the step was not computed from. One forward-over-forward
    pass along ``p`` at ``theta_t`` gives ``g.p`` and ``p.Hp``; the
    quadratic model of the line ``s -> V(theta_{t-1} + s p)`` is smallest
    at the multiple ``m = (p.Hp - g.p) / p.Hp`` of ``p``. With
    ``p = c u_{t-1}``, ``c = ||p|| / ||u_{t-1}||`` (what this stage, the
    caps and the guard made of the proposal), the best multiple of the
    proposal is

    .. math::
      X = c\, m = \frac{\lVert p \rVert \kappa - \sigma}{\lVert u_{t-1} \rVert\, \kappa},
      \qquad \sigma = \frac{g \cdot p}{\lVert p \rVert},\quad
      \kappa = \frac{p \cdot H p}{\lVert p \rVert^2} .

    A measurement is accepted where ``kappa > 0`` (a convex fit),
    ``||p|| > 0`` and every number is finite (GeN's rule: only a convex,
    well-posed fit).

    **The target is a ratio of expectations**, ``EMA(X kappa) / EMA(kappa)``
    (decay 0.9 per measurement), not an average of ``X``. On a noisy
    quadratic, batch loss ``1/2 x.Hx - xi_B.x`` with ``E xi_B = xi`` and
    ``Cov xi_B = Sigma``, true gradient ``G`` at ``theta_{t-1}`` and the step
    ``p = -c (G + n)`` from the last batch's noise ``n``, the current
    batch's gradient at ``theta_t`` is ``G + Hp + n'`` with ``n'``
    independent of ``p``, and

    .. math::
      X \kappa = \frac{(G + n') \cdot (G + n)}{\lVert G + n \rVert^2},
      \qquad
      \kappa = \frac{(G + n) \cdot H (G + n)}{\lVert G + n \rVert^2},

    whatever rate ``c`` was used. Where ``||G + n||`` does not vary with the
    noise (a large model: it concentrates, to a relative ``O(1/d)``) the
    ratio of their expectations is

    .. math::
      \frac{\lVert G \rVert^2}{G \cdot HG + \operatorname{tr}(H \Sigma)}
      = \frac{\epsilon_{\max}}{1 + B_{\text{noise}} / B},

    McCandlish et al.'s noise-aware best rate, ``eps_max = |G|^2 / G.HG``
    (their ``tr(H Sigma) / G.HG`` with ``Sigma`` the covariance of the
    batch's gradient). The average of ``X`` alone would be biased: the
    noise ``n`` of the step's own batch sits in ``X``'s denominator. Judged
    on the batch the step came from (``n' = n``), ``X kappa`` would be 1
    and the target about ``(|G|^2 + tr(Sigma)) / (G.HG + tr(H Sigma))``:
    the model would take the step's own noise for signal, and overrate it.
    That is what the held-out batch removes.

    **The rate** follows the target as GeN smooths it:
    ``r <- 0.9 r + 0.1 clip(target, r / 2, 2 r)`` at each accepted
    measurement; ``r`` starts at 1. The factor applied at step ``t`` is
    ``r_t shape(t)``.

    **The horizon.** ``X`` is the best multiple for one step (greedy), and
    a greedy rate is biased short (Wu et al., 2018): as the noise comes to
    dominate the gradient it falls, to lower the loss now at the expense of
    progress later. ``r`` is measured whatever the shape is (``c`` counts
    the shape in), so ``r`` is the greedy best rate, and ``shape(t)``
    multiplies it (GeN's ``scale``, e.g. ``optax.cosine_decay_schedule(1.0,
    steps)`` or :func:`lyapopt.exponential_schedule` with ``init_value``
    1). Measured throughout the run (``rate_until=None``) the greedy level
    falls by itself where the noise dominates, so a decaying shape decays
    the step twice: on a small language model that ended 10% behind the
    tuned recipe. **With** ``rate_until`` the level is measured early, while
    the gradient's signal dominates its noise, and then held, and the shape
    alone decays it (the rule for the horizon: the measurement sets the
    peak, the shape the decay the run asks for). Over that phase the target
    is averaged over about 50 measurements (decay 0.98) and the rate
    follows it with the clamp alone, ``r <- clip(target, r / 2, 2 r)``, so
    that it settles within the phase from a start 100x too small or 30x
    too large. ``rate_until = steps // 10`` with ``rate_every=1`` is the
    rate-free configuration (:func:`lyapopt.stabilize`;
    ``benchmarks/RESULTS.md`` measures it). Give the wrapped optimizer a
    constant rate: a decay of its own is undone by the measurement, which
    sets ``r`` against it.

    What is whose: the fit of the quadratic model along the update, its
    convex-only acceptance, the smoothing, the clamp and the outside shape
    are GeN's (Bu & Xu), which fits a parabola to three losses on a fresh
    batch every 4-8 steps; the noise-aware optimum is McCandlish et al.'s;
    the short-horizon bias is Wu et al.'s finding.
    Ours: the fresh batch is the next one, judged at the step that was
    taken (no extra batch, no extra argument name: a chain with optax's
    line searches, which pass extra keywords on to ``value_fn``, works
    unchanged); exact derivatives by one forward-over-forward pass instead
    of a fit (so no ``R^2`` test); the ratio of expectations; the level
    measured early and held, its long average and its unsmoothed clamp; the
    correction ``c`` for what later caps and the guard left of the step.

    Cost: one forward-over-forward pass every ``rate_every`` steps, inside
    a ``lax.cond`` (the other steps pay one norm of the proposal, on the
    step before a measurement), and memory: one copy of the parameters in
    the state (``previous``), and at the peak of a compiled step +3.1
    parameter-sized buffers over ``lyapunov_adam`` in all (measured on a
    1M-parameter MLP, ``tests/test_memory.py``). The step is not safe by
    itself: a rate measured on the last batch can overshoot on this one.
    Chain :func:`lyapopt.lyapunov_guard` after it, or use
    ``stabilize(tx, rate_every=k)``, where it runs first and the curvature
    cap and the guard after it.

    Args:
      rate_every: measure every this many steps, ``>= 1`` (GeN: 4 to 8).
      rate_until: measure only before this step, then hold the rate (the
        horizon rule above; e.g. ``steps // 10`` with ``rate_every=1``);
        ``None``: measure throughout the run.
      rate_shape: the schedule shape that multiplies the measured rate, an
        optax schedule with value 1 at step 0, or a number; ``None``: 1.
      axis_name: under ``jax.pmap`` or ``shard_map``, the axis over which
        ``value_fn``'s per-device loss is averaged (see
        :class:`lyapopt.StageOptions`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its update needs
      ``params`` and the extra argument ``value_fn`` (the loss on the
      current batch); other extra arguments that ``value_fn`` names are
      passed on to it.

    References:
      Bu and Xu, "Gradient descent with generalized Newton's method", ICLR
      2025, arXiv:2407.02772.

      McCandlish, Kaplan, Amodei et al., "An empirical model of large-batch
      training", arXiv:1812.06162, 2018.

      Wu, Ren, Liao and Grosse, "Understanding short-horizon bias in
      stochastic meta-optimization", ICLR 2018.

    Examples:
      On ``f(x) = 2 x^2`` gradient descent at rate 1 oscillates; the rate
      measured on the last step is the best one, ``1/4``, and it is reached
      by GeN's smoothing:

      >>> import jax, jax.numpy as jnp, optax, lyapopt
      >>> f = lambda x: 2 * jnp.sum(x**2)
      >>> tx = optax.chain(optax.sgd(1.0), lyapopt.scale_by_held_out_rate(1))
      >>> x = jnp.array([1.0])
      >>> state = tx.init(x)
      >>> updates, state = tx.update(jax.grad(f)(x), state, x, value_fn=f)
      >>> x = optax.apply_updates(x, updates)  # rate 1: x = -3
      >>> updates, state = tx.update(jax.grad(f)(x), state, x, value_fn=f)
      >>> round(float(state[1].optimum), 4), round(float(state[1].rate), 4)
      (0.25, 0.95)
    """
    return _stage.transform(HeldOutRate(rate_every, rate_shape, rate_until), axis_name)


@dataclasses.dataclass(frozen=True)
class HeldOutRate(_stage.EveryBatch):
    """The held-out rate as a stage (:class:`lyapopt._stage.Stage`)."""

    rate_every: int | jax.Array
    rate_shape: optax.ScalarOrSchedule | None
    rate_until: int | jax.Array | None = None
    where: str = _WHERE
    needs_value_fn: bool = True

    def __post_init__(self) -> None:
        check_number(
            _WHERE,
            "rate_every",
            self.rate_every,
            lower=1.0,
            integer=True,
            fix="Pass 4 to measure every 4 steps, as GeN does.",
        )
        if self.rate_until is not None:
            check_number(
                _WHERE,
                "rate_until",
                self.rate_until,
                lower=0.0,
                integer=True,
                fix="Pass a tenth of the run's steps (`steps // 10`) to measure "
                "the rate early and hold it, or None to measure throughout.",
            )
        if self.rate_shape is not None and not callable(self.rate_shape):
            check_number(
                _WHERE,
                "rate_shape",
                self.rate_shape,
                lower=0.0,
                fix="Pass an optax schedule with value 1 at step 0, such as "
                "`optax.cosine_decay_schedule(1.0, steps)`, or None.",
            )

    def shape(self, count: jax.Array, dtype: Any) -> jax.Array:
        """The shape at ``count``: the schedule's value, the number, or 1."""
        shape = self.rate_shape
        if shape is None:
            return jnp.ones([], dtype)
        value = shape(count) if callable(shape) else shape
        return jnp.asarray(value).astype(dtype)

    def init(self, params: optax.Params) -> ScaleByHeldOutRateState:
        dtype = _line.scalar_dtype(params)
        return ScaleByHeldOutRateState(
            count=_line.scalar(0, jnp.int32),
            rate=_line.scalar(1, dtype),
            previous=jax.tree.map(lambda x: jnp.array(x, copy=True), params),
            length=_line.scalar(0, dtype),
            numerator=_line.scalar(0, dtype),
            denominator=_line.scalar(0, dtype),
            scale=_line.scalar(1, dtype),
            optimum=_line.scalar(jnp.nan, dtype),
            measurements=_line.scalar(0, jnp.int32),
            rejected=_line.scalar(0, jnp.int32),
        )

    def step(
        self,
        line: _stage.LineInfo,
        state: ScaleByHeldOutRateState,
        problem: _stage.Problem,
    ) -> tuple[_stage.LineInfo, ScaleByHeldOutRateState]:
        value_fn, params = problem.value_fn, problem.params
        assert value_fn is not None  # needs_value_fn: `start` made sure
        dtype = state.rate.dtype
        # The loss's dtype, which the derivatives have: both branches of
        # the lax.cond below must return it.
        work = jnp.promote_types(dtype, problem.loss_dtype)
        every = jnp.asarray(self.rate_every).astype(state.count.dtype)
        measured = (state.count >= 1) & (state.count % every == 0)
        if self.rate_until is not None:
            measured = measured & (state.count < self.rate_until)

        def measure() -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
            step = jax.tree.map(_difference, params, state.previous)
            d = _line.direction(step, work)
            _, slope, curv = _line.unit_derivatives(_WHERE, value_fn, params, d, work)
            # No step proposed on this batch (a batch refused by
            # skip_loss_spikes, a non-finite gradient): the batch is not
            # one to measure on.
            proposed = line.norm(work) > 0
            return d.norm.astype(work), slope.astype(work), curv.astype(work), proposed

        def skip() -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
            zero = jnp.zeros([], work)
            return zero, zero, zero, jnp.asarray(False)

        norm, slope, curv, proposed = lax.cond(measured, measure, skip)
        length = state.length.astype(work)
        accepted = (
            proposed
            & jnp.isfinite(norm)
            & (norm > 0)
            & jnp.isfinite(length)
            & (length > 0)
            & jnp.isfinite(slope)
            & jnp.isfinite(curv)
            & (curv > 0)
        )
        # X kappa = (||p|| kappa - sigma) / ||u_{t-1}||, per unit length^2 of
        # p, so a spike in one step's length does not swamp the averages.
        weighted = (norm * curv - slope) / jnp.where(accepted, length, 1)
        accepted = accepted & jnp.isfinite(weighted)
        level = self.rate_until is not None
        decay = _LEVEL_AVERAGING if level else _AVERAGING
        numerator = _average(state.numerator, weighted, accepted, decay)
        denominator = _average(state.denominator, curv, accepted, decay)
        target = numerator / jnp.where(denominator > 0, denominator, 1)
        rate = state.rate.astype(work)
        clipped = jnp.clip(target, rate / _CLAMP, rate * _CLAMP)
        w = _LEVEL_SMOOTHING if level else _SMOOTHING
        rate = jnp.where(accepted, (1 - w) * rate + w * clipped, rate).astype(dtype)
        scale = (rate * self.shape(state.count, dtype)).astype(dtype)

        # ||u_t||, for the measurement at the next step only.
        count = jnp.asarray(optax.safe_increment(state.count))
        measures_next = count % every == 0
        if self.rate_until is not None:
            measures_next = measures_next & (count < self.rate_until)
        next_length = lax.cond(
            measures_next,
            lambda: line.norm(work).astype(dtype),
            lambda: jnp.zeros([], dtype),
        )
        count_up = optax.safe_increment
        new_state = ScaleByHeldOutRateState(
            count=count,
            rate=rate,
            previous=jax.tree.map(
                lambda p, q: jnp.asarray(p).astype(q.dtype), params, state.previous
            ),
            length=next_length,
            numerator=numerator.astype(dtype),
            denominator=denominator.astype(dtype),
            scale=scale,
            optimum=jnp.where(
                accepted, weighted / jnp.where(accepted, curv, 1), state.optimum
            ).astype(dtype),
            measurements=jnp.where(
                accepted, count_up(state.measurements), state.measurements
            ),
            rejected=jnp.where(
                measured & ~accepted, count_up(state.rejected), state.rejected
            ),
        )
        return line.capped(scale), new_state


def _difference(now: jax.Array, before: jax.Array) -> jax.Array:
    """``now - before`` in at least float32 (exact for bfloat16 neighbours)."""
    now = jnp.asarray(now)
    work = jnp.promote_types(now.dtype, jnp.float32)
    return now.astype(work) - jnp.asarray(before).astype(work)


def _average(
    average: jax.Array, x: jax.Array, accepted: jax.Array, decay: float
) -> jax.Array:
    """The moving average with ``x`` taken in where ``accepted``."""
    average = average.astype(x.dtype)
    new = decay * average + (1 - decay) * x
    return jnp.where(accepted, new, average)
