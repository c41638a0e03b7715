"""Flax's own training codes, ported to digits and switched to lyapopt.

- tests/flax_nnx_tutorial.py: the NNX MNIST tutorial (Dropout, BatchNorm,
  ``nnx.view`` train and eval modes, dropout RNGs passed in, has_aux loss);
- tests/flax_linen_mnist.py: Linen ``examples/mnist`` (gradients and update
  in two jitted functions);
- tests/flax_pmap_runs.py: the ``train_step`` of Linen ``examples/imagenet``
  (BatchNorm across devices, ``batch_stats`` in ``apply_gradients``) under
  ``jax.pmap`` on 2 CPU devices, in a subprocess.

Each is switched to lyapopt by the lines marked ``# lyapopt``, at most 8,
and must reach 90% accuracy on the 297 digits it does not train on.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_on_devices

pytestmark = pytest.mark.slow  # the examples train to accuracy, one on 2 devices

ROOT = Path(__file__).resolve().parent.parent
PORTS = ("flax_nnx_tutorial.py", "flax_linen_mnist.py", "flax_pmap_runs.py")


@pytest.mark.parametrize("port", PORTS)
def test_each_port_switches_to_lyapopt_in_at_most_eight_lines(port: str) -> None:
    source = (ROOT / "tests" / port).read_text()
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    marks = {t.start[0]: t.string for t in tokens if t.type == tokenize.COMMENT}
    changed = [n for n, c in marks.items() if c.startswith("# lyapopt")]
    assert 3 <= len(changed) <= 8, changed
    # No unmarked use of lyapopt: every line of code that names it is a
    # marked change, or only records what the test checks (``# test``).
    for t in tokens:
        if t.type == tokenize.NAME and t.string == "lyapopt":
            mark = marks.get(t.start[0], "")
            assert mark.startswith(("# lyapopt", "# test")), t.line


def test_nnx_tutorial_trains_to_90_percent_guarding_the_train_mode_loss() -> None:
    from tests import flax_nnx_tutorial

    history = flax_nnx_tutorial.train()
    assert history["test_accuracy"][-1] >= 0.9, history["test_accuracy"]
    # The guard judged the loss the gradient was of: this step's dropout
    # masks and batch statistics (float32, compiled apart: 1.4e-6 measured).
    for loss, stats in zip(history["train_loss"], history["stats"], strict=True):
        np.testing.assert_allclose(stats["value_before"], loss, rtol=1e-5)
        assert stats["value_after"] <= stats["value_before"]
    assert int(history["stats"][-1]["value_mismatches"]) == 0
    # The running averages moved from their initial 0 (mean) and 1 (var).
    before, after = history["batch_stats"]
    for layer in ("batch_norm1", "batch_norm2"):
        assert np.max(np.abs(after[layer]["mean"] - before[layer]["mean"])) > 0.05
        assert np.max(np.abs(after[layer]["var"] - before[layer]["var"])) > 0.05


def test_linen_split_jit_mnist_trains_to_90_percent() -> None:
    from tests import flax_linen_mnist

    state, accuracies = flax_linen_mnist.train_and_evaluate()
    assert accuracies[-1] >= 0.9, accuracies
    assert int(state.step) == flax_linen_mnist.num_epochs * (1500 // 32)


def pmap_run(out: Path) -> dict[str, np.ndarray]:
    """tests/flax_pmap_runs.py in a process with 2 CPU devices."""
    return run_on_devices("tests.flax_pmap_runs", out, 2)


def test_pmap_imagenet_step_with_batchnorm_trains_alike_on_two_devices(
    tmp_path: Path,
) -> None:
    # One test, one subprocess: pytest-xdist would start one per worker.
    run = pmap_run(tmp_path / "runs.npz")
    np.testing.assert_array_less(0.9, run["test_accuracy"])
    # Every device holds the same parameters and batch statistics, and the
    # statistics moved (BatchNorm averages over the devices; before the sync).
    for name, value in run.items():
        if name.startswith(("params", "batch_stats")):
            np.testing.assert_array_equal(value[0], value[1], err_msg=name)
    for name in ("['BatchNorm_0']['mean']", "['BatchNorm_1']['var']"):
        moved = run[f"batch_stats{name}"][0] - run[f"initial_stats{name}"]
        assert np.max(np.abs(moved)) > 0.05, name

    # Each device's own rows give it another loss ...
    assert np.max(np.abs(run["device_loss"][:, 0] - run["device_loss"][:, 1])) > 0.1
    # ... but with axis_name="batch" the guard judged their mean, on both.
    np.testing.assert_allclose(
        run["value_before"][:, 0], run["device_loss"].mean(axis=1), rtol=1e-5
    )
    for name in ("value_before", "value_after", "backtracks", "violations"):
        np.testing.assert_array_equal(run[name][:, 0], run[name][:, 1], err_msg=name)
    # At ten times the example's rate the guard had steps to shrink.
    assert run["backtracks"].sum() > 0


def code_lines(source: str) -> set[str]:
    """The stripped lines of ``source``, without their comments."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    drop = {(t.start[0], t.string) for t in tokens if t.type == tokenize.COMMENT}
    out = set()
    for n, line in enumerate(source.splitlines(), start=1):
        for number, comment in drop:
            if number == n:
                line = line.replace(comment, "")
        out.add(line.strip())
    return out


def test_the_readme_shows_the_changed_lines_as_the_ports_run_them() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```diff\n(.*?)^```$", readme, re.DOTALL | re.MULTILINE)
    ports = {p: code_lines((ROOT / "tests" / p).read_text()) for p in PORTS}
    shown = []
    for block in blocks:
        added = [line[1:].strip() for line in block.splitlines() if line[:1] == "+"]
        added = [line for line in added if line]
        matches = [p for p, lines in ports.items() if set(added) <= lines]
        assert matches, block
        shown.extend(matches)
    assert sorted(shown) == sorted(PORTS)
