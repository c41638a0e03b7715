"""The paper's method as ready-made optimizers."""

from __future__ import annotations

from typing import Any

import jax
import optax

from lyapopt import _options
from lyapopt._checks import check_number
from lyapopt._modulation import scale_by_gradient_modulation
from lyapopt._options import DEFAULTS, StageOptions
from lyapopt._schedule import exponential_schedule, scale_by_logged_learning_rate
from lyapopt._stabilize import stabilize


def _check_rate(where: str, learning_rate: optax.ScalarOrSchedule) -> None:
    if not callable(learning_rate):
        check_number(
            where,
            "learning_rate",
            learning_rate,
            lower=0.0,
            lower_open=True,
            fix="Pass a positive number or an optax schedule.",
        )


def _rate(
    learning_rate: optax.ScalarOrSchedule,
    decay_constant: float | jax.Array,
    steps_per_epoch: int | jax.Array,
) -> optax.GradientTransformationExtraArgs:
    """``-eta(t)``, with the paper's exponential decay on top when asked."""
    if _no_decay(decay_constant):
        return scale_by_logged_learning_rate(learning_rate)
    decay = exponential_schedule(1.0, decay_constant, steps_per_epoch=steps_per_epoch)
    if callable(learning_rate):
        return scale_by_logged_learning_rate(lambda t: learning_rate(t) * decay(t))
    return scale_by_logged_learning_rate(lambda t: learning_rate * decay(t))


def _no_decay(decay_constant: float | jax.Array) -> bool:
    return isinstance(decay_constant, (int, float)) and decay_constant == 0


def _measured(
    where: str,
    learning_rate: optax.ScalarOrSchedule,
    decay_constant: float | jax.Array,
    steps_per_epoch: int | jax.Array,
    options: StageOptions,
) -> tuple[optax.GradientTransformationExtraArgs, StageOptions]:
    """The direction's rate and the stage options.

    With ``rate_every`` the direction keeps the constant ``learning_rate``
    (where the measured rate starts) and the paper's decay moves into
    ``rate_shape``, which multiplies the measured rate: a decay inside the
    direction would be undone by the measurement.
    """
    if options.rate_every is None:
        return _rate(learning_rate, decay_constant, steps_per_epoch), options
    if callable(learning_rate):
        raise ValueError(
            f"{where}: with `rate_every` the rate is measured, and a schedule in "
            "`learning_rate` would be undone by the measurement. Pass the rate "
            "to start from as `learning_rate` (a number) and the schedule's "
            "shape, with value 1 at step 0, as `rate_shape=` (e.g. "
            "`optax.cosine_decay_schedule(1.0, steps)`)."
        )
    shape = options.rate_shape
    if not _no_decay(decay_constant):
        decay = exponential_schedule(
            1.0, decay_constant, steps_per_epoch=steps_per_epoch
        )
        if shape is None:
            shape = decay
        elif callable(shape):
            user = shape
            shape = lambda t: decay(t) * user(t)  # noqa: E731
        else:
            factor = shape
            shape = lambda t: decay(t) * factor  # noqa: E731
    rate = scale_by_logged_learning_rate(learning_rate)
    return rate, options._replace(rate_shape=shape)


def lyapunov_sgd(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    momentum: float | jax.Array | None = None,
    nesterov: bool = False,
    accumulator_dtype: jax.typing.DTypeLike | None = None,
    *,
    modulation: float | jax.Array | None = 1.0,
    decay_constant: float | jax.Array = 0.0,
    steps_per_epoch: int | jax.Array = 1,
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
    r"""The paper's method: modulated gradient descent, capped and guarded.

    The step before the cap and the guard is

    .. math::
      u_t = -\frac{\eta(t)}{1 + \beta \lVert g_t \rVert} \, g_t,
      \qquad \eta(t) = \eta_0 e^{-\alpha t}

    (with ``momentum``, the modulated gradients are accumulated by
    :func:`optax.trace` first). The modulation ``1 / (1 + ||g||)`` and the
    exponential decay are the paper's; their product and the strength
    ``beta`` are our reading. The step is then capped at the minimum of the
    local quadratic model of the loss and checked by the Lyapunov guard
    (this project's construction from the paper's Taylor argument; see
    :func:`lyapopt.stabilize`, whose options ``spike_factor``
    to ``axis_name`` are forwarded in full). With ``rate_every`` the rate is
    measured (:func:`lyapopt.scale_by_held_out_rate`), starting from
    ``learning_rate``, and the paper's decay multiplies it.

    The decay is off by default (``decay_constant = 0``), so a run of any
    length keeps learning; with ``alpha > 0`` the rate after ``T`` steps is
    ``exp(-alpha T)`` of ``eta_0`` (see :func:`lyapopt.exponential_schedule`
    for choosing ``alpha`` from the length of a run).

    With ``safety=None, guard=None`` it is the paper's first-order rule and
    needs no ``value_fn``; a gradient with a NaN or an Inf still gives no
    step (the modulation's own test, at no cost).

    Args:
      learning_rate: ``eta_0`` or an optax schedule. The default, 1.0, is
        meant for use untuned: the modulation bounds the step's norm by
        ``eta_0 / beta`` and the cap shortens it to the model's minimum.
      momentum: the :func:`optax.trace` decay, or ``None``.
      nesterov: Nesterov momentum, as in :func:`optax.sgd`.
      accumulator_dtype: the momentum's dtype, as in :func:`optax.sgd`.
      modulation: ``beta``; ``None`` (or 0) turns the modulation off.
      decay_constant: the paper's ``alpha >= 0``, per epoch; 0: no decay.
      steps_per_epoch: steps in an epoch (1: ``alpha`` is per step).
      spike_factor: see :func:`lyapopt.stabilize` (``None``: no loss
        reference).
      spike_window: see :func:`lyapopt.stabilize`.
      max_skips: see :func:`lyapopt.stabilize`.
      rate_every: measure the rate every this many steps
        (:func:`lyapopt.scale_by_held_out_rate`); ``None``: off. With it,
        ``learning_rate`` (a number) is where the measured rate starts,
        and the paper's decay multiplies the measured rate.
      rate_until: see :func:`lyapopt.stabilize`.
      rate_shape: see :func:`lyapopt.stabilize`.
      safety: see :func:`lyapopt.stabilize` (``None``: no curvature cap).
      curvature_every: see :func:`lyapopt.stabilize`.
      max_scale: see :func:`lyapopt.stabilize`.
      level: see :func:`lyapopt.stabilize` (``None``: no level cap).
      guard: see :func:`lyapopt.stabilize` (``None``: no guard).
      tolerance: see :func:`lyapopt.stabilize`.
      max_backtracks: see :func:`lyapopt.stabilize`.
      decrease: see :func:`lyapopt.stabilize`.
      axis_name: see :func:`lyapopt.stabilize` (``jax.pmap``, ``shard_map``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Pass ``value_fn`` (and
      ``value``) to its update when the cap, the level or the guard is on.

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, lyapopt
      >>> f = lambda x: jnp.sum((x - jnp.array([1.0, -1.0, 1.0])) ** 2)
      >>> tx = lyapopt.lyapunov_sgd()
      >>> x = jnp.array([-1.0, 10.0, 1.0])
      >>> state = tx.init(x)
      >>> for _ in range(20):
      ...     loss, grads = jax.value_and_grad(f)(x)
      ...     updates, state = tx.update(grads, state, x, value=loss, value_fn=f)
      ...     x = optax.apply_updates(x, updates)
      >>> x.round(3)
      Array([ 1., -1.,  1.], dtype=float32)
    """
    where = "lyapunov_sgd"
    options = _options.collect(locals())
    _check_rate(where, learning_rate)
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
    rate, options = _measured(
        where, learning_rate, decay_constant, steps_per_epoch, options
    )
    direction = optax.chain(
        scale_by_gradient_modulation(modulation)
        if modulation is not None
        else optax.identity(),
        optax.trace(momentum, nesterov, accumulator_dtype)
        if momentum is not None
        else optax.identity(),
        rate,
    )
    first_order = safety is None and guard is None and level is None
    if (
        first_order
        and rate_every is None
        and spike_factor is None
        and modulation is not None
    ):
        # The paper's first-order rule: the modulation already drops a
        # non-finite gradient (its norm is computed anyway), so no
        # apply_if_finite, whose lax.cond costs ~15% of a small model's step.
        return direction
    return stabilize(direction, **options._asdict())


def lyapunov_adam(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nesterov: bool = False,
    decay_constant: float | jax.Array = 0.0,
    steps_per_epoch: int | jax.Array = 1,
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
    """Adam's direction under the curvature cap and the Lyapunov guard.

    :func:`optax.scale_by_adam` gives the direction (same positional
    arguments as :func:`optax.adam`), the learning rate its length, and
    :func:`lyapopt.stabilize` the cap and the guard (options ``spike_factor``
    to ``axis_name``, forwarded in full). The Adam direction is already
    normalised, so there is no gradient-norm modulation. With
    ``rate_every`` the rate is measured
    (:func:`lyapopt.scale_by_held_out_rate`), starting from
    ``learning_rate``, and the paper's decay multiplies it.

    The decay is off by default (``decay_constant = 0``): Adam moves each
    coordinate by about ``eta(t)`` a step, so a decay ``alpha`` limits the
    distance a whole run can travel to ``eta_0 / alpha`` (10 for the 0.1
    defaults), however long it is. Give ``alpha`` from the length of the run
    (:func:`lyapopt.exponential_schedule`), or pass any optax schedule.

    Args:
      learning_rate: ``eta_0`` or an optax schedule. The default, 1e-2, is
        larger than Adam's usual 1e-3 on purpose: the cap shortens steps that
        overshoot.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      eps: Adam's epsilon.
      eps_root: Adam's epsilon inside the square root.
      mu_dtype: the first moment's dtype, as in :func:`optax.adam`.
      nesterov: NAdam's Nesterov momentum, as in :func:`optax.adam`.
      decay_constant: the paper's ``alpha >= 0``, per epoch; 0: no decay.
      steps_per_epoch: steps in an epoch (1: ``alpha`` is per step).
      spike_factor: see :func:`lyapopt.stabilize` (``None``: no loss
        reference).
      spike_window: see :func:`lyapopt.stabilize`.
      max_skips: see :func:`lyapopt.stabilize`.
      rate_every: measure the rate every this many steps
        (:func:`lyapopt.scale_by_held_out_rate`); ``None``: off. With it,
        ``learning_rate`` (a number) is where the measured rate starts,
        and the paper's decay multiplies the measured rate.
      rate_until: see :func:`lyapopt.stabilize`.
      rate_shape: see :func:`lyapopt.stabilize`.
      safety: see :func:`lyapopt.stabilize` (``None``: no curvature cap).
      curvature_every: see :func:`lyapopt.stabilize`.
      max_scale: see :func:`lyapopt.stabilize`.
      level: see :func:`lyapopt.stabilize` (``None``: no level cap).
      guard: see :func:`lyapopt.stabilize` (``None``: no guard).
      tolerance: see :func:`lyapopt.stabilize`.
      max_backtracks: see :func:`lyapopt.stabilize`.
      decrease: see :func:`lyapopt.stabilize`.
      axis_name: see :func:`lyapopt.stabilize` (``jax.pmap``, ``shard_map``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Pass ``value_fn`` (and
      ``value``) to its update when the cap, the level or the guard is on.

    References:
      Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.

      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, lyapopt
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> tx = lyapopt.lyapunov_adam(1e3)  # an absurd rate stays stable
      >>> x = jnp.zeros(3)
      >>> state = tx.init(x)
      >>> for _ in range(5):
      ...     loss, grads = jax.value_and_grad(f)(x)
      ...     updates, state = tx.update(grads, state, x, value=loss, value_fn=f)
      ...     x = optax.apply_updates(x, updates)
      >>> bool(f(x) < 1e-6)
      True
    """
    where = "lyapunov_adam"
    options = _options.collect(locals())
    _check_rate(where, learning_rate)
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
    for name, value in (("eps", eps), ("eps_root", eps_root)):
        check_number(
            where, name, value, lower=0.0, fix="Pass a small number such as 1e-8."
        )
    rate, options = _measured(
        where, learning_rate, decay_constant, steps_per_epoch, options
    )
    direction = optax.chain(
        optax.scale_by_adam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
        ),
        rate,
    )
    return stabilize(direction, **options._asdict())
