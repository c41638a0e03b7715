"""The paper's method as ready-made optimizers."""

from __future__ import annotations

import jax
import optax

from lyapopt._checks import check_bool, check_number
from lyapopt._modulation import scale_by_gradient_modulation
from lyapopt._schedule import exponential_schedule, scale_by_learning_rate
from lyapopt._stabilize import stabilize


def _check_common(
    where: str, learning_rate: optax.ScalarOrSchedule, curvature: bool
) -> None:
    if not callable(learning_rate):
        check_number(
            where,
            "learning_rate",
            learning_rate,
            lower=0.0,
            lower_open=True,
            fix="Pass a positive number or an optax schedule.",
        )
    check_bool(where, "curvature", curvature)


def _decayed(
    learning_rate: optax.ScalarOrSchedule,
    decay_rate: float | jax.Array,
    steps_per_epoch: int | jax.Array,
) -> optax.GradientTransformationExtraArgs:
    """``-eta(t)`` with the exponential decay; a schedule is decayed on top."""
    if callable(learning_rate):
        decay = exponential_schedule(1.0, decay_rate, steps_per_epoch=steps_per_epoch)
        return scale_by_learning_rate(lambda t: learning_rate(t) * decay(t))
    return scale_by_learning_rate(
        exponential_schedule(learning_rate, decay_rate, steps_per_epoch=steps_per_epoch)
    )


def lyapunov_sgd(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    decay_rate: float | jax.Array = 1e-3,
    steps_per_epoch: int | jax.Array = 1,
    modulation: float | jax.Array | None = 1.0,
    momentum: float | jax.Array | None = None,
    curvature: bool = True,
    safety: float | jax.Array = 1.0,
    curvature_every: int | jax.Array = 1,
    max_scale: float | jax.Array = 1.0,
    level: float | jax.Array | None = None,
    guard: str | None = "backtrack",
    decrease: float | jax.Array = 0.25,
) -> optax.GradientTransformationExtraArgs:
    r"""The paper's method: decayed, modulated gradient descent, capped and guarded.

    The step before the cap and the guard is

    .. math::
      u_t = -\frac{\eta_0 e^{-\alpha t}}{1 + \beta \lVert g_t \rVert} \, g_t

    (with ``momentum``, the modulated gradients are accumulated by
    :func:`optax.trace` first). The exponential decay and the modulation
    ``1 / (1 + ||g||)`` are the paper's (Chaudhary et al., JAIR 2025); their
    product and the strength ``beta`` are our reading. The step is then
    capped at the minimum of the local quadratic model of the loss, and
    checked by the Lyapunov guard (both this project's construction from the
    paper's Taylor argument; see :func:`lyapopt.stabilize`).

    With ``curvature=False, guard=None`` it is the paper's first-order rule
    and needs no ``value_fn``; a gradient with a NaN or an Inf still gives
    no step (the modulation's own test, at no cost).

    Args:
      learning_rate: ``eta_0`` or a schedule (decayed on top). The default,
        1.0, is meant for use untuned: the modulation bounds the step's norm
        by ``eta_0 / beta`` and the cap shortens it to the model's minimum.
      decay_rate: ``alpha``, the decay per epoch.
      steps_per_epoch: steps in an epoch (1: ``alpha`` is per step).
      modulation: ``beta``; ``None`` or 0 turns the modulation off.
      momentum: the :func:`optax.trace` decay, or ``None``.
      curvature: whether to cap the step at the model's minimum.
      safety: the cap's fraction of the model's minimum.
      curvature_every: measure the curvature every this many steps.
      max_scale: the most the cap may lengthen a step.
      level: the energy level of :func:`lyapopt.scale_by_level`, or ``None``.
      guard: the guard's mode (``"backtrack"``, ``"skip"``, ``"record"``,
        ``"check"``) or ``None``.
      decrease: the guard's sufficient-decrease ``sigma`` (see
        :func:`lyapopt.lyapunov_guard`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Pass ``value`` and
      ``value_fn`` to its update when the cap, the level or the guard is on.
    """
    where = "lyapunov_sgd"
    _check_common(where, learning_rate, curvature)
    stages = dict(
        curvature_every=curvature_every,
        max_scale=max_scale,
        level=level,
        guard=guard,
        decrease=decrease,
    )
    if modulation is not None:
        check_number(
            where,
            "modulation",
            modulation,
            lower=0.0,
            fix="Pass 1.0 for the paper's rule, or None to turn it off.",
        )
    if momentum is not None:
        check_number(
            where,
            "momentum",
            momentum,
            lower=0.0,
            upper=1.0,
            upper_open=True,
            fix="Pass a decay such as 0.9, or None for no momentum.",
        )
    direction = optax.chain(
        scale_by_gradient_modulation(modulation)
        if modulation is not None
        else optax.identity(),
        optax.trace(momentum) if momentum is not None else optax.identity(),
        _decayed(learning_rate, decay_rate, steps_per_epoch),
    )
    if not curvature and guard is None and level is None and modulation is not None:
        # The paper's first-order rule: the modulation already drops a
        # non-finite gradient (its norm is computed anyway), so no
        # apply_if_finite, whose lax.cond costs ~15% of a small model's step.
        return direction
    return stabilize(direction, safety=safety if curvature else None, **stages)


def lyapunov_adam(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    *,
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    decay_rate: float | jax.Array = 1e-3,
    steps_per_epoch: int | jax.Array = 1,
    curvature: bool = True,
    safety: float | jax.Array = 1.0,
    curvature_every: int | jax.Array = 1,
    max_scale: float | jax.Array = 1.0,
    level: float | jax.Array | None = None,
    guard: str | None = "backtrack",
    decrease: float | jax.Array = 0.25,
) -> optax.GradientTransformationExtraArgs:
    """Adam's direction under the paper's decay, the curvature cap and the guard.

    ``optax.scale_by_adam`` gives the direction, the exponential schedule of
    :func:`lyapopt.exponential_schedule` its length, and
    :func:`lyapopt.stabilize` the cap and the guard. The Adam direction is
    already normalised, so there is no gradient-norm modulation.

    Args:
      learning_rate: ``eta_0`` or a schedule (decayed on top). The default,
        1e-2, is larger than Adam's usual 1e-3 on purpose: the cap shortens
        steps that overshoot. Much larger rates stay stable but, with
        minibatches, the cap then fits each batch's own quadratic model and
        test accuracy suffers (``benchmarks/RESULTS.md``).
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      eps: Adam's epsilon.
      decay_rate: ``alpha``, the decay per epoch.
      steps_per_epoch: steps in an epoch (1: ``alpha`` is per step).
      curvature: whether to cap the step at the model's minimum.
      safety: the cap's fraction of the model's minimum.
      curvature_every: measure the curvature every this many steps.
      max_scale: the most the cap may lengthen a step.
      level: the energy level of :func:`lyapopt.scale_by_level`, or ``None``.
      guard: the guard's mode, or ``None``.
      decrease: the guard's sufficient-decrease ``sigma``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Pass ``value`` and
      ``value_fn`` to its update when the cap, the level or the guard is on.
    """
    where = "lyapunov_adam"
    _check_common(where, learning_rate, curvature)
    stages = dict(
        curvature_every=curvature_every,
        max_scale=max_scale,
        level=level,
        guard=guard,
        decrease=decrease,
    )
    for name, beta in (("b1", b1), ("b2", b2)):
        check_number(
            where,
            name,
            beta,
            lower=0.0,
            upper=1.0,
            upper_open=True,
            fix="Pass a decay in [0, 1) such as 0.9 (b1) or 0.999 (b2).",
        )
    check_number(
        where, "eps", eps, lower=0.0, fix="Pass a small positive number such as 1e-8."
    )
    direction = optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        _decayed(learning_rate, decay_rate, steps_per_epoch),
    )
    return stabilize(direction, safety=safety if curvature else None, **stages)
