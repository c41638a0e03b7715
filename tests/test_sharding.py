"""Many devices: 8 CPU devices (in a subprocess) end where one device does.

tests/sharded_runs.py trains the digits MLP for 10 steps with the batch
sharded over 8 devices (params replicated; params sharded; and in
``shard_map`` form) and saves the results; here the same runs on this
process's single device are the reference.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import lyapopt
from tests import digits, sharded_runs
from tests.helpers import run_on_devices

pytestmark = pytest.mark.slow  # 8 CPU devices in a subprocess

# Float32 rounding, summed in another order on 8 devices, over 10 steps: the
# largest difference measured is 2.4e-6. The cap and the guard on one
# device's 32 rows instead of the global batch (below) move a weight by 0.38.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def eight_devices(out: Path) -> dict[str, np.ndarray]:
    """The runs of tests/sharded_runs.py, in a process with 8 CPU devices."""
    return run_on_devices("tests.sharded_runs", out, 8)


@functools.cache
def one_device(name: str, value_rows: int = sharded_runs.ROWS) -> tuple:
    """The run on this process's first CPU device; ``value_fn`` on ``value_rows``."""
    tx = sharded_runs.OPTIMIZERS[name]()
    batch = digits.batch(sharded_runs.ROWS)
    value_batch = digits.batch(value_rows)

    @jax.jit
    def step(params: dict, state: optax.OptState) -> tuple:
        loss, grads = jax.value_and_grad(digits.loss_fn)(params, batch)
        if value_rows != sharded_runs.ROWS:
            loss = digits.loss_fn(params, value_batch)
        updates, state = tx.update(
            grads,
            state,
            params,
            value=loss,
            value_fn=lambda p: digits.loss_fn(p, value_batch),
        )
        return optax.apply_updates(params, updates), state

    with jax.default_device(jax.devices("cpu")[0]):
        params = digits.init(jax.random.key(0))
        state = tx.init(params)
        for _ in range(sharded_runs.STEPS):
            params, state = step(params, state)
    return params, lyapopt.stats(state)


def test_eight_devices_end_with_the_params_of_one(tmp_path: Path) -> None:
    # One test, one subprocess: pytest-xdist would start one per worker.
    # Every optimizer under an explicit mesh (jax.make_mesh's default) with
    # FSDP-sharded weights, auto and mixed meshes, pmap with axis_name, and
    # shard_map; each run also checks that params and state kept the
    # parameters' shardings and that pmap's replicas stayed identical.
    got = eight_devices(tmp_path / "runs.npz")
    _no_collective_of_its_own(json.loads((tmp_path / "runs.json").read_text()))
    for run in sharded_runs.RUNS:
        params, stats = one_device(run.split("/")[1])
        for name, value in params.items():
            np.testing.assert_allclose(
                got[f"{run}/{name}"], value, **TOLERANCE, err_msg=f"{run}/{name}"
            )
        # The last step's curvature and guard: the global batch's numbers (a
        # second derivative summed in another order: 1.2e-5 apart measured).
        for name in ("curvature", "curvature_scale", "value_before", "value_after"):
            if name not in stats:  # the first-order rule has neither
                continue
            np.testing.assert_allclose(
                got[f"{run}/{name}"], stats[name], rtol=1e-4, err_msg=f"{run}/{name}"
            )


def _components(found: list) -> set[tuple[str, str]]:
    """``(op, array type)`` pairs; XLA combines several arrays into one op."""
    return {
        (op, part)
        for op, shape in found
        for part in re.findall(r"\w+\[[\d,]*\]", shape)
    }


def _no_collective_of_its_own(found: dict) -> None:
    """Every array that the lyapopt step gathers, scatters or permutes is one
    the model's own step (optax.adam's) does too; every array it all-reduces
    is a scalar (g.u, u.Hu, norms, losses) or one the model's step reduces."""
    reference = _components(found["optax.adam"])
    assert reference, "the FSDP step has collectives of its own"
    for name in ("lyapunov_adam", "lyapunov_sgd"):
        for op, part in _components(found[name]):
            if op == "all-reduce" and part.endswith("[]"):
                continue
            assert (op, part) in reference, (name, op, part)


def test_curvature_from_one_device_s_rows_alone_would_be_told_apart() -> None:
    # What a device would compute from its own 32 rows without averaging:
    # the comparison above is tight enough to see it.
    exact, _ = one_device("adam")
    local, _ = one_device("adam", value_rows=sharded_runs.ROWS // 8)
    gap = max(float(np.max(np.abs(exact[k] - local[k]))) for k in exact)
    assert gap > 100 * TOLERANCE["atol"]
