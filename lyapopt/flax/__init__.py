"""Flax helpers: lyapopt's ``value_fn`` and extra arguments in NNX and Linen steps.

- :func:`nnx_value_fn`: the loss of an NNX model (and of the NNX objects it
  is given, such as dropout RNGs) as a function of the state that
  ``nnx.Optimizer.update`` hands its transformation.
- :func:`apply_gradients`: Linen's ``TrainState.apply_gradients`` with
  ``value`` and ``value_fn`` passed to the optimizer, and the state's other
  fields (``batch_stats``) replaced as Flax does.

Flax itself is imported only when these functions are called.
"""

from lyapopt.flax._linen import apply_gradients
from lyapopt.flax._nnx import nnx_value_fn

__all__ = ["apply_gradients", "nnx_value_fn"]
