"""Many hosts: two processes of 4 CPU devices each, checkpointed and resumed, end
where one process of 8 devices ends.

Every process runs the README's "Many hosts" block as written
(tests/multihost_run.py): ``jax.distributed.initialize`` with a coordinator on
a free loopback port (gloo carries the collectives between CPU processes), one
8-device mesh over both processes, the hidden units sharded over its "model"
axis and the global batch, of which each process loads half, over its "data"
axis. The two processes stop after 4 steps, leaving an orbax checkpoint that
both write; a second launch resumes from it to step 8. The reference is one
process of 8 devices that takes the 8 steps without stopping.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two processes

ROOT = Path(__file__).resolve().parent.parent
STEPS, STOP = 8, 4
# Same mesh, same programs: only the all-reduces cross a process boundary
# (through gloo instead of in memory). The parameters come out bitwise equal.
ATOL = 1e-6
# Seconds for all three launches: 52 measured on 2 cores at a load average of 9.
BUDGET = 115


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    tmp_path: Path, name: str, processes: int, devices: int, steps: int
) -> list[tuple[subprocess.Popen, Path]]:
    """Start ``processes`` processes of ``devices`` CPU devices on one checkpoint."""
    coordinator = f"127.0.0.1:{free_port()}"
    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        **os.environ,
        # The coordinator would listen on every address ([::]); loopback only.
        "JAX_COORDINATOR_BIND_ADDRESS": coordinator,
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
    }
    started = []
    for i in range(processes):
        out_file, checkpoints = tmp_path / f"{name}-{steps}.npz", tmp_path / name
        args = [out_file, coordinator, processes, i, checkpoints, steps]
        log = tmp_path / f"{name}-{steps}-{i}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.multihost_run", *map(str, args)],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append((proc, log))
    return started


def finish(started: list[tuple[subprocess.Popen, Path]], deadline: float) -> None:
    """Wait for every process; at the first failure, or at ``deadline``, kill
    the others (they would wait for the failed one at the next collective)."""
    procs = [proc for proc, _ in started]
    killed = []
    try:
        while any(proc.poll() is None for proc in procs):
            if time.monotonic() > deadline or any(proc.poll() for proc in procs):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                killed.append(proc)
    # The process that failed first, then those killed after it.
    for proc, log in sorted(started, key=lambda started: started[0] in killed):
        why = (
            f"killed (another process failed, or the {BUDGET} s ran out)"
            if proc in killed
            else f"exit status {proc.returncode}"
        )
        assert proc.returncode == 0, f"{log.name}: {why}\n{log.read_text()[-3000:]}"


def test_two_processes_resumed_end_with_the_params_of_one_process(
    tmp_path: Path,
) -> None:
    deadline = time.monotonic() + BUDGET
    # The reference runs beside the first launch: three processes on two cores.
    first = launch(tmp_path, "two", processes=2, devices=4, steps=STOP)
    reference = launch(tmp_path, "one", processes=1, devices=8, steps=STEPS)
    finish(first + reference, deadline)
    second = launch(tmp_path, "two", processes=2, devices=4, steps=STEPS)
    finish(second, deadline)

    # Both processes of the second launch restored the checkpoint of the first.
    for _, log in second:
        assert f"steps {STOP} to {STEPS}" in log.read_text(), log.name
    got = np.load(tmp_path / f"two-{STEPS}.npz")
    want = np.load(tmp_path / f"one-{STEPS}.npz")
    halfway = np.load(tmp_path / f"two-{STOP}.npz")
    assert sorted(got) == ["b1", "b2", "w1", "w2"]
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=ATOL)
        assert np.max(np.abs(got[name] - halfway[name])) > 1e-3  # it did train
