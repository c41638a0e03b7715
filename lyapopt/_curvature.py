"""The curvature cap: no step past the minimum of the local quadratic model."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.experimental import checkify

from lyapopt import _line, _stage
from lyapopt._checks import check_number
from lyapopt._options import DEFAULTS

_WHERE = "scale_by_curvature"


class ScaleByCurvatureState(NamedTuple):
    """State of :func:`scale_by_curvature`.

    Decisions (what the next step uses):

    Attributes:
      count: int32, steps taken (saturating); the curvature is measured
        when ``count % curvature_every == 0``.
      curvature: ``u.Hu / u.u``, last measured (reused between measures).
      value: ``V(theta)``, the primal of this step's pass where
        ``value_known``, else 0; :func:`lyapopt.stabilize`'s guard takes it
        instead of evaluating ``value_fn(params)`` again.
      value_known: bool, it was measured at this step, is finite, and the
        parameters were not promoted.
      slope: ``g.u`` along the step this cap returned (its scale applied; 0
        when it returned none): the guard's slope, so the gradient need not
        live beside the update.

    Diagnostics (read by :func:`lyapopt.stats`):

    Attributes:
      s_star: ``-g.u / u.Hu`` at the last finite step; ``+inf`` with no bound.
      scale: the factor applied to the updates at the last step.
      nonfinite: int32, steps whose update or curvature was not finite.
      detached: int32, steps where ``g.u = u.Hu = 0`` exactly for
        ``u != 0``: ``value_fn`` did not see the parameters.
    """

    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    s_star: jax.Array
    scale: jax.Array
    curvature: jax.Array
    nonfinite: jax.Array
    detached: jax.Array
    value: jax.Array
    value_known: jax.Array
    slope: jax.Array


def cap_scale(
    unit_slope: jax.Array,
    unit_curvature: jax.Array,
    norm: jax.Array,
    safety: jax.Array | float,
    max_scale: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(s*, scale, finite)`` for a step ``u`` of norm ``||u||``.

    ``unit_slope = g.u / ||u||`` and ``unit_curvature = u.Hu / ||u||^2``.
    Along ``u`` the quadratic model ``m(s) = V + s g.u + s^2/2 u.Hu`` is
    smallest at ``s* = -g.u / u.Hu``, computed as
    ``(-unit_slope / unit_curvature) / ||u||`` so that no intermediate
    overflows. The step is scaled by ``min(max_scale, safety * s*)``, by
    ``max_scale`` when ``u.Hu <= 0`` (the model gives no bound), and by 0 when
    ``g.u >= 0`` (not a descent direction) or a number is not finite.
    """
    dtype = unit_slope.dtype
    safety = jnp.asarray(safety).astype(dtype)
    max_scale = jnp.asarray(max_scale).astype(dtype)
    norm = norm.astype(dtype)
    positive = unit_curvature > 0
    length = -unit_slope / jnp.where(positive, unit_curvature, 1)
    s_star = jnp.where(positive, length / jnp.where(norm > 0, norm, 1), jnp.inf)
    finite = (
        jnp.isfinite(unit_slope) & jnp.isfinite(unit_curvature) & jnp.isfinite(norm)
    )
    ok = finite & (unit_slope < 0) & (norm > 0)
    scale = jnp.where(ok, jnp.minimum(max_scale, safety * s_star), 0)
    return s_star.astype(dtype), scale.astype(dtype), finite


def scale_by_curvature(
    safety: float | jax.Array = DEFAULTS.safety,  # pyright: ignore[reportArgumentType]
    *,
    curvature_every: int | jax.Array = DEFAULTS.curvature_every,
    max_scale: float | jax.Array = DEFAULTS.max_scale,
    axis_name: Any = DEFAULTS.axis_name,
) -> optax.GradientTransformationExtraArgs:
    r"""Caps the step at the minimum of the local quadratic model of the loss.

    With ``g.u`` and ``u.Hu`` the first and second derivatives of
    ``s -> V(theta + s u)`` at 0, the quadratic model
    ``m(s) = V + s g.u + s^2/2 u.Hu`` decreases for ``0 < s < 2 s*`` and is
    smallest at ``s* = -g.u / u.Hu``. The updates ``u`` are scaled by

    .. math::
      \min(\text{max\_scale},\ \text{safety} \cdot s^*)

    so ``safety = 1`` stops at the model's minimum and any
    ``0 < safety < 2`` decreases the model. When ``g.u >= 0`` the update is
    not a descent direction and no step is taken; when ``u.Hu <= 0``
    (negative curvature) the model gives no bound and the step is
    ``max_scale * u``; an update or a derivative that is not finite gives no
    step and is counted in the state (``nonfinite``). A non-zero update
    along which ``g.u`` and ``u.Hu`` are both exactly 0 is counted as
    ``detached``: ``value_fn`` does not depend on the parameters there
    (``lambda p: loss(model)`` ignores its argument), and a ``checkify``
    check reports it under ``chex.chexify``. The derivatives are
    taken along ``u / ||u||``, so an absurd learning rate is capped, not
    overflowed.

    The paper argues monotone decrease of ``V = L`` from a second-order
    Taylor expansion; this cap is this project's construction from that
    argument, not a formula of the paper.

    Both scalars come from one forward-over-forward call along ``u`` (about
    half the cost of a full Hessian-vector product). With
    ``curvature_every = k`` they are measured every ``k`` steps; in between
    the last curvature ``u.Hu / u.u`` is reused and ``g.u`` is the dot
    product of ``u`` with the ``grad`` extra argument when given (free),
    else one forward-mode pass. A reused curvature is not a guarantee: chain
    :func:`lyapopt.lyapunov_guard` after it.

    Args:
      safety: the fraction of ``s*`` to take, ``> 0``.
      curvature_every: measure the curvature every this many steps, ``>= 1``.
      max_scale: the largest factor, ``>= 1``; above 1 the cap may also
        lengthen a step that stops short of the model's minimum.
      axis_name: under ``jax.pmap`` or ``shard_map``, the axis over which
        ``value_fn``'s per-device loss is averaged (see
        :class:`lyapopt.StageOptions`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its update needs
      ``params`` and the extra argument ``value_fn`` (the loss on the current
      batch as a function of the parameters); ``grad`` is optional, and the
      other extra arguments that ``value_fn`` names are passed on to it.

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      On ``f(x) = 2 x^2`` from ``x = 1``, gradient descent at rate 1 would
      jump to ``-3``; the cap stops at the minimum:

      >>> import jax, jax.numpy as jnp, optax, lyapopt
      >>> f = lambda x: 2 * jnp.sum(x**2)
      >>> tx = optax.chain(optax.sgd(1.0), lyapopt.scale_by_curvature())
      >>> x = jnp.array([1.0])
      >>> updates, _ = tx.update(jax.grad(f)(x), tx.init(x), x, value_fn=f)
      >>> optax.apply_updates(x, updates)
      Array([0.], dtype=float32)
    """
    return _stage.transform(CurvatureCap(safety, curvature_every, max_scale), axis_name)


@dataclasses.dataclass(frozen=True)
class CurvatureCap(_stage.EveryBatch):
    """The curvature cap as a stage (:class:`lyapopt._stage.Stage`)."""

    safety: float | jax.Array
    curvature_every: int | jax.Array
    max_scale: float | jax.Array
    where: str = _WHERE
    needs_value_fn: bool = True

    def __post_init__(self) -> None:
        check_number(
            _WHERE,
            "safety",
            self.safety,
            lower=0.0,
            lower_open=True,
            fix="Pass 1.0 to stop at the model's minimum.",
        )
        check_number(
            _WHERE,
            "curvature_every",
            self.curvature_every,
            lower=1.0,
            integer=True,
            fix="Pass 1 to measure the curvature at every step.",
        )
        check_number(
            _WHERE,
            "max_scale",
            self.max_scale,
            lower=1.0,
            fix="Pass 1.0 never to lengthen a step.",
        )

    @property
    def every_step(self) -> bool:
        """Whether the curvature is measured at every step (known at trace time)."""
        return isinstance(self.curvature_every, int) and self.curvature_every == 1

    def init(self, params: optax.Params) -> ScaleByCurvatureState:
        dtype = _line.scalar_dtype(params)
        return ScaleByCurvatureState(
            count=_line.scalar(0, jnp.int32),
            s_star=_line.scalar(jnp.inf, dtype),
            scale=_line.scalar(1, dtype),
            curvature=_line.scalar(0, dtype),
            nonfinite=_line.scalar(0, jnp.int32),
            detached=_line.scalar(0, jnp.int32),
            value=_line.scalar(0, dtype),
            value_known=_line.scalar(False, jnp.bool_),
            slope=_line.scalar(0, dtype),
        )

    def step(
        self,
        line: _stage.LineInfo,
        state: ScaleByCurvatureState,
        problem: _stage.Problem,
    ) -> tuple[_stage.LineInfo, ScaleByCurvatureState]:
        value_fn, params = problem.value_fn, problem.params
        assert value_fn is not None  # needs_value_fn: `start` made sure
        # The state keeps its dtype (the parameters'); the scalars are worked
        # in the loss's, which may be wider (a float64 loss).
        dtype = state.scale.dtype
        d = line.direction(dtype)

        def measure() -> tuple[jax.Array, jax.Array, jax.Array]:
            v, slope, curv = _line.unit_derivatives(_WHERE, value_fn, params, d, dtype)
            return v.astype(dtype), slope, curv

        # The loss's dtype, which measure()'s derivatives have: reuse() must
        # return the same types under lax.cond.
        work = jnp.promote_types(dtype, problem.loss_dtype)

        def reuse() -> tuple[jax.Array, jax.Array, jax.Array]:
            slope = _stage.grad_dot(
                _WHERE,
                line,
                problem,
                work,
                direction=lambda: d,
                per_unit=True,
                norm=d.norm,
            )
            return jnp.full([], jnp.nan, dtype), slope, state.curvature.astype(work)

        if self.every_step:
            measured = jnp.asarray(True)
            v, slope, curv = measure()
        else:
            period = jnp.asarray(self.curvature_every).astype(state.count.dtype)
            measured = state.count % period == 0
            v, slope, curv = lax.cond(measured, measure, reuse)

        s_star, scale, finite = cap_scale(
            slope, curv, d.norm, self.safety, self.max_scale
        )
        keep = measured & finite & (d.norm > 0)
        detached = keep & (slope == 0) & (curv == 0)
        checkify.check(
            ~detached,
            "scale_by_curvature: the loss does not change along a non-zero update "
            "(g.u = u.Hu = 0): `value_fn` does not depend on the parameters it is "
            "given. Use them: `value_fn=lambda p: loss_fn(p, batch)`, or with Flax "
            "NNX `lyapopt.flax.nnx_value_fn(model, loss_fn, ...)`.",
            debug=True,
        )
        new_state = ScaleByCurvatureState(
            count=jnp.asarray(optax.safe_increment(state.count)),
            s_star=jnp.where(finite, s_star, state.s_star).astype(dtype),
            scale=scale.astype(dtype),
            curvature=jnp.where(keep, curv, state.curvature).astype(dtype),
            nonfinite=jnp.where(
                finite, state.nonfinite, optax.safe_increment(state.nonfinite)
            ),
            detached=jnp.where(
                detached, optax.safe_increment(state.detached), state.detached
            ),
            value=jnp.where(jnp.isfinite(v), v, 0).astype(dtype),
            value_known=measured & jnp.isfinite(v),
            # (g.u / ||u||) * ||scale u||: no overflow where the capped step's
            # norm is finite.
            slope=jnp.where(scale > 0, slope * (d.norm * scale), 0).astype(dtype),
        )
        # The factor is `scale` in the loss's dtype, as computed: the state's
        # copy is rounded to the parameters' (`test_protocol`).
        line = line.capped(scale, slope=new_state.slope)._replace(
            curvature=jnp.where(keep, curv, jnp.nan)
        )
        if self.every_step:
            # V(theta) is the primal of this pass: the guard takes it instead
            # of a second forward pass where XLA cannot share the user's.
            # (Measured every k steps, the guard evaluates V itself: a
            # lax.cond between the two would hide that evaluation from the
            # sharing on the other k - 1 steps.)
            line = line._replace(
                value=new_state.value, value_known=new_state.value_known
            )
        return line, new_state
