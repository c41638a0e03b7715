"""Flax Linen: ``TrainState.apply_gradients`` with optax's extra arguments.

``flax.training.train_state.TrainState.apply_gradients`` calls ``tx.update``
without extra arguments; :func:`apply_gradients` is the same step with them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import optax

if TYPE_CHECKING:
    from flax.training.train_state import TrainState

TrainStateT = TypeVar("TrainStateT", bound="TrainState")

_OVERWRITE = "overwrite_with_gradient"  # flax.core.meta's OVERWRITE_WITH_GRADIENT
_OWN = ("step", "params", "opt_state")  # the fields the step itself sets


def apply_gradients(
    state: TrainStateT, *, grads: optax.Updates, **kwargs: Any
) -> TrainStateT:
    """``TrainState.apply_gradients`` that also passes extra arguments to ``tx``.

    Flax Linen's ``state.apply_gradients(grads=..., **kwargs)`` calls
    ``tx.update(grads, opt_state, params)`` and ``.replace``-s the fields
    named in ``kwargs``; it has no room for ``value`` and ``value_fn``. This
    is the same step with them, keyword for keyword:

    - a keyword that is a field of ``state`` (``batch_stats`` of a
      ``TrainState`` subclass) replaces that field, as in Flax;
    - every other keyword (``value``, ``value_fn``, ``grad``, and the
      arguments meant for ``value_fn``, such as ``batch``) goes to
      ``state.tx.update``.

    Then ``step`` is incremented by one and ``params`` and ``opt_state`` are
    replaced. A step with BatchNorm, as Flax's ImageNet example writes it::

      def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, x,
            train=True, mutable=["batch_stats"])
        return cross_entropy(logits, y), updates

      (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params)
      state = lyapopt.flax.apply_gradients(
          state, grads=grads, batch_stats=updates["batch_stats"],
          value=loss, value_fn=lambda p: loss_fn(p)[0])

    Args:
      state: a ``flax.training.train_state.TrainState`` (or subclass).
      grads: the gradients, with the structure of ``state.params``.
      **kwargs: fields of ``state`` to replace, and extra arguments of
        ``state.tx.update``.

    Returns:
      The new state.

    Raises:
      TypeError: when ``kwargs`` names ``step``, ``params`` or ``opt_state``,
        which the step sets itself.
      ValueError: when ``grads`` holds an ``overwrite_with_gradient``
        collection (fp8 training): ``value_fn`` would then see only part of
        the variables.

    Examples:
      >>> import jax, jax.numpy as jnp, lyapopt
      >>> from flax.training.train_state import TrainState
      >>> def loss_fn(params):
      ...     return jnp.sum((params["w"] - 1.0) ** 2)
      >>> state = TrainState.create(
      ...     apply_fn=None, params={"w": jnp.zeros(2)}, tx=lyapopt.lyapunov_adam(0.1)
      ... )
      >>> loss, grads = jax.value_and_grad(loss_fn)(state.params)
      >>> state = lyapopt.flax.apply_gradients(
      ...     state, grads=grads, value=loss, value_fn=loss_fn
      ... )
      >>> int(state.step), bool(loss_fn(state.params) < loss)
      (1, True)
    """
    if isinstance(grads, Mapping) and _OVERWRITE in grads:
        raise ValueError(
            "apply_gradients: `grads` holds the collection "
            f"{_OVERWRITE!r}, whose variables are overwritten, not optimised; "
            "lyapopt's `value_fn` needs every variable the loss depends on. "
            "Apply lyapopt to the 'params' collection alone, with the other "
            "collection fixed inside `value_fn`."
        )
    own = sorted(set(kwargs) & set(_OWN))
    if own:
        raise TypeError(
            f"apply_gradients: {', '.join(f'`{k}`' for k in own)} cannot be "
            "passed: the step sets `step`, `params` and `opt_state` itself. Set "
            "them with `state.replace(...)` before or after the step."
        )
    fields = {f.name for f in dataclasses.fields(state)}
    replaced = {k: v for k, v in kwargs.items() if k in fields}
    extra_args = {k: v for k, v in kwargs.items() if k not in fields}
    updates, opt_state = state.tx.update(
        grads, state.opt_state, state.params, **extra_args
    )
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        **replaced,
    )
