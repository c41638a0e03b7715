"""Flax NNX: the loss of a model as ``value_fn``.

``nnx.Optimizer.update(model, grads, **kwargs)`` forwards ``value`` and
``value_fn`` to ``tx.update``, but what ``value_fn`` then receives is the
filtered ``nnx.State`` of the ``wrt`` variables (plain arrays), not a model.
:func:`nnx_value_fn` builds the function that merges that state back into
the model (and into every other NNX object the loss is given, such as the
``nnx.Rngs`` of its dropout) and evaluates the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
    from flax import nnx
    from flax.nnx.filterlib import Filter


def nnx_value_fn(
    model: nnx.Module,
    loss_fn: Callable[..., Any],
    *args: Any,
    wrt: Filter | None = None,
    has_aux: bool = False,
    **kwargs: Any,
) -> Callable[[nnx.State], jax.Array]:
    """The loss of an NNX model as a function of its parameters' state.

    Returns ``value_fn`` with ``value_fn(params) = loss_fn(model', *args',
    **kwargs')`` (its first element when ``has_aux``), where ``model'`` is
    ``model`` with its ``wrt`` variables replaced by ``params``: the filtered
    ``nnx.State`` that ``nnx.Optimizer.update`` hands its transformation. A
    training step as the Flax NNX tutorial writes it, with dropout RNGs
    passed in and a loss that also returns the logits::

      @nnx.jit
      def train_step(model, optimizer, rngs, x, y):
        def loss_fn(model, rngs, x, y):
          logits = model(x, rngs)
          loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
          return loss.mean(), logits

        value_fn = lyapopt.flax.nnx_value_fn(
            model, loss_fn, rngs, x, y, has_aux=True)  # before the gradient
        grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
        (loss, logits), grads = grad_fn(model, rngs, x, y)
        optimizer.update(model, grads, value=loss, value_fn=value_fn)

    The contract: the model and every NNX object among ``args`` and
    ``kwargs`` (an ``nnx.Rngs``, a second module) are snapshotted when
    ``nnx_value_fn`` is called: their state other than ``model``'s ``wrt``
    variables (RNG counters, batch statistics, the other objects' parameters)
    is copied as plain arrays, and every evaluation merges a fresh copy, so
    what ``loss_fn`` writes there (a BatchNorm's running averages, an RNG
    count) is discarded and no state crosses from the optimizer's traces
    into the step's. Objects shared between the model and the arguments stay
    shared. Built *before* the gradient, as above, ``value_fn`` draws the
    same dropout masks as the gradient and, in training mode, normalises by
    the same batch statistics: the cap and the guard judge the train-mode
    loss the gradient is of, not the eval-mode loss.

    Args:
      model: the ``nnx.Module`` being trained (in training mode: the view
        or the ``model.train()`` the gradient is taken of).
      loss_fn: ``loss_fn(model, *args, **kwargs)``, a scalar, or
        ``(scalar, aux)`` with ``has_aux=True``.
      *args: passed on to ``loss_fn`` after the model (the batch, the RNGs).
      wrt: the filter of the optimised variables, as given to
        ``nnx.Optimizer``; ``None`` means ``nnx.Param``.
      has_aux: ``loss_fn`` returns ``(loss, aux)``, as for
        ``nnx.value_and_grad(..., has_aux=True)``; ``value_fn`` returns the
        loss alone.
      **kwargs: passed on to ``loss_fn``.

    Returns:
      ``value_fn``, a function of the ``wrt`` state to the scalar loss.

    Examples:
      >>> import jax.numpy as jnp, lyapopt
      >>> from flax import nnx
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
      >>> def loss_fn(m, x, y):
      ...     return jnp.mean((m(x) - y) ** 2)
      >>> optimizer = nnx.Optimizer(model, lyapopt.lyapunov_adam(), wrt=nnx.Param)
      >>> value_fn = lyapopt.flax.nnx_value_fn(model, loss_fn, x, y)
      >>> loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
      >>> bool(value_fn(nnx.state(model, nnx.Param)) == loss)
      True
      >>> _ = optimizer.update(model, grads, value=loss, value_fn=value_fn)
      >>> bool(loss_fn(model, x, y) < loss)
      True
    """
    from flax import nnx
    from flax.nnx import filterlib, graph

    wrt = filterlib.to_predicate(nnx.Param if wrt is None else wrt)
    leaves, treedef = jax.tree.flatten((args, kwargs), is_leaf=graph.is_graph_node)
    at = [i for i, leaf in enumerate(leaves) if graph.is_graph_node(leaf)]

    # The model is node 0: its `wrt` variables are what value_fn is given;
    # everything else (the arguments' parameters included) is the snapshot.
    def optimised(path: tuple, x: Any) -> bool:
        return path[0] == 0 and wrt(path[1:], x)

    nodes = (model, *(leaves[i] for i in at))
    graphdef, _, rest = nnx.split(nodes, optimised, ...)
    # Plain arrays, not the objects' own Variables: every evaluation starts
    # from this state, and what loss_fn writes goes to a fresh copy.
    rest = nnx.as_pure(rest)

    def value_fn(params: nnx.State) -> jax.Array:
        fresh = nnx.merge(graphdef, nnx.State({0: params}), rest)
        call = list(leaves)
        for i, node in zip(at, fresh[1:], strict=True):
            call[i] = node
        call_args, call_kwargs = jax.tree.unflatten(treedef, call)
        out = loss_fn(fresh[0], *call_args, **call_kwargs)
        if not has_aux:
            return out
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                "nnx_value_fn(..., has_aux=True): `loss_fn` must return "
                f"`(loss, aux)`, got {type(out).__name__}. Drop `has_aux=True` "
                "for a loss_fn that returns the loss alone."
            )
        return out[0]

    return value_fn
