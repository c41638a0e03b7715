"""Under ``jax.pmap``, replicas cannot drift apart through lyapopt's decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

import lyapopt
from tests.helpers import ROOT


def _pmapped_step(tx, value_fn):
    def local_step(w, s, rows):
        loss, grads = jax.value_and_grad(value_fn)(w, rows)
        grads = jax.lax.pmean(grads, "batch")
        u, s = tx.update(grads, s, w, value=loss, value_fn=value_fn, rows=rows)
        return optax.apply_updates(w, u), s

    return jax.pmap(local_step, axis_name="batch")


@pytest.mark.parametrize(
    "make",
    [
        lambda **k: lyapopt.lyapunov_adam(1.0, **k),
        lambda **k: lyapopt.stabilize(optax.sgd(0.1), safety=None, **k),
        lambda **k: lyapopt.stabilize(optax.sgd(0.1), guard=None, **k),
        lambda **k: optax.chain(optax.sgd(0.1), lyapopt.lyapunov_guard(**k)),
    ],
    ids=["lyapunov_adam", "guard", "cap", "lyapunov_guard"],
)
def test_a_per_device_loss_under_pmap_is_refused_without_axis_name(make) -> None:
    # The ordinary data-parallel step: gradients pmean'd, value_fn the
    # device's own loss with no collective inside. 0.2 let each replica
    # judge its own loss, and their parameters drifted apart silently.
    rows = jnp.arange(12.0).reshape(1, 3, 4)
    w = jnp.ones((1, 4))

    def value_fn(w, rows):
        return jnp.mean((rows @ w) ** 2)

    tx = make()
    state = jax.tree.map(lambda a: a[None], tx.init(w[0]))
    with pytest.raises(
        ValueError, match=r"may differ between devices.*axis_name='batch'"
    ):
        _pmapped_step(tx, value_fn)(w, state, rows)
    tx = make(axis_name="batch")
    state = jax.tree.map(lambda a: a[None], tx.init(w[0]))
    new_w, _ = _pmapped_step(tx, value_fn)(w, state, rows)
    assert not bool(jnp.array_equal(new_w, w))


def test_a_loss_averaged_inside_value_fn_needs_no_axis_name() -> None:
    # pmean as the last operation: the loss is the same on every replica.
    rows = jnp.arange(12.0).reshape(1, 3, 4)
    w = jnp.ones((1, 4))

    def value_fn(w, rows):
        return jax.lax.pmean(jnp.mean((rows @ w) ** 2), "batch")

    tx = lyapopt.lyapunov_adam(1.0)
    state = jax.tree.map(lambda a: a[None], tx.init(w[0]))
    new_w, _ = _pmapped_step(tx, value_fn)(w, state, rows)
    assert not bool(jnp.array_equal(new_w, w))


def test_an_unnamed_pmap_axis_is_refused_with_the_fix_of_naming_it() -> None:
    w = jnp.ones((1, 4))
    f = lambda w: jnp.sum(w**2)  # noqa: E731
    tx = lyapopt.lyapunov_adam(1.0)
    state = jax.tree.map(lambda a: a[None], tx.init(w[0]))
    step = jax.pmap(lambda w, s: tx.update(jax.grad(f)(w), s, w, value_fn=f))
    with pytest.raises(ValueError, match=r"jax.pmap\(step, axis_name='batch'\)"):
        step(w, state)


@pytest.mark.slow
def test_two_replicas_stay_identical_and_are_refused_without_axis_name() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(
        [sys.executable, "-m", "tests.replica_runs"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert "axis_name='batch'" in result["error_without_axis_name"]
    assert result["apart_with_axis_name"] == 0.0
