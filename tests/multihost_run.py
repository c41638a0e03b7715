"""One process of the README's many-hosts launch, for tests/test_multihost.py.

Run as ``python -m tests.multihost_run OUT.npz COORDINATOR NUM_PROCESSES
PROCESS_ID CHECKPOINT_DIR STEPS`` in every process, with
``XLA_FLAGS=--xla_force_host_platform_device_count=...`` for its CPU devices.
It runs the README's "Many hosts" block as written and calls its ``main`` with
these arguments, as ``python train.py COORDINATOR ...`` would; process 0 then
saves the final parameters, gathered from every process, to ``OUT.npz``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- multihost -->"  # tests/test_readme.py leaves this block to us


def readme_block() -> tuple[int, str]:
    """``(line, code)`` of the README's Python block right after ``MARKER``."""
    text = README.read_text()
    blocks = re.findall(
        re.escape(MARKER) + r"\s*^```python\n(.*?)^```$", text, re.DOTALL | re.M
    )
    assert len(blocks) == 1, f"{len(blocks)} Python blocks after {MARKER}"
    start = text.index(blocks[0])
    return text[:start].count("\n") + 1, blocks[0]


def main(
    out: str,
    coordinator: str,
    num_processes: str,
    process_id: str,
    checkpoint_dir: str,
    steps: str,
) -> None:
    jax.config.update("jax_default_matmul_precision", "highest")  # as conftest.py
    line, code = readme_block()
    script: dict = {"__name__": "train"}  # its `__main__` guard stays shut
    exec(compile(code, f"README.md:{line}", "exec"), script)
    params = script["main"](
        coordinator, int(num_processes), int(process_id), checkpoint_dir, int(steps)
    )

    assert jax.process_count() == int(num_processes), jax.process_count()
    assert jax.device_count() == 8, jax.devices()
    for name, value in params.items():
        # Each process holds only its devices' shards, laid out as the README says.
        assert value.is_fully_addressable == (int(num_processes) == 1), name
        want = NamedSharding(value.sharding.mesh, script["SPECS"][name])
        assert value.sharding.is_equivalent_to(want, value.ndim), value.sharding
    params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        np.savez(out, **params)


if __name__ == "__main__":
    main(*sys.argv[1:])
