"""Flax NNX: the loss of a model as ``value_fn``.

``nnx.Optimizer.update(model, grads, **kwargs)`` forwards ``value`` and
``value_fn`` to ``tx.update``, but what ``value_fn`` then receives is the
filtered ``nnx.State`` of the ``wrt`` variables (plain arrays), not a model.
:func:`nnx_value_fn` builds the function that merges that state back into
the model and evaluates the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


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
        value_fn = lyapopt.flax.nnx_value_fn(model, loss_fn)
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
