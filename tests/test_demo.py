"""The main job, shortened: python -m lyapopt.demo --steps 40."""

from __future__ import annotations

from pathlib import Path

import pytest

from lyapopt import demo

pytestmark = pytest.mark.slow  # the demo's training runs


def test_demo_prints_the_table_writes_the_plot_and_lyapunov_adam_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = demo.main(["--steps", "40", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| optimizer | learning rate | final train loss" in out
    png = tmp_path / "loss_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png.resolve()) in out
    ours = [r for r in runs if r.optimizer == "lyapunov_adam"]
    assert [r.learning_rate for r in ours] == list(demo.LEARNING_RATES)
    for r in ours:
        assert r.increases == 0, r.learning_rate
        assert not r.diverged, r.learning_rate
    adam_top = next(
        r for r in runs if r.optimizer == "optax.adam" and r.learning_rate == 100
    )
    assert adam_top.diverged
