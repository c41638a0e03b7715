"""Flax: the loss of an NNX model as ``value_fn``, and a Linen ``TrainState`` step.

lyapopt's transforms need the extra argument ``value_fn``, the loss on the
current batch as a function of the optimised parameters. Flax hands the
optimizer those parameters in its own form:

- ``nnx.Optimizer.update(model, grads, **kwargs)`` forwards ``value`` and
  ``value_fn`` to ``tx.update``, but what ``value_fn`` then receives is the
  filtered ``nnx.State`` of the ``wrt`` variables (plain arrays), not a
  model. :func:`nnx_value_fn` builds the function that merges that state
  back into the model and evaluates the loss.
- ``flax.training.train_state.TrainState.apply_gradients`` calls
  ``tx.update`` without extra arguments. :func:`apply_gradients` is the same
  step with them.

Flax is imported when these functions are first called, so ``import
lyapopt`` does not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

_OVERWRITE = "overwrite_with_gradient"  # flax.core.meta's OVERWRITE_WITH_GRADIENT


def nnx_value_fn(
    model: Any,
    loss_fn: Callable[..., jax.Array],
    *args: Any,
    wrt: Any = None,
    **kwargs: Any,
) -> Callable[[Any], jax.Array]:
    """The loss of an NNX model as a function of its parameters' state.

    Returns ``value_fn`` with ``value_fn(params) = loss_fn(model', *args,
    **kwargs)``, where ``model'`` is ``model`` with its ``wrt`` variables
    replaced by ``params``: the filtered ``nnx.State`` that
    ``nnx.Optimizer.update`` hands its transformation. A full training step::

      @nnx.jit
      def train_step(model, optimizer, x, y):
        loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(
            m(x), y).mean()
        value_fn = lyapopt.nnx_value_fn(model, loss_fn)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, value=loss, value_fn=value_fn)
        return loss, lyapopt.stats(optimizer.opt_state)

    The rest of the model's state (batch statistics, RNG counters) is taken
    as it is when ``nnx_value_fn`` is called, and what ``loss_fn`` writes to
    it inside ``value_fn`` is discarded. Build ``value_fn`` *before* the
    gradient, as above: then a model with dropout evaluates the curvature
    and the guard with the same masks as the gradient, on the same loss.

    Args:
      model: the ``nnx.Module`` being trained.
      loss_fn: ``loss_fn(model, *args, **kwargs) -> scalar``.
      *args: passed on to ``loss_fn`` after the model (the batch).
      wrt: the filter of the optimised variables, as given to
        ``nnx.Optimizer``; ``None`` means ``nnx.Param``.
      **kwargs: passed on to ``loss_fn``.

    Returns:
      ``value_fn``, a function of the ``wrt`` state to the loss.
    """
    from flax import nnx

    wrt = nnx.Param if wrt is None else wrt
    graphdef, _, rest = nnx.split(model, wrt, ...)
    # Plain arrays, not the model's own Variables: every evaluation starts
    # from this state, and what loss_fn writes goes to a fresh copy.
    rest = nnx.as_pure(rest)

    def value_fn(params: Any) -> jax.Array:
        return loss_fn(nnx.merge(graphdef, params, rest), *args, **kwargs)

    return value_fn


def apply_gradients(state: Any, *, grads: Any, **extra_args: Any) -> Any:
    """``TrainState.apply_gradients`` that passes extra arguments to ``tx``.

    Flax Linen's ``TrainState.apply_gradients(grads=...)`` calls
    ``tx.update(grads, opt_state, params)`` with no room for ``value`` and
    ``value_fn``. This is the same step with them::

      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
      state = lyapopt.apply_gradients(
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
