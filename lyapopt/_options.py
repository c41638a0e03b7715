"""The stage options: one declaration of the names and defaults of the stages.

:func:`lyapopt.stabilize`, :func:`lyapopt.lyapunov_sgd`,
:func:`lyapopt.lyapunov_adam` and the stage transforms themselves
(:func:`lyapopt.skip_loss_spikes`, :func:`lyapopt.scale_by_held_out_rate`,
:func:`lyapopt.scale_by_curvature`,
:func:`lyapopt.scale_by_level`, :func:`lyapopt.lyapunov_guard`) take these options under these names, with
these defaults; a test checks every signature against :data:`DEFAULTS`.
Each factory still spells its arguments out, so that
``optax.inject_hyperparams`` (which reads the signature) can inject them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax


class StageOptions(NamedTuple):
    """How much of a proposed step to take, and whether to take it.

    Attributes:
      spike_factor: refuse a batch whose loss exceeds this multiple of the
        median of the recent admitted losses
        (:func:`lyapopt.skip_loss_spikes`); ``None`` (the default) turns
        that stage off.
      spike_window: how many admitted losses that median is taken over.
      max_skips: refusals in a row after which a batch is admitted whatever
        its loss, and the window restarts from it.
      rate_every: measure the rate of :func:`lyapopt.scale_by_held_out_rate`
        every this many steps; ``None`` (the default) turns that stage off
        and the wrapped optimizer's own rate is used.
      rate_until: measure the rate only before this step, then hold it;
        ``None``: throughout the run. Only with ``rate_every``.
      rate_shape: the schedule shape (value 1 at step 0) that multiplies the
        measured rate; ``None``: 1. Only with ``rate_every``.
      safety: the curvature cap's fraction of the model's minimum ``s*``;
        ``None`` turns the cap off.
      curvature_every: measure the curvature every this many steps.
      max_scale: the most the curvature cap may lengthen a step (1: never).
      level: the energy level ``lambda*`` of :func:`lyapopt.scale_by_level`;
        ``None`` turns that cap off.
      guard: what :func:`lyapopt.lyapunov_guard` does with a step that
        raises the loss (``"backtrack"``, ``"skip"``, ``"record"``,
        ``"check"``); ``None`` turns the guard off.
      tolerance: the rise of the loss the guard allows.
      max_backtracks: the guard's halvings in ``"backtrack"`` mode.
      decrease: Armijo's ``sigma``: a step must lower the loss by at least
        ``sigma`` times what its slope promises (0: only no rise).
      axis_name: under ``jax.pmap`` or ``shard_map``, the mapped axis over
        which ``value_fn``'s loss is a per-device mean: the loss, the slope
        and the curvature are averaged over it (``lax.pmean``), so every
        replica takes the same decision. ``None`` under ``jax.jit``, where a
        loss over a sharded batch is already global.
    """

    spike_factor: float | jax.Array | None = None
    spike_window: int = 50
    max_skips: int | jax.Array = 10
    rate_every: int | jax.Array | None = None
    rate_until: int | jax.Array | None = None
    rate_shape: optax.ScalarOrSchedule | None = None
    safety: float | jax.Array | None = 1.0
    curvature_every: int | jax.Array = 1
    max_scale: float | jax.Array = 1.0
    level: float | jax.Array | None = None
    guard: str | None = "backtrack"
    tolerance: float | jax.Array = 0.0
    max_backtracks: int | jax.Array = 8
    decrease: float | jax.Array = 0.25
    axis_name: Any = None


DEFAULTS = StageOptions()

GUARD_MODES = ("record", "backtrack", "skip", "check")


def collect(arguments: dict[str, Any]) -> StageOptions:
    """The stage options among a factory's arguments (pass ``locals()``)."""
    return StageOptions(**{name: arguments[name] for name in StageOptions._fields})
