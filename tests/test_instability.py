"""AdaGC (benchmarks/adagc.py) and the ``lm_instability`` study."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.adagc import adagc


def _steps(tx, grads):
    params = jax.tree.map(jnp.zeros_like, grads[0])
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update(g, state, params)
        out.append(u)
    return out, state


def _g(a_norm: float, b_norm: float) -> dict[str, jax.Array]:
    return {
        "a": a_norm * jnp.asarray([0.6, 0.8, 0.0]),
        "b": b_norm * jnp.asarray([1.0, 0.0]),
    }


def test_adagc_clips_a_spiked_tensor_to_lambda_times_its_ema() -> None:
    tx = adagc(beta=0.98, lambda_rel=1.05, lambda_abs=1e9, warmup_steps=2)
    # Warm-up: gamma is the minimum of the norms (a: min(2, 1), b: min(1, 3)).
    # Then a's norm 10 is clipped to 1.05 * 1, b's 1 < 1.05 passes.
    out, state = _steps(tx, [_g(2, 1), _g(1, 3), _g(10, 1)])
    np.testing.assert_allclose(out[2]["a"], 1.05 * np.array([0.6, 0.8, 0.0]), 1e-6)
    np.testing.assert_allclose(out[2]["b"], [1.0, 0.0], 1e-6)
    np.testing.assert_allclose(state.gamma["a"], 0.98 * 1 + 0.02 * 1.05, 1e-6)
    np.testing.assert_allclose(state.gamma["b"], 0.98 * 1 + 0.02 * 1.0, 1e-6)
    assert int(state.clipped) == 1


def test_adagc_warms_up_with_global_clipping() -> None:
    tx = adagc(lambda_abs=1.0, warmup_steps=2)
    out, state = _steps(tx, [_g(3, 4)])  # global norm 5 -> 1, nothing per tensor
    np.testing.assert_allclose(out[0]["a"], 0.2 * 3 * np.array([0.6, 0.8, 0.0]), 1e-6)
    np.testing.assert_allclose(out[0]["b"], [0.8, 0.0], 1e-6)
    np.testing.assert_allclose(state.gamma["a"], 0.6, 1e-6)
    assert int(state.clipped) == 0


def test_adagc_leaves_a_nonfinite_tensor_and_its_ema_alone() -> None:
    tx = adagc(lambda_abs=1e9, warmup_steps=1)
    bad = {"a": jnp.asarray([jnp.nan, 0.0, 0.0]), "b": jnp.asarray([5.0, 0.0])}
    out, state = _steps(tx, [_g(1, 1), bad])
    assert np.isnan(out[1]["a"][0])
    np.testing.assert_allclose(state.gamma["a"], 1.0, 1e-6)
    np.testing.assert_allclose(out[1]["b"], [1.05, 0.0], 1e-6)


@pytest.mark.parametrize(
    "kw", [{"beta": 1.0}, {"lambda_rel": 0.0}, {"warmup_steps": 0}]
)
def test_adagc_rejects_bad_arguments(kw) -> None:
    with pytest.raises(ValueError):
        adagc(**kw)
