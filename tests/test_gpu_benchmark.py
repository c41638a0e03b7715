"""The GPU benchmark's smoke test: python -m benchmarks.gpu --tiny, on the CPU.

Its numbers mean nothing at this size; the test checks that every
configuration has its row with finite, positive ratios and memory, and
that the full sizes are the ones the table promises.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest

from benchmarks import gpu

pytestmark = pytest.mark.slow  # the benchmark script, compiled at its tiny size


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("gpu")
    gpu.main(["--tiny", "--out", str(out)])
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


def test_every_configuration_has_a_row_at_every_size(tiny: tuple) -> None:
    results, _ = tiny
    assert list(results["sizes"]) == [gpu.TINY.name]
    assert results["skipped"] == []
    for size in results["sizes"].values():
        assert list(size["rows"]) == list(gpu.configurations())


def test_ratios_and_memory_are_finite_and_positive(tiny: tuple) -> None:
    results, _ = tiny
    for size in results["sizes"].values():
        for name, row in size["rows"].items():
            for key in ("time_ratio", "mean_time_ratio", "memory_ratio"):
                assert math.isfinite(row[key]) and row[key] > 0, (name, key)
            assert row["peak_bytes"] > 0, name
            assert math.isfinite(row["extra_buffers"]), name
            assert row["seconds"]["steps"] == gpu.TINY.rounds * gpu.TINY.per_round
            assert math.isfinite(row["last_loss"]), name
        base = size["rows"][gpu.BASE]
        assert base["time_ratio"] == base["memory_ratio"] == 1.0


def test_the_table_names_the_device_and_every_row(tiny: tuple) -> None:
    results, md = tiny
    assert results["meta"]["device"] == jax.devices()[0].device_kind
    assert results["meta"]["device"] in md.splitlines()[0]
    for name in gpu.configurations():
        assert f"| {gpu.TINY.name} | `{name}` |" in md, name


@pytest.mark.parametrize(
    ("size", "low", "high"),
    [("10M", 9e6, 12e6), ("100M", 90e6, 110e6), ("300M", 280e6, 320e6)],
)
def test_the_models_have_the_sizes_they_are_named_after(
    size: str, low: float, high: float
) -> None:
    (s,) = [s for s in gpu.SIZES if s.name == size]
    shapes = jax.eval_shape(s.model().init, jax.random.key(0))
    assert low < sum(math.prod(a.shape) for a in jax.tree.leaves(shapes)) < high
    assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="a GPU is here")
def test_without_a_gpu_the_full_run_says_it_is_meant_for_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        gpu.main(["--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "meant for one GPU" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()
