"""lyapunov_sgd and lyapunov_adam inside optax's wrappers, on the digits MLP.

inject_hyperparams, MultiSteps, apply_if_finite, chain with
clip_by_global_norm, and masked (refused, with the working form tested).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt
from tests import digits
from tests.helpers import make_step

BATCH = digits.batch(256)
PARAMS = digits.init(jax.random.key(0))
STEPS = 12


def loss(p: dict) -> jax.Array:
    return digits.loss_fn(p, BATCH)


factories = pytest.mark.parametrize(
    "factory", [lyapopt.lyapunov_sgd, lyapopt.lyapunov_adam], ids=["sgd", "adam"]
)


def train(tx: optax.GradientTransformation, steps: int = STEPS) -> tuple:
    """``steps`` jitted steps on the full batch; returns params, state, losses."""
    step = jax.jit(make_step(tx, loss))
    params, state, losses = PARAMS, tx.init(PARAMS), []
    for _ in range(steps):
        params, state, value = step(params, state)
        losses.append(float(value))
    return params, state, losses


def assert_strictly_decreasing(losses: list[float]) -> None:
    assert all(b < a for a, b in itertools.pairwise(losses)), losses


def assert_trees_close(a: Any, b: Any, rtol: float = 1e-6, atol: float = 0.0) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol, atol), a, b)


# --- optax.inject_hyperparams ---------------------------------------------


@pytest.mark.slow
@factories
def test_inject_hyperparams_changes_rate_decay_and_safety_without_recompiling(
    factory: Callable,
) -> None:
    tx = optax.inject_hyperparams(factory)(
        learning_rate=10.0, decay_constant=1e-3, safety=1.0
    )
    traces = []

    def counted(p: dict, s: Any) -> tuple:
        traces.append(1)  # once per trace, i.e. per compilation
        return make_step(tx, loss)(p, s)

    step = jax.jit(counted)
    params, state = PARAMS, tx.init(PARAMS)
    for _ in range(3):
        params, state, _ = step(params, state)
    # jnp.float32, not a Python float: a weakly typed scalar would recompile.
    state.hyperparams["learning_rate"] = jnp.float32(20.0)
    state.hyperparams["decay_constant"] = jnp.float32(0.1)
    state.hyperparams["safety"] = jnp.float32(0.5)
    new_params, new_state, _ = step(params, state)
    assert len(traces) == 1

    got = lyapopt.stats(new_state)
    np.testing.assert_allclose(got["learning_rate"], 20.0 * np.exp(-0.1 * 3), 1e-6)
    assert float(got["s_star"]) < 2.0  # so safety 0.5 binds: scale = 0.5 s*
    np.testing.assert_allclose(got["curvature_scale"], 0.5 * got["s_star"], 1e-6)

    # The step is the plain optimizer's, built with the new values.
    plain = factory(20.0, decay_constant=0.1, safety=0.5)
    expected_params, expected_inner, _ = jax.jit(make_step(plain, loss))(
        params, state.inner_state
    )
    assert_trees_close(new_params, expected_params, 1e-5, 1e-7)
    assert_trees_close(new_state.inner_state, expected_inner, 1e-5, 1e-7)


# --- optax.MultiSteps -----------------------------------------------------


@pytest.mark.slow
@factories
def test_multisteps_takes_one_step_guarded_on_the_last_mini_batch(
    factory: Callable,
) -> None:
    tx = factory()
    multi = optax.MultiSteps(tx, every_k_schedule=2)
    halves = digits.batch(128, 0), digits.batch(128, 128)

    @jax.jit
    def mini_step(p: dict, s: Any, batch: tuple) -> tuple:
        value, grads = jax.value_and_grad(digits.loss_fn)(p, batch)
        value_fn = lambda q: digits.loss_fn(q, batch)  # noqa: E731
        updates, s = multi.update(grads, s, p, value=value, value_fn=value_fn)
        return optax.apply_updates(p, updates), s

    state = multi.init(PARAMS)
    after_first, state = mini_step(PARAMS, state, halves[0])
    after_second, state = mini_step(after_first, state, halves[1])
    jax.tree.map(np.testing.assert_array_equal, after_first, PARAMS)

    # One step of the mean gradient, with the value and value_fn of the call
    # that completes the accumulation: the cap and the guard see that
    # mini-batch, not the whole of what was accumulated.
    grads = jax.tree.map(
        lambda a, b: (a + b) / 2,
        *(jax.grad(digits.loss_fn)(PARAMS, h) for h in halves),
    )
    last = lambda q: digits.loss_fn(q, halves[1])  # noqa: E731
    updates, _ = jax.jit(
        lambda g: tx.update(
            g, tx.init(PARAMS), PARAMS, value=last(PARAMS), value_fn=last
        )
    )(grads)
    assert_trees_close(after_second, optax.apply_updates(PARAMS, updates), 1e-5, 1e-7)
    assert float(last(after_second)) < float(last(PARAMS))


@pytest.mark.slow
def test_multisteps_pays_the_cap_and_the_guard_on_every_mini_step() -> None:
    factory = lyapopt.lyapunov_adam
    evaluations = []

    def counted_loss(p: dict) -> jax.Array:
        jax.debug.callback(lambda: evaluations.append(1))  # runs once per forward
        return loss(p)

    def evaluations_per_call(tx: optax.GradientTransformation) -> list[int]:
        step = jax.jit(
            lambda p, s: tx.update(
                jax.grad(loss)(p), s, p, value=loss(p), value_fn=counted_loss
            )
        )
        state, counts = tx.init(PARAMS), []
        for _ in range(2):
            evaluations.clear()
            _, state = step(PARAMS, state)
            jax.effects_barrier()
            counts.append(len(evaluations))
        return counts

    single = evaluations_per_call(factory())
    mini = evaluations_per_call(optax.MultiSteps(factory(), every_k_schedule=2))
    # At least the curvature's forward-over-forward pass and the guard's
    # forward passes (3 today: V(theta), V(theta + u), no backtracking) ...
    assert single[0] >= 2 and single[1] == single[0]
    # ... and as many on the mini-step whose update MultiSteps throws away.
    assert mini == single


@pytest.mark.slow
def test_accumulating_in_one_step_guards_the_whole_batch() -> None:
    # MultiSteps' alternative: the micro-batches in a loop inside one step.
    tx = lyapopt.lyapunov_adam()
    micro = jax.tree.map(lambda a: a.reshape(4, 64, *a.shape[1:]), BATCH)

    @jax.jit
    def step(p: dict, s: Any) -> tuple:
        def value_fn(q: dict) -> jax.Array:
            per_micro_batch = jax.checkpoint(lambda b: digits.loss_fn(q, b))
            return jax.lax.map(per_micro_batch, micro).mean()

        value, grads = jax.value_and_grad(value_fn)(p)
        updates, s = tx.update(grads, s, p, value=value, value_fn=value_fn)
        return optax.apply_updates(p, updates), s

    got, _ = step(PARAMS, tx.init(PARAMS))
    expected, _, _ = jax.jit(make_step(tx, loss))(PARAMS, tx.init(PARAMS))
    assert_trees_close(got, expected, 1e-5, 1e-7)


# --- optax.apply_if_finite ------------------------------------------------


@pytest.mark.slow
@factories
def test_apply_if_finite_drops_a_nan_step_and_counts_it(factory: Callable) -> None:
    tx = optax.apply_if_finite(factory(), max_consecutive_errors=3)

    @jax.jit
    def step(p: dict, s: Any, poison: jax.Array) -> tuple:
        value, grads = jax.value_and_grad(loss)(p)
        grads = {**grads, "b2": grads["b2"] * poison}
        updates, s = tx.update(grads, s, p, value=value, value_fn=loss)
        return optax.apply_updates(p, updates), s

    init = tx.init(PARAMS)
    params, state = step(PARAMS, init, jnp.float32(jnp.nan))
    jax.tree.map(np.testing.assert_array_equal, params, PARAMS)
    jax.tree.map(np.testing.assert_array_equal, state.inner_state, init.inner_state)
    # apply_if_finite's own count, then stabilize's inside: never reached.
    counts = optax.tree.get_all_with_path(state, "total_notfinite")
    assert [int(c) for _, c in counts] == [1, 0]
    assert int(lyapopt.stats(state)["nonfinite_gradients"]) == 1  # the sum

    # The next, finite step is the first step of the optimizer alone.
    params, state = step(params, state, jnp.float32(1.0))
    expected, _, _ = jax.jit(make_step(factory(), loss))(PARAMS, factory().init(PARAMS))
    assert_trees_close(params, expected)
    assert int(lyapopt.stats(state)["nonfinite_gradients"]) == 1


# --- optax.chain with optax.clip_by_global_norm ---------------------------


@pytest.mark.slow
@factories
def test_clip_by_global_norm_before_lyapopt_clips_what_it_sees(
    factory: Callable,
) -> None:
    grad_norm = float(optax.tree.norm(jax.grad(loss)(PARAMS)))
    clip = grad_norm / 4
    tx = optax.chain(optax.clip_by_global_norm(clip), factory())

    # One step is the optimizer's step on the gradient scaled down to the clip.
    @jax.jit
    def first_updates(p: dict) -> tuple:
        value, grads = jax.value_and_grad(loss)(p)
        clipped = optax.tree.scale(clip / grad_norm, grads)
        plain = factory()
        by_hand, _ = plain.update(clipped, plain.init(p), p, value=value, value_fn=loss)
        chained, _ = tx.update(grads, tx.init(p), p, value=value, value_fn=loss)
        return chained, by_hand

    chained, by_hand = first_updates(PARAMS)
    assert_trees_close(chained, by_hand, 1e-5, 1e-8)


# --- optax.masked: refused; multi_transform under stabilize instead -------

LABELS = {"w1": "freeze", "b1": "freeze", "w2": "train", "b2": "train"}


@factories
@pytest.mark.parametrize("wrapper", ["masked", "multi_transform"])
def test_lyapopt_inside_masked_is_refused_with_the_fix(
    factory: Callable, wrapper: str
) -> None:
    if wrapper == "masked":
        mask = {k: v == "train" for k, v in LABELS.items()}
        tx = optax.masked(factory(), mask)
    else:
        tx = optax.multi_transform(
            {"train": factory(), "freeze": optax.set_to_zero()}, LABELS
        )
    with pytest.raises(ValueError, match=r"optax\.masked.*multi_transform"):
        jax.jit(make_step(tx, loss))(PARAMS, tx.init(PARAMS))


@factories
def test_stabilized_multi_transform_freezes_leaves_and_decreases_the_loss(
    factory: Callable,
) -> None:
    # The factory's direction per leaf; the cap and the guard on the whole tree.
    direction = factory(safety=None, guard=None)
    tx = lyapopt.stabilize(
        optax.multi_transform(
            {"train": direction, "freeze": optax.set_to_zero()}, LABELS
        )
    )
    params, state, losses = train(tx)
    for name, label in LABELS.items():
        moved = not np.array_equal(params[name], PARAMS[name])
        assert moved == (label == "train"), name
    assert_strictly_decreasing(losses)
    assert losses[-1] < 0.9 * losses[0]
    assert int(lyapopt.stats(state)["violations"]) == 0
