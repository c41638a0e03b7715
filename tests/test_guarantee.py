"""No hole in the guarantee: the loss the guard judges is the loss that is stored."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt
from tests.helpers import make_step, run

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _rises(losses: np.ndarray) -> int:
    return int(np.sum(np.diff(losses) > 0))


def test_a_value_that_disagrees_with_value_fn_cannot_let_a_rise_through() -> None:
    # The caller passes the loss plus a penalty (too high): 0.1 trusted it as
    # V(theta), so steps that raised the real loss looked like decreases.
    a = jnp.array([1.0, 30.0])

    def loss_fn(p):
        return 0.5 * jnp.sum(a * p**2)

    tx = lyapopt.stabilize(optax.sgd(0.07), safety=None, decrease=0.0)

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(grads, s, p, value=value + 10.0, value_fn=loss_fn)
        return optax.apply_updates(p, u), s, value

    p, s = jnp.array([1.0, 1.0]), tx.init(jnp.zeros(2))
    losses = []
    for _ in range(80):
        p, s, v = step(p, s)
        losses.append(float(v))
    assert _rises(np.array([*losses, float(loss_fn(p))])) == 0
    stats = lyapopt.stats(s)
    assert int(stats["value_mismatches"]) == 80
    assert int(stats["violations"]) > 0  # the rate does overshoot on a = 30


def test_a_matching_value_is_not_counted_as_a_mismatch() -> None:
    params, _, losses_fn = jnp.array([3.0, -1.0]), None, lambda p: jnp.sum(p**2)
    _, state, _ = run(lyapopt.lyapunov_adam(), losses_fn, params, steps=50)
    assert int(lyapopt.stats(state)["value_mismatches"]) == 0


def test_bfloat16_the_guard_judges_the_parameters_as_stored() -> None:
    # Random quadratics, bfloat16 parameters, one guarded gradient step each:
    # the loss at the stored (rounded) parameters never rises, and the
    # guard's value_after is that loss exactly. 0.1 evaluated theta + s u
    # before rounding (XLA's excess precision) and let rises through.
    n, dim = 4096, 8
    keys = jax.random.split(jax.random.key(0), 4)
    centers = jax.random.normal(keys[0], (n, dim)) * 3
    scales = jnp.exp(jax.random.uniform(keys[1], (n, dim), minval=-3, maxval=3))
    starts = (jax.random.normal(keys[2], (n, dim)) * 3).astype(jnp.bfloat16)
    rates = jnp.exp(jax.random.uniform(keys[3], (n,), minval=-6, maxval=1))

    def one(center, scale, start, rate):
        def f(p):
            return 0.5 * jnp.sum(scale * (p.astype(jnp.float32) - center) ** 2)

        tx = lyapopt.stabilize(
            optax.sgd(rate), safety=None, decrease=0.0, max_backtracks=20
        )
        grads = jax.grad(f)(start)
        u, state = tx.update(grads, tx.init(start), start, value_fn=f)
        return optax.apply_updates(start, u), state.guard.value_after

    def losses(center, scale, p):
        return 0.5 * jnp.sum(scale * (p.astype(jnp.float32) - center) ** 2)

    stored, judged = jax.jit(jax.vmap(one))(centers, scales, starts, rates)
    assert stored.dtype == jnp.bfloat16
    # Evaluated apart from the step, on the arrays as they were written out:
    # inside the same jit XLA may skip the rounding here too.
    before = jax.jit(jax.vmap(losses))(centers, scales, starts)
    after = jax.jit(jax.vmap(losses))(centers, scales, stored)
    assert int(jnp.sum(after > before)) == 0
    np.testing.assert_array_equal(judged, after)


@pytest.mark.parametrize(
    "make",
    [
        lambda r: lyapopt.lyapunov_adam(r),
        lambda r: lyapopt.stabilize(optax.sgd(r), level=-20.0, curvature_every=2),
    ],
    ids=["cap", "cap_level_every2"],
)
def test_the_step_is_the_same_wherever_it_is_applied(make) -> None:
    # The guard judges theta + s (a u) with the caps' factors a applied
    # inside it; the step it returns must give the same parameters whether
    # XLA fuses it into the caller's apply_updates (and contracts the
    # product into a fused multiply-add) or it is applied apart.
    n, dim = 512, 8
    keys = jax.random.split(jax.random.key(1), 4)
    centers = jax.random.normal(keys[0], (n, dim)) * 3
    scales = jnp.exp(jax.random.uniform(keys[1], (n, dim), minval=-3, maxval=3))
    starts = jax.random.normal(keys[2], (n, dim)) * 3
    rates = jnp.exp(jax.random.uniform(keys[3], (n,), minval=-3, maxval=3))

    def one(center, scale, start, rate):
        def f(p):
            return 0.5 * jnp.sum(scale * (p - center) ** 2) + jnp.sum(jnp.sin(3 * p))

        tx = make(rate)
        p, state = start, tx.init(start)
        for _ in range(3):
            u, state = tx.update(jax.grad(f)(p), state, p, value_fn=f)
            p = optax.apply_updates(p, u)
        return p, u, optax.apply_updates(p, u)

    p, u, fused = jax.jit(jax.vmap(one))(centers, scales, starts, rates)
    apart = jax.jit(jax.vmap(optax.apply_updates))(p, u)
    np.testing.assert_array_equal(fused, apart)


def test_a_float64_loss_on_float32_parameters_is_judged_in_float64() -> None:
    # A rise of 3e-9 on a loss of 1: invisible in float32, real in float64.
    with jax.enable_x64(True):

        def f(p):
            return 1.0 + 1e-9 * jnp.sum(p.astype(jnp.float64) ** 2)

        p = jnp.array([1.0], jnp.float32)
        tx = lyapopt.stabilize(optax.sgd(1.5e9), safety=None, decrease=0.0)
        grads = jax.grad(f)(p)
        u, state = tx.update(grads.astype(jnp.float32), tx.init(p), p, value_fn=f)
        new = optax.apply_updates(p, u)
        assert float(f(new)) <= float(f(p))
        assert int(state.guard.violations) == 1  # the full step (to -2) rose
        assert float(u[0]) == -1.5  # halved once: to -0.5, not -2


@pytest.mark.parametrize("rate", [1e20, 1e30])
def test_an_absurd_learning_rate_is_capped_not_frozen(rate: float) -> None:
    # 0.1 measured u.Hu on the raw step: it overflowed, no step was ever
    # taken and every counter stayed 0.
    scales = jnp.array([1.0, 10.0, 100.0])

    def f(p):
        return 0.5 * jnp.sum(scales * (p - 1.0) ** 2)

    for tx in (
        lyapopt.stabilize(optax.sgd(rate)),
        lyapopt.lyapunov_adam(rate),
        lyapopt.lyapunov_sgd(rate),
        # g.u from the gradient (the curvature reused, the level cap): it
        # overflows, and a forward-mode pass along u / ||u|| stands in.
        lyapopt.lyapunov_adam(rate, curvature_every=3),
        lyapopt.stabilize(optax.sgd(rate), level=0.0, curvature_every=3),
    ):
        p, _, losses = run(tx, f, jnp.zeros(3), steps=200)
        assert float(f(p)) < 1e-3 * float(losses[0])
        assert _rises(np.asarray(losses)) == 0


def test_a_nan_learning_rate_gives_no_step_and_is_counted() -> None:
    def f(p):
        return jnp.sum((p - 1.0) ** 2)

    def schedule(count):
        return jnp.where(count < 2, 1e-2, jnp.nan)

    # The cap counts the NaN step and passes on a zero one; without the cap,
    # the guard counts it.
    for safety, counter in ((1.0, "curvature_nonfinite"), (None, "guard_nonfinite")):
        tx = lyapopt.lyapunov_adam(schedule, safety=safety)
        p2, _, _ = run(tx, f, jnp.zeros(3), steps=2)
        p5, state, _ = run(tx, f, jnp.zeros(3), steps=5)
        np.testing.assert_array_equal(p5, p2)  # the NaN steps moved nothing
        assert bool(jnp.all(p2 > 0))
        assert int(lyapopt.stats(state)[counter]) == 3


def test_the_docs_say_the_guard_must_be_last_and_what_a_rejection_does() -> None:
    doc = " ".join(lyapopt.stabilize.__doc__.split())
    assert "The guard must be the last transform to touch the updates" in doc
    assert "optax.scale(5.0)" in doc
    assert "A rejected step" in doc and "has already updated its own state" in doc
    guard_doc = " ".join(lyapopt.lyapunov_guard.__doc__.split())
    assert "must be the last transform to touch the updates" in guard_doc
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "last transform" in readme


def test_a_rejected_step_keeps_the_parameters_and_advances_the_inner_state() -> None:
    # The documented choice: Adam's moments and count take in the gradient of
    # a step that the guard rejects; the parameters do not move.
    def f(p):
        return jnp.sum(jnp.abs(p))  # every full step of Adam overshoots 0

    tx = lyapopt.stabilize(optax.adam(10.0), safety=None, guard="skip")
    p = jnp.array([0.1, -0.2])
    state = tx.init(p)
    new_p, new_state, _ = jax.jit(make_step(tx, f))(p, state)
    np.testing.assert_array_equal(new_p, p)
    assert float(new_state.guard.scale) == 0.0
    adam_state = new_state.inner_state.inner_state[0]
    assert int(adam_state.count) == 1
    assert float(jnp.abs(adam_state.mu).sum()) > 0


@pytest.mark.parametrize("size", [9e37, 1e30, 1.0, 1e-30])
def test_a_gradient_near_the_float32_maximum_is_scaled_not_dropped(size) -> None:
    # The modulated step has norm ||g|| / (1 + beta ||g||) for every finite
    # g; 1 / ||g|| is subnormal above 2^126 and was flushed to zero.
    g = jnp.full(4, size, jnp.float32)
    tx = lyapopt.scale_by_gradient_modulation(2.0)
    u, state = jax.jit(tx.update)(g, tx.init(g))
    norm = 2 * size  # ||g|| for four equal entries
    expected = norm / (1 + 2 * norm)
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(u, np.float64)), expected, rtol=1e-6
    )
    assert int(state.nonfinite) == 0
    np.testing.assert_allclose(state.norm, norm, rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: lyapopt.lyapunov_adam(),
        lambda: lyapopt.lyapunov_adam(safety=None),
        lambda: lyapopt.stabilize(optax.sgd(0.1)),
    ],
    ids=["cap", "guard", "stabilize_sgd"],
)
def test_a_value_fn_that_ignores_its_argument_is_counted(make) -> None:
    # `lambda p: loss(model)`: the loss never moves, no step is ever taken,
    # and 0.1 reported nothing (s_star = inf, no violation).
    w = jnp.ones(3)

    def f(p):
        return jnp.sum(p**2)

    tx = make()
    p, s = w, tx.init(w)
    step = jax.jit(
        lambda p, s: tx.update(jax.grad(f)(p), s, p, value_fn=lambda q: f(w))
    )
    for _ in range(4):
        u, s = step(p, s)
        p = optax.apply_updates(p, u)
    assert int(lyapopt.stats(s)["value_fn_detached"]) == 4
    # A value_fn that does use its argument is never counted.
    _, state, _ = run(tx, f, w, steps=20)
    assert int(lyapopt.stats(state)["value_fn_detached"]) == 0


def test_a_value_fn_that_communicates_under_pmap_needs_axis_name() -> None:
    # A BatchNorm-like value_fn: statistics averaged across devices, the loss
    # of each device's own rows. Without axis_name each device would judge
    # its own loss, backtrack its own number of times, and the collective in
    # the loop would wait forever; lyapopt refuses before it can hang.
    x = jnp.arange(12.0).reshape(1, 3, 4)

    def value_fn(w, rows):
        mean = jax.lax.pmean(jnp.mean(rows, axis=0), "batch")
        return jnp.mean(((rows - mean) @ w) ** 2)

    def local_step(w, state, rows, tx):
        loss, grads = jax.value_and_grad(value_fn)(w, rows)
        grads = jax.lax.pmean(grads, "batch")
        updates, state = tx.update(
            grads, state, w, value=loss, value_fn=value_fn, rows=rows
        )
        return optax.apply_updates(w, updates), state

    w = jnp.ones((1, 4))
    for tx in (lyapopt.lyapunov_adam(), lyapopt.stabilize(optax.sgd(0.1), safety=None)):
        state = jax.tree.map(lambda a: a[None], tx.init(w[0]))
        step = jax.pmap(lambda w, s, r: local_step(w, s, r, tx), axis_name="batch")  # noqa: B023
        with pytest.raises(ValueError, match=r"axis_name='batch'"):
            step(w, state, x)
    tx = lyapopt.lyapunov_adam(axis_name="batch")
    state = jax.tree.map(lambda a: a[None], tx.init(w[0]))
    step = jax.pmap(lambda w, s, r: local_step(w, s, r, tx), axis_name="batch")
    new_w, _ = step(w, state, x)
    assert new_w.shape == w.shape and not bool(jnp.array_equal(new_w, w))
