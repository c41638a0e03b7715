"""README.md: its Python code blocks run, in order, as one script.

A later block may use what an earlier one defined (``batch``, ``init`` and
``loss_fn`` come from the quick start), as a reader going down the page
would. The run happens in a temporary directory. The sections that moved
to the docs pages (optax's wrappers, checkpoints, logging) run in
tests/test_docs.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the README's code, run

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
# Sections whose examples must stay runnable (and so must stay in the README).
SECTIONS = (
    "Quick start",
    "Flax NNX",
    "Flax Linen",
    "Many devices",
)
# The sections that moved to the docs pages run in tests/test_docs.py.
# A block right after this comment runs in many processes, in
# tests/test_multihost.py, not here.
ELSEWHERE = "<!-- multihost -->"


def blocks() -> list[tuple[int, str, str]]:
    """``(line, section, code)`` of every Python block, in order."""
    out, section = [], ""
    for m in FENCE.finditer(README):
        before = README[: m.start()]
        headings = re.findall(r"^## (.+)$", before, re.MULTILINE)
        section = headings[-1] if headings else section
        if before.rstrip().endswith(ELSEWHERE):
            continue
        out.append((before.count("\n") + 2, section, m.group(1)))
    return out


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
