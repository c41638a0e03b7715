"""The benchmark suite's smoke test: python -m benchmarks --quick."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import cli, markdown, report, train
from benchmarks.optimizers import COMPONENTS, LEARNING_RATES, OPTIMIZERS
from benchmarks.tasks import TASKS

pytestmark = pytest.mark.slow  # a benchmark smoke

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("benchmarks")
    cli.main(["--quick", "--tasks", "mlp_full", "--out", str(out)])
    return json.loads((out / "results.json").read_text()), out


def test_quick_run_sweeps_every_optimizer_at_every_rate(quick: tuple) -> None:
    results, _ = quick
    task = results["tasks"]["mlp_full"]
    assert set(task["sweep"]) == set(OPTIMIZERS)
    for name, runs in task["sweep"].items():
        assert sorted({r["learning_rate"] for r in runs}) == list(LEARNING_RATES), name


def test_quick_run_times_every_optimizer_and_every_piece(quick: tuple) -> None:
    results, _ = quick
    cost = results["tasks"]["mlp_full"]["cost"]
    assert set(cost["per_step"]) == set(OPTIMIZERS) | set(COMPONENTS)
    for name, t in cost["per_step"].items():
        assert 0 < t["q1"] <= t["median"] <= t["q3"], name
    assert len(cost["derivatives"]) == 4


def test_lyapopt_optimizers_never_diverge_nor_raise_the_full_batch_loss(
    quick: tuple,
) -> None:
    results, _ = quick
    sweep = results["tasks"]["mlp_full"]["sweep"]
    ours = [name for name in sweep if OPTIMIZERS[name].is_lyapopt]
    assert len(ours) == 5  # with the rate-free configuration
    for name in ours:
        for run in sweep[name]:
            assert not run["diverged"], (name, run["learning_rate"])
            assert run["loss_increases"] == 0, (name, run["learning_rate"])
    # The sweep is wide enough to make plain Adam diverge: the check has teeth.
    assert any(r["diverged"] for r in sweep["optax.adam"])


def test_quality_runs_have_every_seed_at_the_chosen_rate(quick: tuple) -> None:
    results, _ = quick
    task = results["tasks"]["mlp_full"]
    seeds = task["settings"]["quality_seeds"]
    for name, q in task["quality"].items():
        assert sorted(r["seed"] for r in q["runs"]) == list(range(seeds)), name
        lr = task["chosen_lr"][name]
        assert all(r["learning_rate"] == lr for r in q["runs"]), name
        if OPTIMIZERS[name].is_lyapopt:
            assert lr == OPTIMIZERS[name].default_lr


def test_quick_run_writes_the_report_and_the_plots(quick: tuple) -> None:
    results, out = quick
    md = (out / "RESULTS.md").read_text()
    assert report.BEGIN in md and report.END in md
    # Four costs, divergence, rises, and mlp_full's quality: every lyapopt
    # optimizer within 1 pp, the rate-free one within 0.5 pp.
    assert len(results["targets"]) == 8
    for t in results["targets"]:
        assert t["target"] in md
    for png in ("cost_per_step.png", "curves_mlp_full.png", "sweep_mlp_full.png"):
        assert (out / png).read_bytes()[:8] == PNG, png


def test_the_report_rebuilds_from_the_json_alone(quick: tuple, tmp_path: Path) -> None:
    results, out = quick
    md = tmp_path / "RESULTS.md"
    md.write_text(
        f"# title\n\n{report.BEGIN}\nSTALE TABLES\n{report.END}\n\n## Analysis\n\nmine\n"
    )
    rebuilt = cli.main(
        [
            "--from-json",
            str(out / "results.json"),
            "--out",
            str(tmp_path),
            "--results-md",
            str(md),
        ]
    )
    assert rebuilt["suite"]["targets"] == results["targets"]
    text = md.read_text()
    assert (
        "STALE TABLES" not in text and "mine" in text
    )  # the hand-written part is kept
    assert "| mlp_full |" in text


def test_every_study_is_registered_once_and_selected_by_its_parts() -> None:
    names = [s.name for s in cli.STUDIES]
    parts = [p for s in cli.STUDIES for p in s.parts]
    files = [s.filename for s in cli.STUDIES]
    assert len(set(names)) == len(names)
    assert len(set(parts)) == len(parts)
    assert len(set(files)) == len(files)
    (suite, chosen), *rest = cli.selected(["transformer_lm", "mlp_full"], quick=False)
    assert suite.name == "suite" and chosen == ("transformer_lm", "mlp_full")
    assert rest == []
    assert [(s.name, p) for s, p in cli.selected(parts, quick=True)] == [
        (s.name, s.quick_parts) for s in cli.STUDIES
    ]


def test_a_section_is_appended_once_then_replaced_in_place(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    md.write_text("# mine\n\nkeep\n")
    begin, end = "<!-- B -->", "<!-- E -->"
    markdown.write_section(md, f"{begin}\nfirst\n{end}\n", begin, end)
    markdown.write_section(md, f"{begin}\nsecond\n{end}\n", begin, end)
    assert md.read_text() == f"# mine\n\nkeep\n\n{begin}\nsecond\n{end}\n"


def test_a_runner_records_the_optimizers_state_after_every_step() -> None:
    task = TASKS["mlp_full"].shrunk(steps=20, eval_every=10)
    problem = train.Problem(task)
    adam = OPTIMIZERS["optax.adam"]

    def count(state: Any) -> dict[str, Any]:
        return {"count": state[0].count}  # adam's ScaleByAdamState

    lane = train.train(train.Runner(problem, adam, record=count), 1e-3, 0, 20)
    np.testing.assert_array_equal(lane.recorded["count"], np.arange(1, 21))
    plain = train.train(train.Runner(problem, adam), 1e-3, 0, 20)
    assert plain.recorded == {}
    # Recording reads the state; it changes nothing of the run.
    np.testing.assert_array_equal(plain.batch_values, lane.batch_values)
