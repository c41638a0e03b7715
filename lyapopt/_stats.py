"""Every lyapopt diagnostic in an optimizer state, by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import optax

from lyapopt._curvature import ScaleByCurvatureState
from lyapopt._guard import LyapunovGuardState
from lyapopt._level import ScaleByLevelState
from lyapopt._modulation import ScaleByGradientModulationState
from lyapopt._rate import ScaleByHeldOutRateState
from lyapopt._schedule import ScaleByLoggedLearningRateState
from lyapopt._spikes import SkipLossSpikesState

# For each state type: (field in the state, name in the stats dict). A name
# is the same whatever else the chain holds; the counters of one event
# (`nonfinite_gradients`) are added up wherever they come from.
_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {
    ScaleByLoggedLearningRateState: (("learning_rate", "learning_rate"),),
    ScaleByGradientModulationState: (
        ("factor", "modulation"),
        ("norm", "update_norm"),
        ("nonfinite", "nonfinite_gradients"),
    ),
    SkipLossSpikesState: (
        ("skipped", "spike_skips"),
        ("restarts", "spike_restarts"),
    ),
    ScaleByHeldOutRateState: (
        ("rate", "rate"),
        ("scale", "rate_scale"),
        ("optimum", "rate_optimum"),
        ("measurements", "rate_measurements"),
        ("rejected", "rate_rejected"),
    ),
    ScaleByCurvatureState: (
        ("curvature", "curvature"),
        ("s_star", "s_star"),
        ("scale", "curvature_scale"),
        ("nonfinite", "curvature_nonfinite"),
        ("detached", "value_fn_detached"),
    ),
    ScaleByLevelState: (("s_level", "s_level"), ("scale", "level_scale")),
    LyapunovGuardState: (
        ("value_before", "value_before"),
        ("value_after", "value_after"),
        ("scale", "guard_scale"),
        ("backtracks", "backtracks"),
        ("violations", "violations"),
        ("nonfinite", "guard_nonfinite"),
        ("value_mismatches", "value_mismatches"),
        ("detached", "value_fn_detached"),
    ),
    optax.ApplyIfFiniteState: (("total_notfinite", "nonfinite_gradients"),),
}
_SUMMED = ("nonfinite_gradients", "value_fn_detached")


def _unwrap(x: Any) -> Any:
    # nnx.Optimizer keeps its state leaves in nnx.Variable boxes; flax >= 0.12
    # reads them with get_value() (`.value` is deprecated there).
    if isinstance(x, jax.Array):
        return x
    get_value = getattr(x, "get_value", None)
    if callable(get_value):
        return get_value()
    return x.value if hasattr(x, "value") else x


def _states(tree: optax.OptState) -> Iterator[tuple[Any, ...]]:
    """The known states in ``tree``, outer before inner, in tree order."""
    known = tuple(_FIELDS)
    for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, known)):
        if isinstance(x, known):
            yield x
            yield from _states(tuple(x))  # e.g. ApplyIfFiniteState.inner_state


def stats(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """The diagnostics of every lyapopt transform in an optimizer state.

    Walks any optax state (chains, ``inject_hyperparams``, ``MultiSteps``,
    ``nnx.Optimizer``'s state) and returns a flat dict of scalar arrays,
    under names that do not depend on the rest of the chain:

    ===========================  ==============================================
    ``learning_rate``            the rate applied at the last step
    ``modulation``               the factor ``1 / (1 + beta ||g||)``
    ``update_norm``              ``||g||`` as the modulation saw it
    ``spike_skips``              batches refused by the loss reference
    ``spike_restarts``           times its window restarted at a new level
    ``rate``                     the held-out rate, before its shape
    ``rate_scale``               the factor it applied (rate times shape)
    ``rate_optimum``             the best multiple of the step, last measured
    ``rate_measurements``        measurements of the rate accepted
    ``rate_rejected``            measurements refused (no step, no convexity)
    ``curvature``                ``u.Hu / u.u``, last measured
    ``s_star``                   ``-g.u / u.Hu``, the model's minimum
    ``curvature_scale``          the factor the curvature cap applied
    ``curvature_nonfinite``      steps whose update or curvature was not finite
    ``s_level``                  the level cap's bound
    ``level_scale``              the level cap's factor
    ``value_before``             ``V(theta)`` as the guard measured it
    ``value_after``              ``V`` after the step taken
    ``guard_scale``              the factor the guard applied (0: rejected)
    ``backtracks``               the guard's halvings at the last step
    ``violations``               steps whose proposal raised the loss
    ``guard_nonfinite``          steps whose loss or update was not finite
    ``value_mismatches``         steps whose ``value`` was not ``value_fn(params)``
    ``value_fn_detached``        steps along which ``value_fn`` did not see the step
    ``nonfinite_gradients``      gradients with a NaN or an Inf, dropped
    ``step_size``                the factor the last step applied to the direction
    ===========================  ==============================================

    ``step_size`` is the learning rate times every scale present
    (``modulation``, ``rate_scale``, ``curvature_scale``, ``level_scale``,
    ``guard_scale``);
    for ``lyapunov_sgd`` it multiplies the gradient. Counters of the same
    event are added up (``nonfinite_gradients`` from
    :func:`optax.apply_if_finite` and from the modulation;
    ``value_fn_detached`` from the cap and the guard); a chain holding
    two transforms of the same kind gets the second one's names with a
    suffix, ``_1``.

    It only reads the state, so it runs inside a jitted step: return the
    dict with the new state and log it with no extra host round trip.

    Args:
      opt_state: an optimizer state.

    Returns:
      ``{name: scalar array}``.

    Examples:
      >>> import jax.numpy as jnp, lyapopt
      >>> tx = lyapopt.lyapunov_adam()
      >>> sorted(lyapopt.stats(tx.init(jnp.zeros(3))))[:4]
      ['backtracks', 'curvature', 'curvature_nonfinite', 'curvature_scale']
    """
    out: dict[str, jax.Array] = {}
    for state in _states(opt_state):
        for field, name in _FIELDS[type(state)]:
            value = _unwrap(getattr(state, field))
            if name in _SUMMED and name in out:
                out[name] = out[name] + value
                continue
            key, n = name, 0
            while key in out:
                n += 1
                key = f"{name}_{n}"
            out[key] = value
    if "learning_rate" in out:
        step_size = out["learning_rate"]
        for name in (
            "modulation",
            "rate_scale",
            "curvature_scale",
            "level_scale",
            "guard_scale",
        ):
            if name in out:
                step_size = step_size * out[name]
        out["step_size"] = step_size
    return out
