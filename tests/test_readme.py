"""README.md: its Python code blocks run, in order, as one script.

A later block may use what an earlier one defined (``batch``, ``init`` and
``loss_fn`` come from the quick start), as a reader going down the page
would. The run happens in a temporary directory, where the blocks write
their checkpoint and their TensorBoard log.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
# Sections whose examples must stay runnable (and so must stay in the README).
SECTIONS = (
    "Quick start",
    "Flax NNX",
    "Flax Linen",
    "Inside optax's wrappers",
    "Checkpoints",
    "Many devices",
    "Logging",
)


def blocks() -> list[tuple[int, str, str]]:
    """``(line, section, code)`` of every Python block, in order."""
    out, section = [], ""
    for m in FENCE.finditer(README):
        before = README[: m.start()]
        headings = re.findall(r"^## (.+)$", before, re.MULTILINE)
        section = headings[-1] if headings else section
        out.append((before.count("\n") + 2, section, m.group(1)))
    return out


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the TensorBoard event files under ``logdir``.

    Each record is a little-endian uint64 length, its masked CRC (uint32),
    the serialised ``Event``, and that record's masked CRC.
    """
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(
                    (event.step, value.simple_value)
                )
    return scalars


def test_every_section_with_an_example_still_has_one() -> None:
    found = {section for _, section, _ in blocks()}
    assert set(SECTIONS) <= found, set(SECTIONS) - found


def test_the_python_blocks_run_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}  # a `__main__` guard stays shut
    for line, section, code in blocks():
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(
                f"the block at README.md line {line} ({section}) failed: {e!r}"
            ) from e

    # Linen and NNX: 50 steps each, all taken.
    assert int(namespace["train_state"].step) == 50
    assert int(namespace["optimizer"].step[...]) == 50

    # Logging: TensorBoard holds every step's stats as the jitted step returned them.
    history = namespace["history"]
    scalars = read_scalars(tmp_path / "runs")
    assert set(scalars) == {f"lyapopt/{name}" for name in history[0]}
    for name in ("value_before", "value_after", "learning_rate", "curvature_scale"):
        steps, values = zip(*scalars[f"lyapopt/{name}"], strict=True)
        assert list(steps) == list(range(50))
        np.testing.assert_allclose(
            values, [h[name] for h in history], rtol=1e-6, err_msg=name
        )
    # The loss that each step's guard accepted is the next step's loss.
    np.testing.assert_allclose(
        [h["value_after"] for h in history[:-1]],
        [h["value_before"] for h in history[1:]],
        rtol=1e-5,
    )
