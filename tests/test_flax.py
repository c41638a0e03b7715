"""Flax: nnx.Optimizer with nnx_value_fn, and Linen's TrainState with apply_gradients."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training.train_state import TrainState

import lyapopt
from tests import digits
from tests.helpers import make_step

X, Y = digits.batch(256)
STEPS = 15


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dropout: float = 0.0) -> None:
        self.l1 = nnx.Linear(64, 32, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.l2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(self.drop(nnx.relu(self.l1(x))))


def nnx_loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def dict_loss(p: dict) -> jax.Array:
    """``nnx_loss`` of MLP written on the plain arrays of its parameters."""
    h = jax.nn.relu(X @ p["l1"]["kernel"] + p["l1"]["bias"])
    logits = h @ p["l2"]["kernel"] + p["l2"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def nnx_train(
    tx: optax.GradientTransformation, steps: int = STEPS, dropout: float = 0.0
) -> tuple[MLP, nnx.Optimizer, list[float], list[dict], list[int]]:
    """The README's NNX step, ``steps`` times; returns losses, stats, traces."""
    model = MLP(nnx.Rngs(0), dropout)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    traces = []

    @nnx.jit
    def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
        traces.append(1)
        value_fn = lyapopt.flax.nnx_value_fn(model, nnx_loss, x, y)
        loss, grads = nnx.value_and_grad(nnx_loss)(model, x, y)
        optimizer.update(model, grads, value=loss, value_fn=value_fn)
        return loss, lyapopt.stats(optimizer.opt_state)

    losses, logs = [], []
    for _ in range(steps):
        loss, metrics = train_step(model, optimizer, X, Y)
        losses.append(float(loss))
        logs.append(metrics)
    return model, optimizer, losses, logs, traces


@pytest.mark.parametrize("factory", [lyapopt.lyapunov_sgd, lyapopt.lyapunov_adam])
def test_nnx_optimizer_takes_the_steps_of_tx_update_on_plain_arrays(factory) -> None:
    tx = factory(1.0)
    init = nnx.to_pure_dict(nnx.state(MLP(nnx.Rngs(0)), nnx.Param))
    step = jax.jit(make_step(tx, dict_loss))
    params, state = init, tx.init(init)
    for _ in range(STEPS):
        params, state, _ = step(params, state)

    model, _, _, _, traces = nnx_train(tx)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, params
    )
    assert len(traces) == 1  # nnx.jit traced the step once


def test_nnx_training_decreases_the_loss_where_adam_diverges() -> None:
    _, optimizer, losses, logs, _ = nnx_train(lyapopt.lyapunov_adam(10.0))
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.5 * losses[0]
    # Each step's stats: the guard saw the loss the step returned, then a lower one.
    for loss, metrics in zip(losses, logs, strict=True):
        np.testing.assert_allclose(metrics["value_before"], loss, rtol=1e-6)
        assert float(metrics["value_after"]) < loss

    # stats reads nnx.Optimizer's state (nnx.Variable boxes) as any optax state.
    got = lyapopt.stats(optimizer.opt_state)
    plain = lyapopt.stats(lyapopt.lyapunov_adam().init({"w": jnp.zeros(3)}))
    assert set(got) == set(plain)
    assert all(isinstance(v, jax.Array) for v in got.values())
    for name, value in got.items():
        np.testing.assert_array_equal(value, logs[-1][name], err_msg=name)

    _, _, adam, _, _ = nnx_train(optax.adam(10.0))
    assert max(adam[1:]) > adam[0]  # the same rate without lyapopt goes up


def test_nnx_wrt_filter_trains_part_of_the_model_with_the_rest_in_value_fn() -> None:
    # NNX's own answer to optax.masked: the optimizer sees only `wrt`, and
    # nnx_value_fn puts the frozen rest back into the model.
    wrt = nnx.All(nnx.Param, nnx.PathContains("l2"))
    model = MLP(nnx.Rngs(0))
    frozen = nnx.to_pure_dict(nnx.state(model, nnx.Param))["l1"]
    optimizer = nnx.Optimizer(model, lyapopt.lyapunov_adam(10.0), wrt=wrt)

    @nnx.jit
    def train_step(model: MLP, optimizer: nnx.Optimizer) -> jax.Array:
        value_fn = lyapopt.flax.nnx_value_fn(model, nnx_loss, X, Y, wrt=wrt)
        grad_fn = nnx.value_and_grad(nnx_loss, argnums=nnx.DiffState(0, wrt))
        loss, grads = grad_fn(model, X, Y)
        optimizer.update(model, grads, value=loss, value_fn=value_fn)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(STEPS)]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.7 * losses[0]
    trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, trained["l1"], frozen)


def test_value_fn_built_before_the_gradient_sees_the_same_dropout_mask() -> None:
    @nnx.jit
    def losses(model: MLP) -> tuple[jax.Array, ...]:
        before = lyapopt.flax.nnx_value_fn(model, nnx_loss, X, Y)
        loss = nnx_loss(model, X, Y)  # draws the dropout mask, advances the RNG
        after = lyapopt.flax.nnx_value_fn(model, nnx_loss, X, Y)
        params = nnx.as_pure(nnx.state(model, nnx.Param))
        return loss, before(params), before(params), after(params)

    loss, before, again, after = losses(MLP(nnx.Rngs(0), dropout=0.5))
    assert float(before) == float(loss)
    assert float(again) == float(loss)  # value_fn is a function: no RNG drift
    assert abs(float(after) - float(loss)) > 1e-3  # another mask, another loss


def test_nnx_training_with_dropout_guards_the_loss_of_each_steps_mask() -> None:
    _, _, losses, logs, _ = nnx_train(lyapopt.lyapunov_adam(10.0), 5, dropout=0.5)
    for loss, metrics in zip(losses, logs, strict=True):
        np.testing.assert_allclose(metrics["value_before"], loss, rtol=1e-6)
        assert float(metrics["value_after"]) <= loss


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


def linen_state(tx: optax.GradientTransformation) -> tuple[TrainState, callable]:
    model = LinenMLP()
    params = model.init(jax.random.key(0), X[:1])["params"]

    def loss_fn(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return TrainState.create(apply_fn=model.apply, params=params, tx=tx), loss_fn


def test_linen_apply_gradients_is_the_train_state_step_with_value_fn() -> None:
    state, loss_fn = linen_state(lyapopt.lyapunov_adam(10.0))

    @jax.jit
    def train_step(state: TrainState, batch: tuple) -> tuple[TrainState, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        state = lyapopt.flax.apply_gradients(
            state, grads=grads, value=loss, value_fn=lambda p: loss_fn(p, batch)
        )
        return state, loss

    start = state
    losses = []
    for _ in range(STEPS):
        state, loss = train_step(state, (X, Y))
        losses.append(float(loss))
    assert int(state.step) == STEPS
    assert all(b < a for a, b in itertools.pairwise(losses)), losses

    # One step of the helper is tx.update and apply_updates, and nothing else.
    @jax.jit
    def by_hand_and_by_helper(state: TrainState, batch: tuple) -> tuple:
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        extra = {"value": loss, "value_fn": lambda p: loss_fn(p, batch)}
        updates, opt_state = state.tx.update(
            grads, state.opt_state, state.params, **extra
        )
        by_hand = (optax.apply_updates(state.params, updates), opt_state)
        return by_hand, lyapopt.flax.apply_gradients(state, grads=grads, **extra)

    (params, opt_state), one = by_hand_and_by_helper(start, (X, Y))
    jax.tree.map(np.testing.assert_array_equal, one.params, params)
    jax.tree.map(np.testing.assert_array_equal, one.opt_state, opt_state)
    assert int(one.step) == 1


def test_train_state_apply_gradients_alone_fails_and_names_value_fn() -> None:
    state, loss_fn = linen_state(lyapopt.lyapunov_adam())
    grads = jax.grad(loss_fn)(state.params, (X, Y))
    with pytest.raises(ValueError, match="value_fn"):
        jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, grads)


def test_apply_gradients_refuses_overwrite_with_gradient() -> None:
    state, _ = linen_state(lyapopt.lyapunov_adam())
    grads = {"params": state.params, "overwrite_with_gradient": {}}
    with pytest.raises(ValueError, match="overwrite_with_gradient"):
        lyapopt.flax.apply_gradients(state, grads=grads, value_fn=lambda p: 0.0)
