"""scale_by_gradient_modulation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import lyapopt


@pytest.mark.parametrize("modulation", [0.0, 0.5, 1.0, 3.0])
def test_factor_is_one_over_one_plus_modulation_times_norm(modulation: float) -> None:
    # ||u|| over the whole tree: sqrt(3^2 + 4^2 + 12^2) = 13.
    updates = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]])}
    tx = lyapopt.scale_by_gradient_modulation(modulation)
    out, state = tx.update(updates, tx.init(updates))
    factor = 1.0 / (1.0 + modulation * 13.0)
    np.testing.assert_allclose(state.factor, factor, rtol=1e-6)
    np.testing.assert_allclose(state.norm, 13.0, rtol=1e-6)
    np.testing.assert_allclose(out["a"], factor * updates["a"], rtol=1e-6)
    np.testing.assert_allclose(out["b"], factor * updates["b"], rtol=1e-6)


def test_modulated_step_norm_is_below_one_over_modulation() -> None:
    tx = lyapopt.scale_by_gradient_modulation(2.0)
    for scale in (1e-3, 1.0, 1e6, 1e30):
        g = jnp.full(4, scale)
        out, state = tx.update(g, tx.init(g))
        norm = float(jnp.linalg.norm(out))
        # ||g|| / (1 + 2 ||g||) is 0.5 - 1/(8 ||g||): at ||g|| = 2e30 that is
        # 0.5 itself in float32, so there the bound holds with equality.
        assert norm < 0.5 or (scale == 1e30 and norm == 0.5), (scale, norm)
        # A large but finite gradient is modulated, not dropped as non-finite.
        assert norm > 0 and int(state.nonfinite) == 0, scale


def test_bfloat16_updates_get_a_float32_factor() -> None:
    g = jnp.full(1000, 0.1, jnp.bfloat16)  # ||g|| = sqrt(10)
    tx = lyapopt.scale_by_gradient_modulation(1.0)
    out, state = tx.update(g, tx.init(g))
    assert out.dtype == jnp.bfloat16
    assert state.factor.dtype == jnp.float32
    np.testing.assert_allclose(state.norm, np.sqrt(1000) * float(g[0]), rtol=1e-3)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_a_non_finite_update_gives_a_zero_step_and_is_counted(bad: float) -> None:
    tx = lyapopt.scale_by_gradient_modulation()
    g = jnp.array([3.0, 4.0])
    _, state = tx.update(g, tx.init(g))
    out, state = tx.update(jnp.array([bad, 1.0]), state)
    np.testing.assert_array_equal(out, 0.0)
    assert int(state.nonfinite) == 1
    assert float(state.norm) == 5.0  # the last finite norm, kept
    assert float(state.factor) == 0.0
