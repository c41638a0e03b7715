"""Flax Linen: ``TrainState.apply_gradients`` with optax's extra arguments.

``flax.training.train_state.TrainState.apply_gradients`` calls ``tx.update``
without extra arguments; :func:`apply_gradients` is the same step with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

_OVERWRITE = "overwrite_with_gradient"  # flax.core.meta's OVERWRITE_WITH_GRADIENT


def apply_gradients(state: Any, *, grads: Any, **extra_args: Any) -> Any:
    """``TrainState.apply_gradients`` that passes extra arguments to ``tx``.

    Flax Linen's ``TrainState.apply_gradients(grads=...)`` calls
    ``tx.update(grads, opt_state, params)`` with no room for ``value`` and
    ``value_fn``. This is the same step with them::

      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
      state = lyapopt.flax.apply_gradients(
          state, grads=grads, value=loss,
          value_fn=lambda p: loss_fn(p, batch))

    ``step`` is incremented by one and ``params`` and ``opt_state`` are
    replaced; any other field of a ``TrainState`` subclass (such as
    ``batch_stats``) is kept: set it with ``state.replace``.

    Args:
      state: a ``flax.training.train_state.TrainState`` (or subclass).
      grads: the gradients, with the structure of ``state.params``.
      **extra_args: passed to ``state.tx.update``: ``value``, ``value_fn``
        and any other extra argument of an optax transformation.

    Returns:
      The new state.

    Raises:
      ValueError: when ``grads`` holds an ``overwrite_with_gradient``
        collection (fp8 training): ``value_fn`` would then see only part of
        the variables.
    """
    if isinstance(grads, Mapping) and _OVERWRITE in grads:
        raise ValueError(
            "apply_gradients: `grads` holds the collection "
            f"{_OVERWRITE!r}, whose variables are overwritten, not optimised; "
            "lyapopt's `value_fn` needs every variable the loss depends on. "
            "Apply lyapopt to the 'params' collection alone, with the other "
            "collection fixed inside `value_fn`."
        )
    updates, opt_state = state.tx.update(
        grads, state.opt_state, state.params, **extra_args
    )
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )
