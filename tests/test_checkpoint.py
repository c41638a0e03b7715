"""Checkpoints: a run stopped, saved with orbax, restored and resumed ends bitwise
where the same run ends without stopping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import lyapopt
from tests import digits
from tests.helpers import make_step

pytestmark = pytest.mark.slow  # runs resumed from checkpoints

BATCH = digits.batch(256)
PARAMS = digits.init(jax.random.key(0))
STEPS = 8  # in all; the broken run stops after half of them


def loss(p: dict) -> jax.Array:
    return digits.loss_fn(p, BATCH)


def assert_trees_equal(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert jnp.result_type(x) == jnp.result_type(y)
        np.testing.assert_array_equal(x, y)


def build(factory: Callable) -> tuple[optax.GradientTransformation, Callable]:
    """A fresh optimizer and a fresh jitted step, as a new process would make."""
    # A decay, so that the schedule's step count must travel in the checkpoint.
    tx = optax.inject_hyperparams(factory)(learning_rate=5.0, decay_constant=1e-3)
    return tx, jax.jit(make_step(tx, loss))


def run(step: Callable, params: Any, state: Any, steps: int) -> tuple[Any, Any]:
    for _ in range(steps):
        params, state, _ = step(params, state)
    return params, state


@pytest.mark.parametrize(
    "factory", [lyapopt.lyapunov_sgd, lyapopt.lyapunov_adam], ids=["sgd", "adam"]
)
def test_a_resumed_run_ends_bitwise_where_an_unbroken_run_ends(
    factory: Callable, tmp_path: Path
) -> None:
    def halfway(state: Any) -> Any:
        # A run-time change of the rate: the checkpoint must carry it.
        state.hyperparams["learning_rate"] = jnp.float32(2.0)
        return state

    tx, step = build(factory)
    params, state = run(step, PARAMS, tx.init(PARAMS), STEPS // 2)
    state = halfway(state)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    unbroken = run(step, params, state, STEPS // 2)

    tx, step = build(factory)  # "after the restart": nothing of the first run
    target = jax.eval_shape(lambda: {"params": PARAMS, "opt_state": tx.init(PARAMS)})
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "ckpt", target)
    assert_trees_equal(restored, {"params": params, "opt_state": state})
    resumed = run(step, restored["params"], restored["opt_state"], STEPS // 2)

    assert_trees_equal(resumed, unbroken)
    assert not np.array_equal(resumed[0]["w1"], params["w1"])  # it did train
    stats = lyapopt.stats(resumed[1])
    np.testing.assert_allclose(stats["learning_rate"], 2.0 * np.exp(-1e-3 * 7), 1e-6)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(64, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(nnx.relu(self.l1(x)))


def nnx_loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def nnx_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
    value_fn = lyapopt.flax.nnx_value_fn(model, nnx_loss, x, y)
    loss, grads = nnx.value_and_grad(nnx_loss)(model, x, y)
    optimizer.update(model, grads, value=loss, value_fn=value_fn)


def test_an_nnx_model_and_optimizer_resume_bitwise(tmp_path: Path) -> None:
    def fresh() -> tuple[MLP, nnx.Optimizer]:
        model = MLP(nnx.Rngs(0))
        return model, nnx.Optimizer(model, lyapopt.lyapunov_adam(5.0), wrt=nnx.Param)

    model, optimizer = fresh()
    for _ in range(STEPS // 2):
        nnx_step(model, optimizer, *BATCH)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(
            tmp_path / "ckpt",
            {"model": nnx.state(model), "optimizer": nnx.state(optimizer)},
        )
    for _ in range(STEPS // 2):
        nnx_step(model, optimizer, *BATCH)

    # Restore into a new model and optimizer (made abstractly: no init cost).
    new_model, new_optimizer = nnx.eval_shape(fresh)
    target = {"model": nnx.state(new_model), "optimizer": nnx.state(new_optimizer)}
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "ckpt", target)
    nnx.update(new_model, restored["model"])
    nnx.update(new_optimizer, restored["optimizer"])
    for _ in range(STEPS // 2):
        nnx_step(new_model, new_optimizer, *BATCH)

    assert_trees_equal(nnx.state(new_model), nnx.state(model))
    assert_trees_equal(nnx.state(new_optimizer), nnx.state(optimizer))
    assert int(new_optimizer.step[...]) == STEPS
