"""AdaGC (benchmarks/adagc.py) and the ``lm_instability`` study's smoke test:
python -m benchmarks --quick --tasks lm_instability."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt
from benchmarks import cli
from benchmarks import lm_instability as lmi
from benchmarks.adagc import adagc
from benchmarks.lm_instability.__main__ import main as lmi_main
from benchmarks.lm_instability.report import burst_starts
from benchmarks.lm_instability.runs import (
    GUARD_KEYS,
    events,
    guard_record,
    peer_names,
    recovery,
    spike_steps,
)
from benchmarks.spike_peers import skip_on_spike

PNG = b"\x89PNG\r\n\x1a\n"


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


# The quick study (about 16 s on 2 cores, most of it compiling) is shared by
# the tests marked slow below.
@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("lm_instability")
    cli.main(["--quick", "--tasks", lmi.NAME, "--out", str(out)])
    return json.loads((out / f"{lmi.NAME}.json").read_text()), out


@pytest.mark.slow  # the quick study: a benchmark smoke
def test_every_peer_runs_on_every_setting_over_its_grid(quick: tuple) -> None:
    study, _ = quick
    assert set(lmi.QUICK.peers) <= set(lmi.PEERS)
    assert list(study["triggers"]) == list(lmi.QUICK.triggers)
    assert list(study["families"]) == list(lmi.QUICK.peers)
    for name, t in study["triggers"].items():
        assert t["rates"] == pytest.approx(lmi.QUICK.rates(lmi.TRIGGERS[name]))
        assert t["rates"][-1] == pytest.approx(lmi.TRIGGERS[name].lr)
        assert list(t["runs"]) == list(lmi.QUICK.peers)  # the recipe first
        for runs in t["runs"].values():
            assert [r["learning_rate"] for r in runs] == t["rates"]
            assert len(t["rates"]) == lmi.QUICK.grid_points
    assert set(study["cost"]["quick"]) == set(lmi.QUICK.peers)


@pytest.mark.slow  # the quick study: a benchmark smoke
def test_every_run_has_its_measures(quick: tuple) -> None:
    study, _ = quick
    steps = lmi.QUICK.steps
    for t in study["triggers"].values():
        for name, runs in t["runs"].items():
            ours = lmi.PEERS[name].family == "lyapopt"
            for r in runs:
                assert len(r["batch_loss"]) == steps
                assert r["eval_steps"][-1] == steps
                assert isinstance(r["diverged"], bool)
                assert math.isfinite(r["final_bpb"]) and r["final_bpb"] == r["bpb"][-1]
                assert r["spikes"] == len(r["spike_steps"])
                assert len(r["recovery"]) == len(r["events"])
                assert [b["step"] for b in r["bad_batches"]] == [40]
                # The guard's statistics for lyapopt's peers, and theirs only.
                guard = ("rejections", "backtracks", "guard_around")
                assert all((k in r) == ours for k in guard), name
                if ours:
                    assert len(r["guard_around"]) == len(t["around"])
        assert set(t["sensitivity"]) == set(t["runs"])
        assert all(v >= 0 for v in t["sensitivity"].values())


@pytest.mark.slow  # the quick study: a benchmark smoke
def test_the_guard_is_read_at_the_bad_batch(quick: tuple) -> None:
    study, _ = quick
    run = study["triggers"]["quick"]["runs"][lmi.RECOMMENDED][-1]
    (bad,) = run["bad_batches"]
    assert bad["step"] == 40 and bad["kind"] == "repeat"
    assert 0.0 <= bad["guard_scale"] <= 1.0
    # The repeated-byte batch's loss is far above a clean batch's.
    assert bad["loss_on_bad_batch"] > 1.5 * run["batch_loss"][39]


@pytest.mark.slow  # the quick study: a benchmark smoke
def test_the_section_the_plots_and_the_goals_are_written(quick: tuple) -> None:
    study, out = quick
    md = (out / "RESULTS.md").read_text()
    assert md.count(lmi.BEGIN) == 1 and md.count(lmi.END) == 1
    for name in lmi.QUICK.peers:
        assert f"| `{name}` |" in md
    for png in (f"{lmi.NAME}_quick_curves.png", f"{lmi.NAME}_rates.png"):
        assert (out / png).read_bytes()[:8] == PNG, png
    goals = lmi.goals(study)
    assert [g.goal[:2] for g in goals] == ["1.", "2.", "3.", "4."]
    assert goals[2].holds is None  # bad data: measured, no threshold


@pytest.mark.slow  # the quick study: a benchmark smoke
def test_the_section_rebuilds_from_the_json_and_keeps_the_rest(
    quick: tuple, tmp_path: Path
) -> None:
    _, out = quick
    md = tmp_path / "RESULTS.md"
    md.write_text(f"# title\n\nmine\n\n{lmi.BEGIN}\nSTALE\n{lmi.END}\n\nafter\n")
    json_path = str(out / f"{lmi.NAME}.json")
    args = ["--tasks", lmi.NAME, "--from-json", json_path, "--out", str(tmp_path)]
    cli.main([*args, "--results-md", str(md)])
    text = md.read_text()
    assert "STALE" not in text and "mine" in text and "after" in text
    assert "## Loss spikes provoked" in text


@pytest.mark.slow  # the quick study: a benchmark smoke
def test_a_part_of_the_study_runs_alone(quick: tuple, tmp_path: Path) -> None:
    # python -m benchmarks.lm_instability: the quick settings, two peers (their
    # runners compiled by the fixture already).
    lmi_main(
        ["--quick", "--peers", lmi.RECIPE, lmi.RECOMMENDED, "--out", str(tmp_path)]
    )
    study = json.loads((tmp_path / f"{lmi.NAME}.json").read_text())
    assert list(study["families"]) == [lmi.RECIPE, lmi.RECOMMENDED]
    assert "python -m benchmarks.lm_instability --quick" in study["meta"]["command"]
    assert lmi.BEGIN in (tmp_path / "RESULTS.md").read_text()


def test_the_bursts_start_off_the_curvature_grid() -> None:
    # stabilize(recipe, curvature_every=50) measures its cap at multiples of
    # 50 and keeps it for 50 steps: no burst may start there.
    assert sorted(burst_starts(list(lmi.BURSTS))) == [210, 410, 610, 810]
    assert all(s % 50 for s, _ in lmi.BURSTS)
    assert lmi.bursts((5, "random"), length=2) == ((5, "random"), (6, "random"))


def test_the_default_study_is_54_runs_of_1000_steps() -> None:
    settings = lmi.Settings()
    runs = sum(len(settings.rates(lmi.TRIGGERS[k])) for k in settings.triggers)
    assert runs * len(lmi.PEERS) == 54 and settings.steps == 1000
    rates = settings.rates(lmi.TRIGGERS["no_fixes_100x"])
    assert rates == pytest.approx((0.01, 0.1, 1.0))


def test_the_record_reads_the_guard_and_the_skips() -> None:
    params = {"w": jnp.ones(3)}
    guarded = guard_record(lyapopt.stabilize(optax.adam(0.1)).init(params))
    assert set(guarded) == set(GUARD_KEYS)
    skipped = guard_record(skip_on_spike(optax.adam(0.1)).init(params))
    assert set(skipped) == {"skipped"}
    assert guard_record(optax.adam(0.1).init(params)) == {}


def test_sensitivity_counts_a_diverged_run_at_the_initial_loss() -> None:
    # Grid finals 2, 3 and a diverged run (NaN) -> 8 (the initial): best 2.
    assert lmi.sensitivity([2.0, 3.0, float("nan")], 8.0) == pytest.approx(
        (0 + 1 + 6) / 3
    )
    assert lmi.sensitivity([2.0, 9.0], 8.0) == pytest.approx(3.0)


def test_spike_events_and_recovery() -> None:
    loss = np.full(200, 2.0)
    loss[100:103] = 5.0  # one event of three spike steps
    loss[103:110] = 3.0  # then 7 steps above the level
    steps = spike_steps(loss)
    assert steps == [100, 101, 102]  # 3.0 is not above 1.5 x 2.0
    assert events(steps) == [100]
    # The median of 10 losses (the mean of the 5th and 6th) is back at 2.0
    # once 6 of them are 2.0: the window starting at 106.
    assert recovery(loss, 100) == 6


def test_the_recipe_runs_first_and_unknown_names_are_refused() -> None:
    picked = replace(lmi.QUICK, peers=(lmi.RECOMMENDED,))
    assert peer_names(picked) == (lmi.RECIPE, lmi.RECOMMENDED)
    with pytest.raises(ValueError, match="unknown peers or triggers"):
        peer_names(replace(lmi.QUICK, peers=("adamw",)))
    with pytest.raises(ValueError, match="no_fixes"):
        peer_names(replace(lmi.QUICK, triggers=("no_fix_100x",)))
