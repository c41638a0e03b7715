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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_train_state_apply_gradients_alone_fails_and_names_the_helper() -> None:
    state, loss_fn = linen_state(lyapopt.lyapunov_adam())
    grads = jax.grad(loss_fn)(state.params, (X, Y))
    with pytest.raises(ValueError, match=r"lyapopt\.flax\.apply_gradients"):
        jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, grads)


def test_apply_gradients_refuses_overwrite_with_gradient() -> None:
    state, _ = linen_state(lyapopt.lyapunov_adam())
    grads = {"params": state.params, "overwrite_with_gradient": {}}
    with pytest.raises(ValueError, match="overwrite_with_gradient"):
        lyapopt.flax.apply_gradients(state, grads=grads, value_fn=lambda p: 0.0)


# --- Flax training code as Flax writes it (issue 10) -------------------------


class DropoutMLP(nnx.Module):
    """The NNX tutorial's way: dropout RNGs passed in at call time."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(64, 32, rngs=rngs)
        self.drop = nnx.Dropout(0.5)
        self.l2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.l2(self.drop(nnx.relu(self.l1(x)), rngs=rngs))


def aux_loss(model: DropoutMLP, rngs: nnx.Rngs, x: jax.Array, y: jax.Array) -> tuple:
    logits = model(x, rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def test_nnx_value_fn_takes_the_dropout_rngs_passed_in_as_the_model() -> None:
    model = DropoutMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, lyapopt.lyapunov_adam(10.0), wrt=nnx.Param)
    rngs = nnx.Rngs(1)

    @nnx.jit
    def train_step(model, optimizer, rngs, x, y):
        value_fn = lyapopt.flax.nnx_value_fn(model, aux_loss, rngs, x, y, has_aux=True)
        (loss, _), grads = nnx.value_and_grad(aux_loss, has_aux=True)(model, rngs, x, y)
        optimizer.update(model, grads, value=loss, value_fn=value_fn)
        return loss, lyapopt.stats(optimizer.opt_state)

    for step in range(1, 4):
        loss, stats = train_step(model, optimizer, rngs, X, Y)
        # The guard's V(theta) is the loss under this step's dropout mask ...
        np.testing.assert_allclose(stats["value_before"], loss, rtol=1e-6)
        assert int(stats["value_mismatches"]) == 0
        # ... and its many evaluations drew nothing from `rngs`: one mask a step.
        assert int(rngs.default.count[...]) == step


def test_nnx_value_fn_keeps_objects_the_model_shares_with_its_arguments_shared() -> (
    None
):
    # The model holds the Rngs that is also passed in: one object, one count.
    rngs = nnx.Rngs(0)
    model = DropoutMLP(rngs)
    model.rngs = rngs

    def loss(model: DropoutMLP, rngs: nnx.Rngs) -> jax.Array:
        first, second = model(X, model.rngs), model(X, rngs)  # two masks, in turn
        return jnp.mean((first - second) ** 2)

    value_fn = lyapopt.flax.nnx_value_fn(model, loss, rngs)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    # Shared: the two calls draw consecutive masks, so they differ; split
    # apart, both copies would draw the same mask and the loss would be 0.
    assert float(value_fn(params)) > 1e-3
    np.testing.assert_array_equal(value_fn(params), loss(model, rngs))


def test_nnx_value_fn_with_has_aux_returns_the_loss_alone() -> None:
    model = DropoutMLP(nnx.Rngs(0))
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    value_fn = lyapopt.flax.nnx_value_fn(
        model, aux_loss, nnx.Rngs(1), X, Y, has_aux=True
    )
    loss, _ = aux_loss(model, nnx.Rngs(1), X, Y)
    assert value_fn(params).shape == ()
    np.testing.assert_array_equal(value_fn(params), loss)


def test_a_tuple_loss_without_has_aux_is_refused_with_the_fix() -> None:
    model = DropoutMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, lyapopt.lyapunov_adam(), wrt=nnx.Param)
    value_fn = lyapopt.flax.nnx_value_fn(model, aux_loss, nnx.Rngs(1), X, Y)
    (loss, _), grads = nnx.value_and_grad(aux_loss, has_aux=True)(
        model, nnx.Rngs(1), X, Y
    )
    with pytest.raises(TypeError, match=r"nnx_value_fn\(\.\.\., has_aux=True\)"):
        optimizer.update(model, grads, value=loss, value_fn=value_fn)


def test_a_tuple_value_in_apply_gradients_is_refused_with_the_fix() -> None:
    state, loss_fn = linen_state(lyapopt.lyapunov_adam())
    loss, grads = jax.value_and_grad(loss_fn)(state.params, (X, Y))
    with pytest.raises(TypeError, match="has_aux"):
        lyapopt.flax.apply_gradients(
            state,
            grads=grads,
            value=(loss, jnp.zeros(5)),
            value_fn=lambda p: loss_fn(p, (X, Y)),
        )


class BatchNormState(TrainState):
    batch_stats: dict


def test_apply_gradients_replaces_the_fields_it_is_given_as_flax_does() -> None:
    seen = []

    def update(updates, state, params=None, **extra_args):
        seen.append(sorted(extra_args))
        return updates, state

    tx = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    state = BatchNormState.create(
        apply_fn=None, params={"w": jnp.ones(2)}, tx=tx, batch_stats={"mean": 0.0}
    )
    new = lyapopt.flax.apply_gradients(
        state,
        grads={"w": jnp.ones(2)},
        batch_stats={"mean": 1.0},
        value=1.0,
        value_fn=lambda p, batch: 1.0,
        batch=2.0,
    )
    assert new.batch_stats == {"mean": 1.0}  # as TrainState.apply_gradients
    assert seen == [["batch", "value", "value_fn"]]  # the rest went to tx
    assert int(new.step) == 1


def test_apply_gradients_refuses_the_fields_the_step_sets() -> None:
    state, _ = linen_state(lyapopt.lyapunov_adam())
    with pytest.raises(TypeError, match="`params`"):
        lyapopt.flax.apply_gradients(state, grads=state.params, params=state.params)


def test_nnx_optimizer_update_without_value_fn_names_the_flax_helpers() -> None:
    model = DropoutMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, lyapopt.lyapunov_adam(), wrt=nnx.Param)
    grads = nnx.grad(lambda m: aux_loss(m, nnx.Rngs(1), X, Y)[0])(model)
    with pytest.raises(ValueError, match=r"lyapopt\.flax\.nnx_value_fn"):
        optimizer.update(model, grads)


def test_stabilize_refuses_multisteps_and_names_gradient_transformation() -> None:
    multi = optax.MultiSteps(optax.adam(1e-2), every_k_schedule=5)
    with pytest.raises(TypeError, match=r"\.gradient_transformation\(\)"):
        lyapopt.stabilize(multi)


def test_multisteps_inside_stabilize_counts_no_violation_on_the_mini_steps() -> None:
    # On MultiSteps' mini-steps the update is exactly zero, so the parameters
    # do not move and the loss cannot rise. 0.1 reported 7 "violations" in
    # these 25 calls, each with 8 backtracks: V(theta + 0), evaluated by
    # another compiled program than V(theta), came out one float32 ulp
    # higher. A zero update now always holds.
    tx = lyapopt.stabilize(
        optax.MultiSteps(optax.adam(1e-2), every_k_schedule=5).gradient_transformation()
    )
    params = digits.init(jax.random.key(0))
    state = tx.init(params)

    @jax.jit
    def step(params, state, batch):
        loss, grads = jax.value_and_grad(digits.loss_fn)(params, batch)
        updates, state = tx.update(
            grads, state, params, value=loss, value_fn=digits.loss_fn, batch=batch
        )
        moved = optax.tree.norm(updates) > 0
        return optax.apply_updates(params, updates), state, moved

    mini_step_violations = 0
    for call in range(25):
        before = int(lyapopt.stats(state)["violations"])
        params, state, moved = step(params, state, digits.batch(32, 32 * call))
        if call % 5 != 4:  # MultiSteps' mini-steps: no update
            assert not bool(moved)
            mini_step_violations += int(lyapopt.stats(state)["violations"]) - before
    assert mini_step_violations == 0
