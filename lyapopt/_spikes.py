"""The loss reference: a batch whose loss is far above the recent ones is
refused before it reaches the optimizer."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lyapopt import _line, _stage
from lyapopt._checks import check_number
from lyapopt._options import DEFAULTS

_WHERE = "skip_loss_spikes"


class SkipLossSpikesState(NamedTuple):
    """State of :func:`skip_loss_spikes`.

    Decisions (what the next step uses):

    Attributes:
      losses: the last ``spike_window`` admitted losses (a ring buffer), in
        the parameters' dtype; their median is the reference.
      filled: int32, how many of ``losses`` hold a loss (a batch is judged
        only once the window is full).
      position: int32, where the next admitted loss is written.
      consecutive: int32, batches refused in a row since the last admitted
        one.

    Diagnostics (read by :func:`lyapopt.stats`):

    Attributes:
      skipped: int32, batches refused (saturating).
      restarts: int32, times ``max_skips`` refusals in a row made the loss's
        new level the reference (the window restarted).
    """

    losses: jax.Array
    filled: jax.Array
    position: jax.Array
    consecutive: jax.Array
    skipped: jax.Array
    restarts: jax.Array


def skip_loss_spikes(
    spike_factor: float | jax.Array = 1.5,
    *,
    spike_window: int = DEFAULTS.spike_window,
    max_skips: int | jax.Array = DEFAULTS.max_skips,
    axis_name: Any = DEFAULTS.axis_name,
) -> optax.GradientTransformationExtraArgs:
    r"""Refuses a batch whose loss is far above the losses of the recent ones.

    The Lyapunov guard judges a step on the batch the step came from: a
    garbage batch (a document of one repeated byte, random bytes, a
    corrupted shard) has a gradient that lowers *its own* loss, so the
    guard accepts it, and the step harms every other batch. This stage
    judges the batch itself, against a running reference of the losses of
    the batches admitted before it: once ``spike_window`` losses have been
    admitted, a batch with

    .. math::
      V(\theta) > \text{spike\_factor} \times \operatorname{median}(\text{last
      spike\_window admitted losses})

    is refused: no step, and, inside :func:`lyapopt.stabilize` (option
    ``spike_factor``), its gradient never reaches the wrapped optimizer,
    exactly as a gradient with a NaN does not, so Adam's moments and step
    count stay as they were. A batch whose loss is not finite is refused
    too. The median, not the mean, so that one refused or extreme loss
    does not move the reference; the reference only holds for a loss that
    is positive, as a cross-entropy is (with a median ``<= 0`` no batch is
    refused).

    **It cannot freeze training.** After ``max_skips`` refusals in a row
    the next batch is admitted whatever its loss, and the window restarts
    from it: a loss whose level really changed (a new phase of the data,
    a curriculum) becomes the new reference after ``max_skips`` skipped
    steps; a burst of bad batches shorter than that is skipped whole. The
    first ``spike_window`` batches, and those after a restart, are
    admitted while the window fills.

    What it does not do: it cannot tell a hard but good batch from a bad
    one beyond the factor, and a spike the *parameters* cause (every batch's
    loss up after a bad step) is the guard's to prevent, not this stage's:
    here it costs at most ``max_skips`` steps. This rule is the one large
    runs apply by hand (skip the batches around a spike; e.g. the PaLM
    report) and the benchmarks' ``skip_on_spike`` peer applies outside the
    optimizer; the ring buffer of admitted losses, the bound on refusals in
    a row and the restart are ours.

    The batch's loss is the ``value`` extra argument when given (the loss
    the caller computed with its gradient: no pass over the data), else
    ``value_fn(params)``, one forward pass. It is judged against losses
    of the same kind, so a ``value`` that includes a penalty term works
    (the guard, which trusts no ``value``, still judges every step).

    Standalone, chained after a direction (``optax.chain(optax.adamw(...),
    lyapopt.skip_loss_spikes())``), it returns zero updates for a refused
    batch, but the direction's state has already taken its gradient in:
    inside ``stabilize`` it has not.

    Args:
      spike_factor: a batch whose loss exceeds this multiple of the median
        of the recent admitted losses is refused, ``>= 1``.
      spike_window: how many admitted losses the median is taken over,
        ``>= 1``; the size of the state's window, so a number known when
        the state is made (under ``optax.inject_hyperparams``, a
        ``static_args`` entry).
      max_skips: refusals in a row after which the next batch is admitted
        and starts a new window, ``>= 1``.
      axis_name: under ``jax.pmap`` or ``shard_map``, the axis over which
        the per-device loss is averaged (see :class:`lyapopt.StageOptions`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its update needs
      ``value`` or ``value_fn`` (with ``params``).

    References:
      Chowdhery et al., "PaLM: Scaling language modeling with pathways",
      JMLR 24 (2023): restarts before a spike, skipping 200-500 batches.

    Examples:
      After two ordinary batches (loss 1) a batch with loss 10 is refused:

      >>> import jax.numpy as jnp, optax, lyapopt
      >>> tx = optax.chain(optax.sgd(0.1), lyapopt.skip_loss_spikes(spike_window=2))
      >>> x = jnp.array([1.0])
      >>> state = tx.init(x)
      >>> for loss in (1.0, 1.0, 10.0):
      ...     updates, state = tx.update(x, state, x, value=jnp.array(loss))
      >>> updates, int(state[1].skipped)
      (Array([0.], dtype=float32), 1)
    """
    return _stage.transform(
        LossReference(spike_factor, spike_window, max_skips), axis_name
    )


@dataclasses.dataclass(frozen=True)
class LossReference:
    """The loss reference as a stage (:class:`lyapopt._stage.Stage`)."""

    spike_factor: float | jax.Array
    spike_window: int | jax.Array
    max_skips: int | jax.Array
    where: str = _WHERE
    needs_value_fn: bool = False

    def __post_init__(self) -> None:
        check_number(
            _WHERE,
            "spike_factor",
            self.spike_factor,
            lower=1.0,
            fix="Pass 1.5 to refuse a batch whose loss is 50% above the recent median.",
        )
        check_number(
            _WHERE,
            "spike_window",
            self.spike_window,
            lower=1.0,
            integer=True,
            fix="Pass 50 for the median of the last 50 admitted losses.",
        )
        check_number(
            _WHERE,
            "max_skips",
            self.max_skips,
            lower=1.0,
            upper=float(jnp.iinfo(jnp.int32).max),
            integer=True,
            fix="Pass 10 to admit a batch after 10 refusals in a row.",
        )

    def init(self, params: optax.Params) -> SkipLossSpikesState:
        dtype = _line.scalar_dtype(params)
        zero = _line.scalar(0, jnp.int32)
        try:
            window = int(self.spike_window)
        except jax.errors.ConcretizationTypeError:
            raise TypeError(
                f"{_WHERE}: `spike_window` sets the size of the state's window "
                "of losses, so it must be known when the state is made, not "
                "traced. Pass a Python int; under `optax.inject_hyperparams`, "
                "name it static: `optax.inject_hyperparams(..., "
                "static_args=('spike_window',))`."
            ) from None
        return SkipLossSpikesState(
            losses=jnp.zeros([window], dtype),
            filled=zero,
            position=zero,
            consecutive=zero,
            skipped=zero,
            restarts=zero,
        )

    def _loss(self, problem: _stage.Problem, dtype: Any) -> jax.Array:
        """The batch's loss: the caller's ``value``, else ``value_fn(params)``."""
        if problem.value is None and problem.value_fn is not None:
            return _line.value(_WHERE, problem.value_fn, problem.params, dtype)
        if problem.value is None:
            raise ValueError(
                f"{_WHERE} judges the batch by its loss and got neither "
                "`value_fn` nor `value`. Pass the batch's loss: "
                "`tx.update(grads, state, params, value=loss)`, or "
                "`value_fn=lambda p: loss_fn(p, batch)`."
            )
        loss = _line.loss_scalar(_WHERE, problem.value, dtype, name="value")
        return _line.across(loss, problem.axis_name)

    def _judge(
        self, state: SkipLossSpikesState, problem: _stage.Problem
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(loss, admitted, spike)`` for this batch."""
        loss = self._loss(problem, state.losses.dtype)
        median = jnp.median(state.losses).astype(loss.dtype)
        factor = jnp.asarray(self.spike_factor).astype(loss.dtype)
        # The window's size is the state's (under optax.inject_hyperparams
        # `spike_window` is an array here).
        full = state.filled >= state.losses.shape[0]
        spike = full & (median > 0) & (loss > factor * median)
        given_up = state.consecutive >= self.max_skips
        return loss, jnp.isfinite(loss) & (~spike | given_up), spike

    def admit(self, state: SkipLossSpikesState, problem: _stage.Problem) -> jax.Array:
        return self._judge(state, problem)[1]

    def step(
        self,
        line: _stage.LineInfo,
        state: SkipLossSpikesState,
        problem: _stage.Problem,
    ) -> tuple[_stage.LineInfo, SkipLossSpikesState]:
        loss, admitted, spike = self._judge(state, problem)
        window = state.losses.shape[0]
        restart = admitted & spike  # admitted after max_skips refusals
        position = jnp.where(restart, 0, state.position)
        filled = jnp.where(restart, 0, state.filled)
        losses = state.losses.at[position].set(loss.astype(state.losses.dtype))
        count = optax.safe_increment
        new_state = SkipLossSpikesState(
            losses=jnp.where(admitted, losses, state.losses),
            filled=jnp.where(admitted, jnp.minimum(filled + 1, window), state.filled),
            position=jnp.where(admitted, (position + 1) % window, state.position),
            consecutive=jnp.where(admitted, 0, count(state.consecutive)),
            skipped=jnp.where(admitted, state.skipped, count(state.skipped)),
            restarts=jnp.where(restart, count(state.restarts), state.restarts),
        )
        return line.capped(admitted.astype(_line.scalar_dtype(line.updates))), (
            new_state
        )
