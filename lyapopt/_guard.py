"""The Lyapunov guard: the loss, as a Lyapunov function, must not go up."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.experimental import checkify

from lyapopt import _line, _stage
from lyapopt._checks import check_choice, check_number
from lyapopt._options import DEFAULTS, GUARD_MODES

_WHERE = "lyapunov_guard"
_INT32_MAX = int(jnp.iinfo(jnp.int32).max)


class LyapunovGuardState(NamedTuple):
    """State of :func:`lyapunov_guard`: diagnostics only (the guard decides
    every step afresh), read by :func:`lyapopt.stats`.

    Attributes:
      value_before: ``V(theta)``, at the last step where it was finite.
      value_after: ``V`` after the step taken, where it was finite.
      scale: the factor applied to the proposed step (0: no step).
      backtracks: int32, halvings used at the last step.
      violations: int32, steps whose proposal raised ``V`` (saturating).
      nonfinite: int32, steps where ``V(theta)`` or the update was not finite.
      value_mismatches: int32, steps where ``value`` was not
        ``value_fn(params)``.
      detached: int32, steps where ``g.u`` promised a decrease and ``V`` did
        not change at all.
    """

    value_before: jax.Array
    value_after: jax.Array
    scale: jax.Array
    backtracks: jax.Array
    violations: jax.Array
    nonfinite: jax.Array
    value_mismatches: jax.Array
    detached: jax.Array


class _Judge(NamedTuple):
    """What every mode needs to judge a step: V before, and the bound on V after."""

    before: jax.Array  # V(theta), in the loss's dtype (at least the state's)
    judged: jax.Array  # V(theta) and the update are finite: the step can be judged
    required: jax.Array  # sigma * g.u: the decrease asked per unit of scale (<= 0)
    value_of: Callable[[Any], jax.Array]  # parameters -> V(parameters)
    params: Any  # theta
    trial: Any  # theta + u, rounded as stored
    bound: jax.Array  # V(theta) + tolerance
    moves: jax.Array  # the update is not zero

    def holds(self, after: jax.Array, scale: jax.Array) -> jax.Array:
        """Whether ``V(theta + scale u) = after`` is accepted; False for NaN.

        A zero update always holds: it changes nothing, whatever the last
        bit of a loss computed by another compiled program says.
        """
        demanded = scale * self.required
        # A decrease below float resolution cannot be checked: ask only for
        # no rise there, or converged steps would all be refused.
        eps = jnp.finfo(self.before.dtype).eps
        resolvable = -demanded > 8 * eps * jnp.abs(self.before)
        lower = after <= self.bound + jnp.where(resolvable, demanded, 0)
        return self.judged & (lower | ~self.moves)


def _backtrack(
    judge: _Judge, after: jax.Array, max_backtracks: Any
) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
    """Halves the step until it holds: ``(scale, after, backtracks, trial)``;
    scale 0 if never.

    The trial parameters are carried, and each halving is computed from
    them and ``theta`` (:func:`lyapopt._line.halfway`): XLA writes them over
    themselves, and the proposed update is not kept beside them (protected
    by ``tests/test_memory.py``'s bound on the extra buffers, and by
    ``tests/test_guard.py::test_the_update_returned_lands_on_the_parameters_judged_to_the_bit``).
    """
    one = jnp.ones([], after.dtype)

    def shrinking(carry: tuple) -> jax.Array:
        k, s, v, _ = carry
        return judge.judged & (k < max_backtracks) & ~judge.holds(v, s)

    def halve(carry: tuple) -> tuple:
        k, s, _, trial = carry
        trial = _line.halfway(judge.params, trial)
        return k + 1, s / 2, judge.value_of(trial), trial

    backtracks, scale, after, trial = lax.while_loop(
        shrinking, halve, (jnp.zeros([], jnp.int32), one, after, judge.trial)
    )
    scale = jnp.where(judge.holds(after, scale), scale, 0)
    return scale, after, backtracks, trial


def _value_before(
    value_fn: Any,
    params: Any,
    dtype: jnp.dtype,
    known: tuple[jax.Array, jax.Array] | None,
    loss_dtype: jnp.dtype,
) -> jax.Array:
    """``V(theta) = value_fn(params)``, or ``known`` when that is it already.

    ``known`` is ``(value, value_known)`` from the curvature cap's state:
    the primal of its pass, where it measured one. The same function at the
    same parameters, so taking it saves a forward pass where XLA cannot share the user's (a loss with
    custom derivative rules, as softmax has, traces differently under
    ``value_and_grad``). Not taken when the loss is wider than ``dtype``.
    """

    def evaluate() -> jax.Array:
        return _line.value(_WHERE, value_fn, params, dtype)

    if known is None or loss_dtype != jnp.dtype(dtype):
        return evaluate()
    value, is_known = known
    value = jnp.asarray(value).astype(dtype)
    return lax.cond(is_known, lambda: value, evaluate)


def _mismatch(value: Any, before: jax.Array, axis_name: Any) -> jax.Array:
    """Whether the caller's ``value`` disagrees with ``value_fn(params)``.

    Beyond the square root of the coarser dtype's epsilon, relative: the two
    differ by rounding when computed apart, not by a penalty term or another
    batch.
    """
    v = _line.loss_scalar(_WHERE, value, before.dtype, name="value")
    given = jnp.asarray(value).dtype
    v = _line.across(v, axis_name)
    eps = max(float(jnp.finfo(given).eps), float(jnp.finfo(before.dtype).eps))
    gap = jnp.abs(v.astype(before.dtype) - before)
    return jnp.isfinite(before) & ~(gap <= jnp.sqrt(eps) * jnp.abs(before))


def lyapunov_guard(
    *,
    guard: str = "backtrack",
    tolerance: float | jax.Array = DEFAULTS.tolerance,
    max_backtracks: int | jax.Array = DEFAULTS.max_backtracks,
    decrease: float | jax.Array = DEFAULTS.decrease,
    axis_name: Any = DEFAULTS.axis_name,
) -> optax.GradientTransformationExtraArgs:
    r"""Checks, and where asked enforces, that the step does not raise the loss.

    The paper takes the loss as the Lyapunov function, ``V(theta) =
    L(theta)``, and asks every step for a monotone decrease. The guard
    evaluates ``V(theta)`` and ``V(theta + u)`` with ``value_fn`` on the same
    batch and calls the step a *violation* when

    .. math::
      V(\theta + u) > V(\theta) + \text{tolerance} + \sigma\, g \cdot u

    with Armijo's sufficient-decrease ``sigma = decrease``. On a quadratic
    it accepts exactly the steps up to ``2 (1 - sigma)`` times the model's
    minimum (``sigma = 1/2``: up to the minimum); the default 0.25 refuses
    steps that overshoot the valley yet still lower the loss a little, the
    steps that make a reused curvature unsafe. ``decrease = 0`` asks only
    that the loss does not rise. ``g.u`` is the dot product with the
    ``grad`` extra argument, else one forward-mode pass.

    What happens on a violation depends on ``guard``:

    - ``"record"``: the step is taken; the violation is counted.
    - ``"backtrack"``: ``u`` is halved until it holds, at most
      ``max_backtracks`` times; if it still fails, no step is taken.
    - ``"skip"``: no step is taken.
    - ``"check"``: as ``"record"``, plus a ``checkify`` check that raises
      when the user's jitted step is wrapped in
      ``chex.chexify(jax.jit(step), async_check=False)`` (``chexify`` must be
      the outermost wrapper; without it the check costs nothing).

    The contract, and its limits:

    - ``V(theta)`` is always ``value_fn(params)``, never the ``value`` extra
      argument: a ``value`` computed on another batch or with a penalty term
      would let real rises through. Under one ``jax.jit`` with the user's
      ``value_and_grad`` XLA computes that forward pass once for both. When
      ``value`` is given it is compared with ``value_fn(params)``; a
      disagreement is counted (``value_mismatches``) and, in ``"check"``
      mode, reported.
    - ``V(theta + s u)`` is evaluated at the parameters as they will be
      stored (bfloat16 parameters rounded to bfloat16), in the loss's dtype
      when it is wider than the parameters'. The update returned is the
      exact difference between those parameters and ``params``:
      ``optax.apply_updates(params, updates)`` gives, to the bit, the
      parameters whose loss was judged (``s u`` up to the rounding of
      ``theta + s u``). Each halving is taken from the last trial
      parameters, in place: the proposal is not kept beside them.
    - The guard must be the last transform to touch the updates: a
      transform after it (``optax.scale(5.0)``) changes a step that was
      judged into one that was not.
    - A step whose ``V(theta)`` or update is not finite is not taken and is
      counted (``nonfinite``).

    In ``"backtrack"`` and ``"skip"`` modes an accepted step never raises
    ``V`` on the batch ``value_fn`` closes over, by construction; the
    population loss is another matter.

    Args:
      guard: one of ``"record"``, ``"backtrack"``, ``"skip"``, ``"check"``.
      tolerance: the rise allowed, ``>= 0``.
      max_backtracks: halvings tried in ``"backtrack"`` mode, ``>= 0``.
      decrease: Armijo's ``sigma`` in ``[0, 1)``.
      axis_name: under ``jax.pmap`` or ``shard_map``, the axis over which
        ``value_fn``'s per-device loss is averaged, so that every replica
        judges the global loss and takes the same decision (the same number
        of backtracks: a BatchNorm's cross-device mean inside ``value_fn``
        cannot wait on a replica that stopped early). See
        :class:`lyapopt.StageOptions`.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its update needs ``params``
      and the extra argument ``value_fn``; ``grad`` and ``value`` are
      optional, and the other extra arguments that ``value_fn`` names are
      passed on to it.

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      Gradient descent at rate 1 on ``f(x) = 2 x^2`` overshoots from 1 to
      -3; the guard halves the step twice, to the minimum:

      >>> import jax, jax.numpy as jnp, optax, lyapopt
      >>> f = lambda x: 2 * jnp.sum(x**2)
      >>> tx = optax.chain(optax.sgd(1.0), lyapopt.lyapunov_guard())
      >>> x = jnp.array([1.0])
      >>> updates, state = tx.update(jax.grad(f)(x), tx.init(x), x, value_fn=f)
      >>> optax.apply_updates(x, updates), int(state[1].backtracks)
      (Array([0.], dtype=float32), 2)
    """
    return _stage.transform(
        Guard(guard, tolerance, max_backtracks, decrease), axis_name
    )


@dataclasses.dataclass(frozen=True)
class Guard(_stage.EveryBatch):
    """The Lyapunov guard as a stage (:class:`lyapopt._stage.Stage`)."""

    mode: str
    tolerance: float | jax.Array
    max_backtracks: int | jax.Array
    decrease: float | jax.Array
    where: str = _WHERE
    needs_value_fn: bool = True

    def __post_init__(self) -> None:
        check_choice(_WHERE, "guard", self.mode, GUARD_MODES)
        check_number(
            _WHERE,
            "tolerance",
            self.tolerance,
            lower=0.0,
            fix="Pass 0.0 to forbid any rise of the loss.",
        )
        check_number(
            _WHERE,
            "decrease",
            self.decrease,
            lower=0.0,
            upper=1.0,
            upper_open=True,
            fix="Pass 0.0 to ask only for no rise, or 0.25 for a sufficient decrease.",
        )
        check_number(
            _WHERE,
            "max_backtracks",
            self.max_backtracks,
            lower=0.0,
            upper=_INT32_MAX,
            integer=True,
            fix="Pass 8, or 0 to skip a step that raises the loss (the count is int32).",
        )

    def init(self, params: optax.Params) -> LyapunovGuardState:
        dtype = _line.scalar_dtype(params)
        return LyapunovGuardState(
            value_before=_line.scalar(0, dtype),
            value_after=_line.scalar(0, dtype),
            scale=_line.scalar(1, dtype),
            backtracks=_line.scalar(0, jnp.int32),
            violations=_line.scalar(0, jnp.int32),
            nonfinite=_line.scalar(0, jnp.int32),
            value_mismatches=_line.scalar(0, jnp.int32),
            detached=_line.scalar(0, jnp.int32),
        )

    def judge(
        self, line: _stage.LineInfo, problem: _stage.Problem, dtype: jnp.dtype
    ) -> _Judge:
        """What every mode needs to judge the line's step."""
        value_fn, params = problem.value_fn, problem.params
        assert value_fn is not None  # needs_value_fn: `start` made sure
        known = (
            None
            if line.value is None or line.value_known is None
            else (line.value, line.value_known)
        )
        before = _value_before(value_fn, params, dtype, known, problem.loss_dtype)
        work = before.dtype
        norm = line.norm(work)
        if isinstance(self.decrease, (int, float)) and self.decrease == 0:
            required = jnp.zeros([], work)
        else:
            # g.u itself, not per unit: an overflow only makes a huge step
            # unacceptable.
            slope = _stage.grad_dot(
                _WHERE,
                line,
                problem,
                work,
                direction=lambda: _line.direction(line.step(), work),
                per_unit=False,
            )
            required = jnp.asarray(self.decrease).astype(work) * jnp.minimum(slope, 0)
        return _Judge(
            before=before,
            judged=jnp.isfinite(before) & jnp.isfinite(norm),
            required=required,
            value_of=lambda p: _line.value(_WHERE, value_fn, p, work),
            params=params,
            # The caps' factors are applied here: the capped step is never
            # a tree of its own, and the trial parameters take the
            # proposal's place (`test_memory`).
            trial=_line.moved(params, line.step()),
            bound=before + jnp.asarray(self.tolerance).astype(work),
            moves=norm > 0,
        )

    def step(
        self,
        line: _stage.LineInfo,
        state: LyapunovGuardState,
        problem: _stage.Problem,
    ) -> tuple[_stage.LineInfo, LyapunovGuardState]:
        dtype = state.scale.dtype
        params = problem.params
        judge = self.judge(line, problem, dtype)
        one = jnp.ones([], judge.before.dtype)
        after = jnp.where(judge.moves, judge.value_of(judge.trial), judge.before)
        trial = judge.trial
        holds = judge.holds(after, one)
        # The gradient promised a decrease that float resolution can show,
        # and the loss did not move at all: value_fn does not see the step.
        eps = jnp.finfo(judge.before.dtype).eps
        promised = -judge.required > 8 * eps * jnp.abs(judge.before)
        detached = judge.judged & judge.moves & promised & (after == judge.before)
        checkify.check(
            ~detached,
            "lyapunov_guard: the loss did not change at all under a step that its "
            "slope said would lower it by {promised}: `value_fn` does not depend "
            "on the parameters it is given. Use them: `value_fn=lambda p: "
            "loss_fn(p, batch)`, or with Flax NNX `lyapopt.flax.nnx_value_fn("
            "model, loss_fn, ...)`.",
            promised=-judge.required,
            debug=True,
        )
        value = problem.value
        mismatch = (
            jnp.asarray(False)
            if value is None
            else _mismatch(value, judge.before, problem.axis_name)
        )
        scale, backtracks = one, jnp.zeros([], jnp.int32)
        if self.mode == "check":
            checkify.check(
                holds | ~judge.judged,
                "lyapunov_guard: the step raised the loss from {before} to {after} "
                "(tolerance {tol}, decrease {sigma}).",
                before=judge.before,
                after=after,
                tol=jnp.asarray(self.tolerance),
                sigma=jnp.asarray(self.decrease),
                debug=True,
            )
            checkify.check(
                ~mismatch,
                "lyapunov_guard: `value` ({value}) is not value_fn(params) "
                "({before}): the guard judges value_fn's loss; pass the same batch "
                "and loss to both.",
                value=jnp.asarray(value if value is not None else 0),
                before=judge.before,
                debug=True,
            )
        elif self.mode == "skip":
            scale = jnp.where(holds, one, 0)
        elif self.mode == "backtrack":
            scale, after, backtracks, trial = _backtrack(
                judge, after, self.max_backtracks
            )
        if self.mode in ("skip", "backtrack"):
            after = jnp.where(scale > 0, after, judge.before)
        else:  # record, check: the step is taken unless it cannot be judged
            scale = jnp.where(judge.judged, one, 0)

        def count(event: jax.Array, n: jax.Array) -> jax.Array:
            return jnp.where(event, optax.safe_increment(n), n)

        # The step to the parameters judged, exactly (not the proposal
        # times the scale, which XLA would keep beside them; the one-ulp
        # mend is protected by test_guard's bfloat16 exact-step test).
        step = _line.difference(trial, params, line.updates)
        taken = jnp.where(scale > 0, one, 0)  # the halvings are in `trial`
        accepted = _line.scale_updates(step, taken)
        return line._replace(updates=accepted, factors=()), LyapunovGuardState(
            value_before=jnp.where(
                jnp.isfinite(judge.before), judge.before, state.value_before
            ).astype(dtype),
            value_after=jnp.where(jnp.isfinite(after), after, state.value_after).astype(
                dtype
            ),
            scale=scale.astype(dtype),
            backtracks=backtracks,
            violations=count(judge.judged & ~holds, state.violations),
            nonfinite=count(~judge.judged, state.nonfinite),
            value_mismatches=count(mismatch, state.value_mismatches),
            detached=count(detached, state.detached),
        )
