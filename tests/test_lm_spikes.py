"""The lm_spikes study's smoke test: python -m benchmarks --quick --tasks lm_spikes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import cli, lm_spikes

pytestmark = pytest.mark.slow  # a benchmark smoke

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("lm_spikes")
    cli.main(["--quick", "--tasks", lm_spikes.NAME, "--out", str(out)])
    return json.loads((out / f"{lm_spikes.NAME}.json").read_text()), out


def test_the_spike_rule_counts_steps_above_one_and_a_half_medians() -> None:
    calm = np.ones(lm_spikes.SPIKE_WINDOW)
    # After 50 losses of 1.0 the median is 1.0: 1.6 is a spike, 1.4 is not.
    assert lm_spikes.spikes(np.append(calm, 1.6)) == 1
    assert lm_spikes.spikes(np.append(calm, 1.4)) == 0
    assert lm_spikes.spikes(np.append(calm, np.nan)) == 1
    # The first 50 steps have no full window: a rise there is not judged.
    assert lm_spikes.spikes(np.array([1.0, 9.0, 1.0])) == 0
    # A falling loss: the median of the window lags above it, never a spike.
    assert lm_spikes.spikes(np.linspace(5.0, 1.0, 200)) == 0
    # The window slides: a doubling that stays is a spike until the median
    # catches up. With j of the last 50 at 2.0 the median (mean of the 25th
    # and 26th values) is 1.0 for j <= 24 and 1.5 from j = 25: 25 spikes.
    step = np.append(calm, np.full(60, 2.0))
    assert lm_spikes.spikes(step) == 25


def test_every_peer_runs_at_every_multiplier(quick: tuple) -> None:
    study, _ = quick
    names = [p.name for p in lm_spikes.peers()]
    assert list(study["runs"]) == names
    best = study["best_lr"]
    free = 0
    for peer in lm_spikes.peers():
        runs = study["runs"][peer.name]
        multipliers = list(peer.starts or lm_spikes.MULTIPLIERS)
        if peer.own_rate is not None:  # learning-rate-free: once, at its default
            multipliers, free = [1.0], free + 1
            assert runs[0]["learning_rate"] == peer.own_rate
        assert [r["multiplier"] for r in runs] == multipliers
        for r, m in zip(runs, multipliers, strict=True):
            assert math.isclose(r["learning_rate"], peer.rate(best, m), rel_tol=1e-9)
            assert len(r["batch_loss"]) == study["settings"]["steps"]
    assert free == 3  # prodigy, schedule-free AdamW, mechanize
    # The rate-free configuration and GeN start from 0.01x to 30x.
    for name in (lm_spikes.RATE_FREE, lm_spikes.GEN):
        assert [r["multiplier"] for r in study["runs"][name]] == list(lm_spikes.STARTS)


def test_the_baseline_is_its_sweeps_best_rate_and_reuses_its_runs(quick: tuple) -> None:
    study, _ = quick
    sweep = study["sweep"]
    finals = {r["learning_rate"]: r["final_bpb"] for r in sweep}
    assert study["best_lr"] == min(finals, key=finals.get)
    # The sweep reaches 30x the best rate, so the baseline's row is its sweep.
    for r in study["runs"][lm_spikes.BASELINE]:
        assert r["final_bpb"] == pytest.approx(finals[r["learning_rate"]], rel=1e-12)


def test_seeds_at_each_peers_best_multiplier(quick: tuple) -> None:
    study, _ = quick
    n = study["settings"]["seeds"]
    for name, runs in study["runs"].items():
        seeds = study["seeds"][name]
        assert [r["seed"] for r in seeds] == list(range(n)), name
        best = min(
            runs,
            key=lambda r: math.inf if r["diverged"] else r["final_bpb"],
        )
        assert {r["multiplier"] for r in seeds} == {best["multiplier"]}, name
    untuned = study["untuned"]
    assert set(untuned) == {"lyapunov_adam", lm_spikes.RATE_FREE, lm_spikes.GEN}
    assert [r["learning_rate"] for r in untuned["lyapunov_adam"]] == [
        study["default_lr"]
    ] * n
    for name in (lm_spikes.RATE_FREE, lm_spikes.GEN):
        assert [r["learning_rate"] for r in untuned[name]] == [
            lm_spikes.UNTUNED_RATE
        ] * n
        assert [r["seed"] for r in untuned[name]] == list(range(n))


def test_every_peer_is_timed_and_the_goals_are_judged(quick: tuple) -> None:
    study, _ = quick
    assert set(study["per_step"]) == set(study["runs"]) | set(
        lm_spikes.RATE_FREE_PHASES
    )
    for t in study["per_step"].values():
        assert 0 < t["q1"] <= t["median"] <= t["q3"]
    goals = lm_spikes.goals(study)
    assert [g.goal[:2] for g in goals] == [
        "1.",
        "2.",
        "3.",
        "4.",
        *["R1", "R2", "R3", "R4"],
    ]
    s = lm_spikes.summary(study)
    assert s["peers"][lm_spikes.BASELINE]["cost_ratio"] == 1.0


def test_the_section_and_the_plots_are_written(quick: tuple) -> None:
    study, out = quick
    md = (out / "RESULTS.md").read_text()
    assert md.count(lm_spikes.BEGIN) == 1 and md.count(lm_spikes.END) == 1
    for name, runs in study["runs"].items():
        row = next(line for line in md.splitlines() if line.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        if runs[0]["multiplier"] == lm_spikes.STARTS[0]:  # from each start
            assert len(cells) == len(lm_spikes.STARTS), row
            assert all(" / " in c for c in cells), row
            continue
        assert len(cells) == len(lm_spikes.MULTIPLIERS), row
        # bits/byte / spikes at each multiplier; a rate-free peer's one run
        # in the first column, and a pointer to it in the others
        given = cells if len(runs) == 4 else cells[:1]
        assert all(" / " in c for c in given), row
        assert all("the 1x run" in c for c in cells[len(given) :]), row
    for png in (f"{lm_spikes.NAME}_curves_10x.png", f"{lm_spikes.NAME}_rates.png"):
        assert (out / png).read_bytes()[:8] == PNG, png


def test_the_section_rebuilds_from_the_json_and_keeps_the_rest(
    quick: tuple, tmp_path: Path
) -> None:
    _, out = quick
    md = tmp_path / "RESULTS.md"
    md.write_text(
        f"# title\n\nmine\n\n{lm_spikes.BEGIN}\nSTALE\n{lm_spikes.END}\n\nafter\n"
    )
    cli.main(
        [
            "--tasks",
            lm_spikes.NAME,
            "--from-json",
            str(out / f"{lm_spikes.NAME}.json"),
            "--out",
            str(tmp_path),
            "--results-md",
            str(md),
        ]
    )
    text = md.read_text()
    assert "STALE" not in text and "mine" in text and "after" in text
    assert "## Loss spikes on a language model" in text


def test_the_cost_breakdown_times_every_part_against_the_recipe() -> None:
    table = lm_spikes.cost_breakdown(lm_spikes.QUICK, rounds=1).splitlines()
    rows = {line.split("|")[1].strip(" `"): line for line in table[2:]}
    assert set(rows) == {lm_spikes.BASELINE, *lm_spikes.COST_PARTS}
    assert rows[lm_spikes.BASELINE].rstrip(" |").endswith("1.00")


def test_the_suite_cost_times_every50_against_adamw() -> None:
    table = lm_spikes.suite_cost(rounds=1, tasks=("mlp_full",)).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[2:] == [
        f"`{n}` x adamw" for n in (*lm_spikes.SUITE_COST[1:], "lyapunov_adam/every50")
    ]
    (row,) = table[2:]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "mlp_full"
    assert all(float(c) > 0 for c in cells[1:])
