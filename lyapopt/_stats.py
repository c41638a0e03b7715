"""Every lyapopt diagnostic in an optimizer state, by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import optax

from lyapopt._curvature import CurvatureState
from lyapopt._guard import GuardState
from lyapopt._level import LevelState
from lyapopt._modulation import ModulationState
from lyapopt._schedule import ScaleByLearningRateState

# For each state type: (field in the state, name in the stats dict).
_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {
    ScaleByLearningRateState: (("learning_rate", "learning_rate"),),
    ModulationState: (
        ("factor", "modulation"),
        ("norm", "update_norm"),
        ("nonfinite", "nonfinite_steps"),
    ),
    CurvatureState: (
        ("curvature", "curvature"),
        ("s_star", "s_star"),
        ("scale", "curvature_scale"),
    ),
    LevelState: (("s_level", "s_level"), ("scale", "level_scale")),
    GuardState: (
        ("value_before", "value_before"),
        ("value_after", "value_after"),
        ("scale", "guard_scale"),
        ("backtracks", "backtracks"),
        ("violations", "violations"),
        ("nonfinite", "nonfinite_values"),
    ),
    optax.ApplyIfFiniteState: (("total_notfinite", "nonfinite_steps"),),
}


def _unwrap(x: Any) -> Any:
    # nnx.Optimizer keeps its state leaves in nnx.Variable boxes; flax >= 0.12
    # reads them with get_value() (`.value` is deprecated there).
    if isinstance(x, jax.Array):
        return x
    get_value = getattr(x, "get_value", None)
    if callable(get_value):
        return get_value()
    return x.value if hasattr(x, "value") else x


def _states(tree: Any) -> Iterator[Any]:
    """The known states in ``tree``, outer before inner, in tree order."""
    known = tuple(_FIELDS)
    for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, known)):
        if isinstance(x, known):
            yield x
            yield from _states(tuple(x))  # e.g. ApplyIfFiniteState.inner_state


def stats(opt_state: Any) -> dict[str, jax.Array]:
    """The diagnostics of every lyapopt transform in an optimizer state.

    Walks any optax state (chains, ``inject_hyperparams``, ``MultiSteps``,
    ``nnx.Optimizer``'s state) and returns a flat dict of scalar arrays:
    ``learning_rate``, ``modulation`` and ``update_norm``, ``curvature``
    (``u.Hu / u.u``), ``s_star`` and ``curvature_scale``, ``s_level`` and
    ``level_scale``, ``value_before`` and ``value_after``, ``guard_scale``,
    ``backtracks``, ``violations`` and ``nonfinite_values`` (steps whose loss
    was NaN or Inf), and ``nonfinite_steps`` (gradients with a NaN or an Inf,
    dropped by :func:`lyapopt.stabilize`). A name that occurs twice gets a
    suffix, ``_1`` and so on, in the order of the state.

    With a ``learning_rate``, ``step_size`` is the factor the last step
    actually applied to the direction: the learning rate times every scale
    present (``modulation``, ``curvature_scale``, ``level_scale``,
    ``guard_scale``). For ``lyapunov_sgd`` it multiplies the gradient.

    It only reads the state, so it runs inside a jitted step: return the
    dict with the new state and log it with no extra host round trip.

    Args:
      opt_state: an optimizer state.

    Returns:
      ``{name: scalar array}``.
    """
    out: dict[str, jax.Array] = {}
    for state in _states(opt_state):
        for field, name in _FIELDS[type(state)]:
            key, n = name, 0
            while key in out:
                n += 1
                key = f"{name}_{n}"
            out[key] = _unwrap(getattr(state, field))
    if "learning_rate" in out:
        # The rate is kept in the parameters' dtype; the scales in float32 or more.
        step_size = out["learning_rate"].astype(
            out.get("curvature_scale", out["learning_rate"]).dtype
        )
        for name in ("modulation", "curvature_scale", "level_scale", "guard_scale"):
            if name in out:
                step_size = step_size * out[name]
        out["step_size"] = step_size
    return out
