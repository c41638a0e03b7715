"""Three published loss-spike defences, as optax transformations.

The benchmark compares lyapopt with what a team would otherwise use against
loss spikes: ZClip (adaptive gradient-norm clipping), SPAM (Adam with
spike-aware clipping and momentum reset) and skipping the step on a loss
spike. Each is written from its paper's algorithm, with optax's building
blocks; everything jits, runs inside ``lax.scan`` and takes parameter trees
of any structure. The statistics are float32 scalars.

Where the papers leave a choice open, this module chooses as follows.

:func:`zclip` (Kumar et al. 2025, arXiv 2504.02507)

* Warmup statistics: the paper initialises mu and sigma from "the mean and
  standard deviation" of the warmup norms without saying which standard
  deviation; the population one (divide by N) is used, as in the official
  code. It is accumulated with Welford's running update, so the state holds
  the running mean and variance during warmup and no buffer of norms.
* The warmup is counted in *finite* norms: a non-finite norm neither counts
  nor enters the statistics, during warmup or after.
* No clipping at all during warmup. (The official code clips at a fixed
  ``max_grad_norm=1.0`` during warmup and takes the minimum of that and the
  adaptive threshold afterwards; the paper's algorithm has no such cap, so
  none is applied.)
* The warmup's last norm initialises the statistics and is not tested: the
  first step that can be clipped is step ``warmup_steps + 1``, as in the
  official code.
* Clipping: the "reciprocal" (``adaptive_scaling``) mode, the paper's
  default: where ``z > z_thresh`` the gradient is rescaled to the norm
  ``mu + (z_thresh**2 / z) * sigma``, and the EMA is updated with that
  clipped norm. The variance update uses the *updated* mean, as the paper's
  equations and the official code do.
* A non-finite gradient norm is passed through unchanged (neither clipped nor
  counted); pair with ``optax.apply_if_finite`` (or :func:`skip_on_spike`,
  whose loss is then non-finite too) to drop such steps.

:func:`scale_by_spam` / :func:`spam` (Huang et al., ICLR 2025, arXiv 2501.06842)

* The spike test ``g**2 > theta * v`` uses the *raw* second moment of the
  previous step (not bias-corrected), as Algorithm 1 and the official code
  do. It is applied only where ``v > 0``, element by element: right after a
  reset (and at the start) ``v`` is zero and the test would clip every entry
  to zero, and an entry whose gradient has been exactly zero so far (an
  embedding row not yet seen) would be frozen. The official code instead
  switches the test off for the first 20 steps after each reset
  (``grad_accu_steps``).
* Bias correction counts the steps since the last reset, so the first step
  after a reset is Adam's first step (``m_hat / sqrt(v_hat) = sign(g)``).
  The official code does not restart that count.
* The moments are reset after every ``reset_interval`` steps: the state
  after steps ``reset_interval``, ``2 * reset_interval``, ... holds zero
  moments, and the next step starts from them.
* Warmup after each reset (and at the start of training), over
  ``warmup_steps`` steps: the update is multiplied by
  ``0.5 * (1 - cos(pi * k / warmup_steps))``, ``k = 0, 1, ...`` the steps
  since the reset (``k = 0`` gives 0: the first step after a reset moves
  nothing but the moments; ``k >= warmup_steps`` gives 1). The official code
  warms up only after each reset, not at the start, and its multiplier
  starts from 0.01 (``1 - 0.99 * cosine``) instead of 0.
* Weight decay is decoupled, as in :func:`optax.adamw`:
  ``add_decayed_weights`` after the SPAM direction, before the learning rate,
  on all parameters; the warmup multiplier does not scale it (it does not in
  the official code either). The user's learning rate (or schedule, of the
  global step count) multiplies both.

:func:`skip_on_spike` (the automatic form of the manual "skip the batch,
roll back" of large-run reports)

* A step is skipped when its loss is not finite (always, even before the
  window is full), or when the window of the last ``window`` *accepted*
  losses is full and the loss exceeds ``factor`` times their median (for an
  even window, the mean of the two middle values, as ``jnp.median``). The
  test assumes positive losses, such as a cross-entropy.
* A skipped step returns zero updates and leaves the wrapped transformation's
  state, and the window, as they were. Wrap the whole optimizer (including
  any clipping stage with statistics, such as :func:`zclip`) so that nothing
  advances on a skipped step.
* The loss is also handed to the wrapped transformation as ``value`` when it
  takes extra arguments (optax's line searches, lyapopt's transforms).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

_INT32_MAX = int(jnp.iinfo(jnp.int32).max)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# The checks of the factories' arguments (here and in ``benchmarks.adagc``):
# each raises a ValueError that names the factory and the argument.


def check_positive(name: str, value: float, where: str) -> None:
    """``value`` is a finite real number above 0."""
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(
            f"{where}: `{name}` must be a finite number > 0, got {value!r}."
        )


def check_decay(name: str, value: float, where: str) -> None:
    """``value`` is a real number in [0, 1) (a decay rate)."""
    if not (_is_real(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{where}: `{name}` must be in [0, 1), got {value!r}.")


def check_count(name: str, value: int, where: str, lowest: int) -> None:
    """``value`` is an integer from ``lowest`` up that fits in int32."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(
            f"{where}: `{name}` must be an integer >= {lowest}, got {value!r}."
        )
    if value > _INT32_MAX:
        raise ValueError(f"{where}: `{name}` must fit in int32, got {value!r}.")


# --------------------------------------------------------------------------
# ZClip
# --------------------------------------------------------------------------


class ZClipState(NamedTuple):
    """State of :func:`zclip`."""

    count: jax.Array  # int32, finite norms collected in warmup (stops at warmup_steps)
    mean: jax.Array  # float32, mu: the warmup's running mean, then the EMA
    var: jax.Array  # float32, sigma^2: the warmup's running variance, then the EMA
    clipped: jax.Array  # int32, steps clipped so far


def zclip(
    alpha: float = 0.97,
    z_thresh: float = 2.5,
    warmup_steps: int = 25,
    eps: float = 1e-6,
) -> optax.GradientTransformation:
    r"""Clips the gradient when its global norm is an outlier (ZClip).

    The global norm :math:`g_t` is compared with exponential moving averages
    of its mean and variance,

    .. math::
        \mu_t = \alpha \mu_{t-1} + (1 - \alpha) g_t, \qquad
        \sigma^2_t = \alpha \sigma^2_{t-1} + (1 - \alpha) (g_t - \mu_t)^2 ,

    through the z-score :math:`z_t = (g_t - \mu_{t-1}) / (\sigma_{t-1} +
    \epsilon)`. Where :math:`z_t > z_{thres}` the gradient is rescaled to the
    norm :math:`\mu_{t-1} + (z_{thres}^2 / z_t)\, \sigma_{t-1}` (its
    direction kept), and the EMA is updated with that clipped norm.

    During the first ``warmup_steps`` (finite) norms nothing is clipped; the
    norms' mean and population variance then initialise :math:`\mu` and
    :math:`\sigma^2`. Non-finite norms leave the statistics unchanged and
    the gradient as it is.

    Args:
        alpha: Decay of the moving averages, in [0, 1).
        z_thresh: The z-score above which the gradient is clipped (> 0).
        warmup_steps: The number of finite norms collected before clipping
            starts (>= 1).
        eps: Added to the standard deviation in the z-score (> 0).

    Returns:
        A :class:`optax.GradientTransformation` whose state is a
        :class:`ZClipState`.

    References:
        Kumar et al., `ZClip: Adaptive Spike Mitigation for LLM Pre-Training
        <https://arxiv.org/abs/2504.02507>`_, 2025
    """
    check_decay("alpha", alpha, "zclip")
    check_positive("z_thresh", z_thresh, "zclip")
    check_count("warmup_steps", warmup_steps, "zclip", 1)
    check_positive("eps", eps, "zclip")

    def init_fn(params: Any) -> ZClipState:
        del params
        return ZClipState(
            count=jnp.zeros([], jnp.int32),
            mean=jnp.zeros([], jnp.float32),
            var=jnp.zeros([], jnp.float32),
            clipped=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: Any, state: ZClipState, params: Any = None
    ) -> tuple[Any, ZClipState]:
        del params
        norm = optax.tree.norm(optax.tree.cast(updates, jnp.float32))
        finite = jnp.isfinite(norm)
        warming = state.count < warmup_steps

        # Warmup: Welford's update of the running mean and population variance.
        n = (state.count + 1).astype(jnp.float32)
        delta = norm - state.mean
        warm_mean = state.mean + delta / n
        warm_var = state.var + (delta * (norm - warm_mean) - state.var) / n

        # After warmup: the z-score against the statistics so far.
        std = jnp.sqrt(state.var)
        z = (norm - state.mean) / (std + eps)
        spike = ~warming & finite & (z > z_thresh)
        safe_z = jnp.where(spike, z, 1.0)  # no 1/0 on the branch not taken
        threshold = state.mean + (z_thresh**2 / safe_z) * std
        effective = jnp.where(spike, threshold, norm)
        scale = jnp.where(spike, threshold / jnp.where(spike, norm, 1.0), 1.0)
        ema_mean = alpha * state.mean + (1 - alpha) * effective
        ema_var = alpha * state.var + (1 - alpha) * (effective - ema_mean) ** 2

        keep = ~finite
        mean = jnp.where(keep, state.mean, jnp.where(warming, warm_mean, ema_mean))
        var = jnp.where(keep, state.var, jnp.where(warming, warm_var, ema_var))
        count = jnp.where(finite & warming, state.count + 1, state.count)
        updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
        return updates, ZClipState(
            count=count.astype(jnp.int32),
            mean=mean.astype(jnp.float32),
            var=var.astype(jnp.float32),
            clipped=state.clipped + spike.astype(jnp.int32),
        )

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------
# SPAM
# --------------------------------------------------------------------------


class ScaleBySpamState(NamedTuple):
    """State of :func:`scale_by_spam`."""

    count: jax.Array  # int32, steps since the last reset, in [0, reset_interval)
    mu: Any  # first moment (zero right after a reset)
    nu: Any  # second moment (zero right after a reset)
    clipped: jax.Array  # int32, entries clipped as spikes at the last step


def _cosine_warmup(warmup_steps: int) -> optax.Schedule:
    """``k -> 0.5 * (1 - cos(pi * min(k, N) / N))``; constant 1 for ``N = 0``."""
    if warmup_steps == 0:
        return optax.constant_schedule(1.0)
    decay = optax.cosine_decay_schedule(1.0, warmup_steps)
    return lambda k: 1.0 - decay(k)


def scale_by_spam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    reset_interval: int = 500,
    spike_threshold: float = 5000.0,
    warmup_steps: int = 150,
) -> optax.GradientTransformation:
    r"""Rescales updates by SPAM: Adam with spike-aware clipping and resets.

    Each step, with :math:`v` the second moment of the previous step (raw,
    not bias-corrected) and :math:`\theta` the ``spike_threshold``, every
    entry with :math:`g_i^2 > \theta v_i` (and :math:`v_i > 0`) is replaced
    by :math:`\mathrm{sign}(g_i) \sqrt{\theta v_i}`. Adam's moments are then
    updated and bias-corrected with the number :math:`k + 1` of steps since
    the last reset, and the direction :math:`\hat m / (\sqrt{\hat v} +
    \epsilon)` is multiplied by the cosine warmup
    :math:`\tfrac12 (1 - \cos(\pi \min(k, N) / N))`, :math:`N` the
    ``warmup_steps``. After every ``reset_interval`` steps the moments are
    set to zero, which restarts both the bias correction and the warmup.

    The official code warms up only after each reset, from 0.01, not at the
    start; here the warmup also runs at the start of training, from 0.

    Args:
        b1: Decay of the first moment, in [0, 1).
        b2: Decay of the second moment, in [0, 1).
        eps: Added to the denominator.
        reset_interval: Steps between two resets of the moments (>= 1).
        spike_threshold: :math:`\theta`, the ratio :math:`g^2 / v` above
            which an entry is clipped (> 0).
        warmup_steps: Steps of the cosine warmup after each reset (>= 0;
            0 for none).

    Returns:
        A :class:`optax.GradientTransformation` whose state is a
        :class:`ScaleBySpamState`.

    References:
        Huang et al., `SPAM: Spike-Aware Adam with Momentum Reset for Stable
        LLM Training <https://arxiv.org/abs/2501.06842>`_, ICLR 2025
    """
    check_decay("b1", b1, "scale_by_spam")
    check_decay("b2", b2, "scale_by_spam")
    if not (_is_real(eps) and math.isfinite(eps) and eps >= 0):
        raise ValueError(
            f"scale_by_spam: `eps` must be a finite number >= 0, got {eps!r}."
        )
    check_count("reset_interval", reset_interval, "scale_by_spam", 1)
    check_positive("spike_threshold", spike_threshold, "scale_by_spam")
    check_count("warmup_steps", warmup_steps, "scale_by_spam", 0)
    warmup = _cosine_warmup(warmup_steps)

    def init_fn(params: Any) -> ScaleBySpamState:
        return ScaleBySpamState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
            clipped=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: Any, state: ScaleBySpamState, params: Any = None
    ) -> tuple[Any, ScaleBySpamState]:
        del params

        def spike(g: jax.Array, v: jax.Array) -> jax.Array:
            return (v > 0) & (g * g > spike_threshold * v)

        masks = jax.tree.map(spike, updates, state.nu)
        grads = jax.tree.map(
            lambda g, v, m: jnp.where(
                m, jnp.sign(g) * jnp.sqrt(spike_threshold * v), g
            ),
            updates,
            state.nu,
            masks,
        )
        clipped = sum(
            (jnp.sum(m, dtype=jnp.int32) for m in jax.tree.leaves(masks)),
            start=jnp.zeros([], jnp.int32),
        )

        mu = optax.tree.update_moment(grads, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2, 2)
        count_inc = state.count + 1  # < reset_interval + 1 <= 2**31: no overflow
        mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
        nu_hat = optax.tree.bias_correction(nu, b2, count_inc)
        multiplier = warmup(state.count)
        updates = jax.tree.map(
            lambda m, v: (m / (jnp.sqrt(v) + eps)) * jnp.asarray(multiplier, m.dtype),
            mu_hat,
            nu_hat,
        )

        reset = count_inc >= reset_interval
        mu = optax.tree.where(reset, optax.tree.zeros_like(mu), mu)
        nu = optax.tree.where(reset, optax.tree.zeros_like(nu), nu)
        return updates, ScaleBySpamState(
            count=jnp.where(reset, 0, count_inc).astype(jnp.int32),
            mu=optax.tree.cast_like(mu, state.mu),
            nu=optax.tree.cast_like(nu, state.nu),
            clipped=clipped,
        )

    return optax.GradientTransformation(init_fn, update_fn)


def spam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    reset_interval: int = 500,
    spike_threshold: float = 5000.0,
    warmup_steps: int = 150,
) -> optax.GradientTransformation:
    r"""SPAM with decoupled weight decay, as :func:`optax.adamw` is to Adam.

    The update is :math:`-\eta_t (d_t + \lambda \theta_t)`, with :math:`d_t`
    the direction of :func:`scale_by_spam` (its warmup included),
    :math:`\lambda` the ``weight_decay`` (on all parameters, not warmed up)
    and :math:`\eta_t` the learning rate, or the schedule evaluated at the
    global step count (it does not restart at the resets).

    Args:
        learning_rate: A learning rate, or a schedule of the step count.
        b1: Decay of the first moment.
        b2: Decay of the second moment.
        eps: Added to the denominator.
        weight_decay: The decoupled weight decay :math:`\lambda`.
        reset_interval: Steps between two resets of the moments.
        spike_threshold: The ratio :math:`g^2 / v` above which an entry is
            clipped.
        warmup_steps: Steps of the cosine warmup after each reset (and at the
            start); 0 for none.

    Returns:
        A :class:`optax.GradientTransformation`: ``optax.chain`` of
        :func:`scale_by_spam`, ``optax.add_decayed_weights`` and
        ``optax.scale_by_learning_rate``.

    References:
        Huang et al., `SPAM: Spike-Aware Adam with Momentum Reset for Stable
        LLM Training <https://arxiv.org/abs/2501.06842>`_, ICLR 2025
    """
    return optax.chain(
        scale_by_spam(b1, b2, eps, reset_interval, spike_threshold, warmup_steps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


# --------------------------------------------------------------------------
# Skip the step on a loss spike
# --------------------------------------------------------------------------


class SkipOnSpikeState(NamedTuple):
    """State of :func:`skip_on_spike`."""

    inner_state: Any  # the wrapped transformation's state
    losses: jax.Array  # float32 [window], ring buffer of accepted losses
    filled: jax.Array  # int32, entries of `losses` filled (stops at window)
    index: jax.Array  # int32, the slot the next accepted loss goes to
    skipped: jax.Array  # int32, steps skipped so far


def skip_on_spike(
    inner: optax.GradientTransformation,
    factor: float = 1.5,
    window: int = 50,
) -> optax.GradientTransformationExtraArgs:
    """Skips the step when the loss spikes above the recent median.

    The update takes the batch's loss as ``value``. Once ``window`` losses
    have been accepted, a step whose loss exceeds ``factor`` times the median
    of the last ``window`` accepted ones is skipped; so is a step whose loss
    is not finite, at any time. A skipped step returns zero updates, keeps
    ``inner``'s state and the window as they were, and counts in
    ``skipped``. Any other step is ``inner``'s, and its loss enters the
    window.

    Example::

        tx = skip_on_spike(optax.adamw(1e-3))
        updates, state = tx.update(grads, state, params, value=loss)

    Args:
        inner: The transformation applied on the steps not skipped. When it
            takes extra arguments, it gets them, and ``value``.
        factor: A loss above ``factor`` times the window's median is a spike
            (> 0).
        window: The number of accepted losses whose median is the reference
            (>= 1); nothing finite is skipped until it is full.

    Returns:
        A :class:`optax.GradientTransformationExtraArgs` whose state is a
        :class:`SkipOnSpikeState`.
    """
    check_positive("factor", factor, "skip_on_spike")
    check_count("window", window, "skip_on_spike", 1)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: Any) -> SkipOnSpikeState:
        return SkipOnSpikeState(
            inner_state=inner.init(params),
            losses=jnp.zeros([window], jnp.float32),
            filled=jnp.zeros([], jnp.int32),
            index=jnp.zeros([], jnp.int32),
            skipped=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: Any,
        state: SkipOnSpikeState,
        params: Any = None,
        *,
        value: jax.Array,
        **extra_args: Any,
    ) -> tuple[Any, SkipOnSpikeState]:
        if jnp.shape(value) != ():
            raise ValueError(
                "skip_on_spike: `value` must be the scalar loss of the batch, "
                f"got shape {jnp.shape(value)}."
            )
        loss = jnp.asarray(value, jnp.float32)
        full = state.filled >= window
        spike = full & (loss > factor * jnp.median(state.losses))
        skip = spike | ~jnp.isfinite(loss)
        accept = ~skip

        new_updates, new_inner = inner.update(
            updates, state.inner_state, params, value=value, **extra_args
        )
        new_updates = optax.tree.where(
            skip, optax.tree.zeros_like(new_updates), new_updates
        )
        inner_state = optax.tree.where(skip, state.inner_state, new_inner)
        losses = jnp.where(accept, state.losses.at[state.index].set(loss), state.losses)
        return new_updates, SkipOnSpikeState(
            inner_state=inner_state,
            losses=losses,
            filled=jnp.where(
                accept, jnp.minimum(state.filled + 1, window), state.filled
            ),
            index=jnp.where(accept, (state.index + 1) % window, state.index),
            skipped=state.skipped + skip.astype(jnp.int32),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
