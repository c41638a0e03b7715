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


# --- the study -----------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_study():
    from benchmarks import lm_instability

    return lm_instability.run_study(lm_instability.QUICK)


def test_quick_study_runs_every_peer_over_the_grid(quick_study) -> None:
    from benchmarks import lm_instability

    t = quick_study["triggers"]["quick"]
    assert set(t["runs"]) == set(lm_instability.QUICK.peers)
    assert set(lm_instability.QUICK.peers) <= {p.name for p in lm_instability.peers()}
    assert next(iter(t["runs"])) == lm_instability.RECIPE
    for runs in t["runs"].values():
        assert len(runs) == len(t["rates"]) == lm_instability.QUICK.grid_points
    assert t["rates"][-1] == pytest.approx(lm_instability.TRIGGERS["quick"].lr)
    assert set(quick_study["cost"]["quick"]) == set(t["runs"])


def test_quick_study_reads_the_guard_at_the_bad_batch(quick_study) -> None:
    from benchmarks.lm_instability import RECOMMENDED

    run = quick_study["triggers"]["quick"]["runs"][RECOMMENDED][-1]
    (bad,) = run["bad_batches"]
    assert bad["step"] == 40 and bad["kind"] == "repeat"
    assert 0.0 <= bad["guard_scale"] <= 1.0
    # The repeated-byte batch's loss is far above a clean batch's.
    assert bad["loss_on_bad_batch"] > 1.5 * run["batch_loss"][39]


def test_quick_study_report_and_figures(quick_study, tmp_path) -> None:
    from benchmarks import lm_instability

    plots = lm_instability.plot(quick_study, tmp_path, tmp_path)
    text = lm_instability.markdown(quick_study, {"quick": True}, plots)
    assert text.startswith(lm_instability.BEGIN) and text.rstrip().endswith(
        lm_instability.END
    )
    assert all((tmp_path / p).exists() for p in plots.values())
    assert [g["goal"][:2] for g in lm_instability.goals(quick_study)] == [
        "1.",
        "2.",
        "3.",
        "4.",
    ]


def test_sensitivity_counts_a_diverged_run_at_the_initial_loss() -> None:
    from benchmarks.lm_instability import sensitivity

    # Grid finals 2, 3 and a diverged run (NaN) -> 8 (the initial): best 2.
    assert sensitivity([2.0, 3.0, float("nan")], 8.0) == pytest.approx((0 + 1 + 6) / 3)
    assert sensitivity([2.0, 9.0], 8.0) == pytest.approx(3.0)


def test_spike_events_and_recovery() -> None:
    from benchmarks.lm_instability.runs import events, recovery, spike_steps

    loss = np.full(200, 2.0)
    loss[100:103] = 5.0  # one event of three spike steps
    loss[103:110] = 3.0  # then 7 steps above the level
    steps = spike_steps(loss)
    assert steps == [100, 101, 102]  # 3.0 is not above 1.5 x 2.0
    assert events(steps) == [100]
    # The median of 10 losses (the mean of the 5th and 6th) is back at 2.0
    # once 6 of them are 2.0: the window starting at 106.
    assert recovery(loss, 100) == 6
