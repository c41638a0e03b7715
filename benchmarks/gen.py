"""GeN, the generalized Newton's method of Bu and Xu, as an optax peer.

A peer of the benchmarks, not part of lyapopt: written from the paper and
from the authors' public code (``lr_parabola`` in the ``GeN`` package,
``gen-optim`` 0.1.1 on PyPI), with the choices below where an optax
transform had to choose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

# The extra argument that carries the loss on the fresh minibatch.
FRESH = "fresh_value_fn"


class ScaleByGeNState(NamedTuple):
    """State of :func:`gen`.

    Attributes:
      count: int32, steps taken; the rate is measured at the steps with
        ``(count + 1) % every == 0`` (the authors' ``(batch_idx + 1) %
        lazy_freq == 0``).
      rate: GeN's learning rate as a multiple of the base optimizer's own
        (starts at 1): the step is ``shape(count) * rate * u``.
      base: the base optimizer's state.
      scale: the factor applied at the last step, ``shape * rate``.
      optimum: the fitted best multiple of ``u`` at the last accepted fit.
      r2: the fit's ``R^2`` at the last measurement.
      accepted: int32, fits accepted.
      rejected: int32, fits refused (curvature or slope not positive,
        ``R^2`` too low).
      failed: int32, measurements with a loss that was not finite (the
        rate was halved, as the authors' ``except`` branch does).
    """

    count: jax.Array
    rate: jax.Array
    base: optax.OptState
    scale: jax.Array
    optimum: jax.Array
    r2: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    failed: jax.Array


def gen(
    base: optax.GradientTransformation,
    every: int = 4,
    *,
    shape: optax.ScalarOrSchedule | None = None,
    factors: Sequence[float] = (-1.0, 0.0, 1.0),
    min_r2: float = 0.99,
    smoothing: float = 0.1,
    clamp: float = 2.0,
) -> optax.GradientTransformationExtraArgs:
    r"""GeN: the learning rate from a parabola fitted to the loss on a fresh
    minibatch along the base optimizer's step.

    Let ``u_t`` be the base optimizer's update (at its own, constant,
    rate: the direction and its length) and ``r`` the state's rate. Every
    ``every`` steps GeN evaluates the loss on a *fresh* minibatch at
    ``theta_t + f r u_t`` for each ``f`` in ``factors`` (default ``-1, 0,
    1``), fits by least squares

    .. math::
      L(\theta_t + x u_t) - L(\theta_t) \approx \tfrac12 A x^2 - B x ,

    (the authors' ``fit_func2``: no intercept, ``A = u.Hu``, ``B = -g.u``)
    and, where ``A > 0``, ``B > 0`` and ``R^2 > min_r2``, sets

    .. math::
      r \leftarrow (1 - w)\, r + w\, \operatorname{clip}(B / A,\ r / c,\ c\, r),

    ``w = 0.1``, ``c = 2``. Where a loss is not finite the rate is halved
    (the authors' ``except`` branch, which catches the fit's failure). The
    step is ``shape(t) * r * u_t``.

    From the paper and the authors' code: the three losses on a fresh
    batch, the parabola through the origin, the acceptance test
    (``gHg > 0 and Gg > 0 and R^2 > 0.99``), the smoothing and the clamp,
    the lazy update every 4-8 steps, the outside decay (their ``scale``).

    Where this transform had to choose (the authors' code is a PyTorch
    function called between ``backward()`` and ``optimizer.step()``):

    - **The fresh batch** comes as the extra argument ``fresh_value_fn``:
      the loss on a minibatch the step's gradient was not computed from.
      The authors draw it from a second iterator over the training loader
      (``tr_iter``), an independent shuffle of the training set; the
      benchmarks' runner passes exactly that (``Problem.fresh_indices``: a
      second shuffle with its own seed). Only where a caller passes no
      fresh rows does the runner use the next step's batch.
    - **How many points**: ``factors = (-1, 0, 1)``, the authors' default
      ``lr_factor``. With three points and two parameters through the
      origin the fit is exact, so ``R^2 = 1`` and the ``R^2`` test never
      refuses a fit: it bites only with more points (e.g. ``(-2, -1, 0, 1,
      2)``), which the test suite checks. The ``R^2`` is sklearn's
      ``r2_score`` (about the mean of the losses' differences).
    - **Where the probes lie**: at ``f r u`` with the *unshaped* rate
      ``r``. The authors probe at their optimizer's current rate, into
      which their ``scale`` has been folded; with a warmup that starts at 0
      (the benchmarks' recipe) shaped probes would all coincide at step 0.
      On a quadratic the fitted optimum does not depend on the probes'
      spread.
    - **Where the schedule multiplies**: outside the state, ``step =
      shape(t) r u`` (the paper's and the README's formula
      ``w_{t+1} = w_t - (1 - t/T) g.Gg / g.Hg``, with ``r`` the smoothed
      optimum). The authors' code multiplies only the new measurement
      inside the smoothing, ``lr <- 0.9 lr + 0.1 scale clip(lr*, ...)``,
      which lags the shape by about ten measurements; with a shape that
      starts at 0 it would also pull the rate down during the warmup.
    - **The initial rate**: the base optimizer's own (``r = 1``), as the
      authors start from the optimizer's ``lr``.
    - **The step of a measuring iteration**: the rate measured at step
      ``t`` is used for step ``t`` (the authors call ``lr_parabola`` before
      ``optimizer.step()``). The base optimizer is updated once: the
      authors' function takes an ``optimizer.step()`` of its own to find
      the direction, so at a measuring step their Adam moments see the same
      gradient twice; here the base's update is computed once and reused.
    - **Everything of the base's update is the direction**, weight decay
      included (the authors' probes take their optimizer's whole step).

    Cost: ``len(factors)`` forward passes on the fresh batch every
    ``every`` steps, inside a ``lax.cond``.

    Args:
      base: the base optimizer at a constant rate (GeN's ``lr`` starts
        there); any optax transformation.
      every: measure every this many steps (the authors' ``lazy_freq``, 4
        to 8).
      shape: the schedule shape multiplying the rate, an optax schedule
        (e.g. the recipe's warmup-cosine with peak 1) or a number; ``None``:
        1.
      factors: the multiples of ``r u`` at which the loss is evaluated;
        must contain 0 exactly once.
      min_r2: the fit is accepted where its ``R^2`` exceeds this.
      smoothing: the weight ``w`` of a new measurement.
      clamp: the measurement is clipped to ``[r / c, c r]``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose update needs
      ``params`` and ``fresh_value_fn``; its other extra arguments go to
      ``base``.

    References:
      Bu and Xu, "Gradient descent with generalized Newton's method", ICLR
      2025, arXiv:2407.02772; code: the ``gen-optim`` package
      (``GeN.lr_parabola``).
    """
    factors = tuple(float(f) for f in factors)
    if factors.count(0.0) != 1 or len(factors) < 3:
        raise ValueError(
            f"gen: `factors` must hold 0 exactly once and at least 3 points, "
            f"got {factors}."
        )
    if every < 1:
        raise ValueError(f"gen: `every` must be >= 1, got {every}.")
    base = optax.with_extra_args_support(base)
    f = jnp.asarray(factors, jnp.float32)

    def shape_at(count: jax.Array) -> jax.Array:
        if shape is None:
            return jnp.ones([], jnp.float32)
        value = shape(count) if callable(shape) else shape
        return jnp.asarray(value, jnp.float32)

    def init(params: optax.Params) -> ScaleByGeNState:
        zero = jnp.zeros([], jnp.int32)
        return ScaleByGeNState(
            count=zero,
            rate=jnp.ones([], jnp.float32),
            base=base.init(params),
            scale=jnp.ones([], jnp.float32),
            optimum=jnp.full([], jnp.nan, jnp.float32),
            r2=jnp.full([], jnp.nan, jnp.float32),
            accepted=zero,
            rejected=zero,
            failed=zero,
        )

    def update(
        updates: optax.Updates,
        state: ScaleByGeNState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByGeNState]:
        fresh: Callable[[Any], jax.Array] | None = extra_args.pop(FRESH, None)
        if params is None or fresh is None:
            raise ValueError(
                f"gen: the update needs `params` and `{FRESH}` (the loss on a "
                "fresh minibatch)."
            )
        u, base_state = base.update(updates, state.base, params, **extra_args)
        rate = state.rate
        measured = (state.count + 1) % every == 0

        def losses() -> jax.Array:
            out = []
            for x in factors:  # static: one forward pass per point
                moved = jax.tree.map(
                    lambda p, d, x=x: (p + x * rate * d).astype(p.dtype), params, u
                )
                out.append(jnp.asarray(fresh(moved), jnp.float32))
            return jnp.stack(out)

        values = lax.cond(measured, losses, lambda: jnp.zeros(len(factors)))
        finite = jnp.all(jnp.isfinite(values))
        y = values - values[factors.index(0.0)]
        a, b, r2 = _fit(f, jnp.where(finite, y, 0.0))
        optimum = rate * b / jnp.where(a > 0, a, 1.0)  # B/A in units of u
        accepted = measured & finite & (a > 0) & (b > 0) & (r2 > min_r2)
        accepted = accepted & jnp.isfinite(optimum)
        failed = measured & ~finite
        clipped = jnp.clip(optimum, rate / clamp, rate * clamp)
        new_rate = jnp.where(
            accepted, (1 - smoothing) * rate + smoothing * clipped, rate
        )
        new_rate = jnp.where(failed, rate / 2, new_rate)
        scale = shape_at(state.count) * new_rate
        out = jax.tree.map(lambda d: (scale * d).astype(d.dtype), u)
        one = optax.safe_increment
        return out, ScaleByGeNState(
            count=one(state.count),
            rate=new_rate,
            base=base_state,
            scale=scale,
            optimum=jnp.where(accepted, optimum, state.optimum),
            r2=jnp.where(measured, r2, state.r2),
            accepted=jnp.where(accepted, one(state.accepted), state.accepted),
            rejected=jnp.where(
                measured & finite & ~accepted, one(state.rejected), state.rejected
            ),
            failed=jnp.where(failed, one(state.failed), state.failed),
        )

    return optax.GradientTransformationExtraArgs(init, update)


def _fit(f: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Least squares ``y ~ A f^2 / 2 - B f`` (no intercept), and its ``R^2``
    as sklearn's ``r2_score`` gives it (1 for a perfect fit of constant
    ``y``)."""
    p, q = 0.5 * f**2, -f
    spp, spq, sqq = p @ p, p @ q, q @ q
    det = spp * sqq - spq**2
    py, qy = p @ y, q @ y
    a = (sqq * py - spq * qy) / det
    b = (spp * qy - spq * py) / det
    residual = jnp.sum((y - a * p - b * q) ** 2)
    total = jnp.sum((y - jnp.mean(y)) ** 2)
    r2 = jnp.where(
        total > 0,
        1 - residual / jnp.where(total > 0, total, 1.0),
        1.0 * (residual == 0),
    )
    return a, b, r2
