"""stats: the named diagnostics of every lyapopt transform in a state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lyapopt
from tests.helpers import make_step, quadratic

LOSS = quadratic([1.0, 10.0])
X = jnp.array([1.0, 1.0])


def _after_one_step(tx: optax.GradientTransformation) -> dict[str, jax.Array]:
    _, state, _ = jax.jit(make_step(tx, LOSS))(X, tx.init(X))
    return lyapopt.stats(state)


def test_lyapunov_sgd_reports_every_stage() -> None:
    got = _after_one_step(lyapopt.lyapunov_sgd(0.5, decay_constant=0.0))
    g = jax.grad(LOSS)(X)
    # nonfinite_gradients adds up apply_if_finite's count and the modulation's.
    assert set(got) == {
        "nonfinite_gradients", "modulation", "update_norm", "learning_rate",
        "curvature", "s_star", "curvature_scale", "curvature_nonfinite",
        "value_before", "value_after", "guard_scale", "backtracks", "violations",
        "guard_nonfinite", "value_mismatches", "value_fn_detached", "step_size",
    }  # fmt: skip
    np.testing.assert_allclose(
        got["modulation"], 1 / (1 + jnp.linalg.norm(g)), rtol=1e-6
    )
    np.testing.assert_allclose(got["learning_rate"], 0.5)
    np.testing.assert_allclose(
        got["curvature"], g @ (jnp.array([1.0, 10.0]) * g) / (g @ g), rtol=1e-5
    )
    np.testing.assert_allclose(got["value_before"], LOSS(X))
    assert float(got["value_after"]) < float(got["value_before"])


def test_step_size_is_the_factor_the_gradient_was_moved_by() -> None:
    tx = lyapopt.lyapunov_sgd(10.0)  # large: the cap and the guard both act
    new, state, _ = jax.jit(make_step(tx, LOSS))(X, tx.init(X))
    got = lyapopt.stats(state)
    assert float(got["curvature_scale"]) < 1.0
    np.testing.assert_allclose(
        new, X - got["step_size"] * jax.grad(LOSS)(X), rtol=1e-6, atol=1e-6
    )


def test_found_inside_wrappers_and_duplicates_are_numbered() -> None:
    inner = optax.chain(
        optax.inject_hyperparams(lyapopt.lyapunov_adam)(learning_rate=0.1),
        lyapopt.lyapunov_guard(guard="record"),
    )
    tx = optax.MultiSteps(inner, every_k_schedule=1)
    got = _after_one_step(tx)
    assert "violations" in got and "violations_1" in got
    assert "learning_rate" in got and "curvature" in got


def test_stats_can_be_returned_from_a_jitted_step() -> None:
    tx = lyapopt.lyapunov_adam()
    step = make_step(tx, LOSS)

    @jax.jit
    def logged(
        p: jax.Array, s: optax.OptState
    ) -> tuple[jax.Array, optax.OptState, dict]:
        p, s, _ = step(p, s)
        return p, s, lyapopt.stats(s)

    _, state, metrics = logged(X, tx.init(X))
    assert all(isinstance(v, jax.Array) and v.shape == () for v in metrics.values())
    np.testing.assert_array_equal(
        metrics["curvature"], lyapopt.stats(state)["curvature"]
    )


def test_a_state_without_lyapopt_transforms_gives_an_empty_dict() -> None:
    assert lyapopt.stats(optax.adam(1e-3).init(X)) == {}
