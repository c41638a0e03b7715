"""scale_by_held_out_rate: the rate from the quadratic model along the last step,
judged on the batch that step never saw.

Closed forms: along ``-G`` the best rate of gradient descent on a quadratic
is ``eps_max = |G|^2 / G.HG``; with gradient noise of covariance ``Sigma``
the best rate in expectation is McCandlish et al.'s
``eps_max / (1 + tr(H Sigma) / G.HG)``.
"""

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


def _spd(n: int, seed: int, condition: float) -> jax.Array:
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (n, n)))
    return (q * jnp.geomspace(1.0, condition, n)) @ q.T


# --- one measurement ----------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_measured_optimum_is_gg_over_ghg_of_the_step_before(seed: int) -> None:
    # Gradient descent on 1/2 x.Ax, the rate changing from step to step: the
    # best multiple of the proposal -G_{t-1} is |G|^2 / G.AG at theta_{t-1},
    # whatever rate the step was taken at.
    a = _spd(5, seed, condition=20.0)
    loss = lambda p: 0.5 * p @ a @ p  # noqa: E731
    tx = optax.chain(optax.sgd(1.0), lyapopt.scale_by_held_out_rate(1))
    x = jax.random.normal(jax.random.key(seed + 10), (5,))
    state = tx.init(x)
    step = jax.jit(lambda x, s: tx.update(a @ x, s, x, value_fn=loss))
    best = []  # |G|^2 / G.AG at each step's start
    for t in range(8):
        g = a @ x
        updates, state = step(x, state)
        if t >= 1:
            np.testing.assert_allclose(state[1].optimum, best[t - 1], rtol=1e-4)
        best.append(float(g @ g) / float(g @ a @ g))
        x = x + updates
    assert int(state[1].measurements) == 7 and int(state[1].rejected) == 0


def test_the_optimum_counts_what_the_cap_and_the_guard_left_of_the_step() -> None:
    # stabilize(sgd(10)): the curvature cap cuts every step to the line's
    # minimum (a tenth or less of the proposal); the optimum is still the
    # best multiple of the proposal -10 G: |G|^2 / G.AG / 10.
    a = jnp.diag(jnp.array([1.0, 3.0, 9.0]))
    loss = lambda p: 0.5 * p @ a @ p  # noqa: E731
    tx = lyapopt.stabilize(optax.sgd(10.0), rate_every=1)
    x = jnp.array([1.0, -1.0, 1.0])
    state = tx.init(x)
    step = jax.jit(lambda x, s: tx.update(a @ x, s, x, value_fn=loss))
    best = []
    for t in range(6):
        g = a @ x
        updates, state = step(x, state)
        stats = lyapopt.stats(state)
        if t >= 1:
            np.testing.assert_allclose(stats["rate_optimum"], best[t - 1], rtol=1e-4)
        assert float(stats["curvature_scale"]) < 1  # the cap did cut
        best.append(float(g @ g) / float(g @ a @ g) / 10)
        x = x + updates


def test_no_measurement_without_a_step_or_without_convexity() -> None:
    # Concave along the step: no convex fit, the rate stays 1.
    loss = lambda p: -jnp.sum(p**2)  # noqa: E731
    tx = optax.chain(optax.sgd(0.1), lyapopt.scale_by_held_out_rate(1))
    x = jnp.array([1.0, 2.0])
    state = tx.init(x)
    for _ in range(3):
        updates, state = tx.update(jax.grad(loss)(x), state, x, value_fn=loss)
        x = x + updates
    assert int(state[1].measurements) == 0 and int(state[1].rejected) == 2
    assert float(state[1].rate) == 1.0
    # No step (the same parameters twice): nothing to measure.
    convex = lambda p: jnp.sum(p**2)  # noqa: E731
    state = tx.init(x)
    for _ in range(3):
        _, state = tx.update(jax.grad(convex)(x), state, x, value_fn=convex)
    assert int(state[1].measurements) == 0 and int(state[1].rejected) == 2


def test_measures_on_every_kth_step_only() -> None:
    loss = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * p**2)  # noqa: E731
    tx = optax.chain(optax.sgd(0.05), lyapopt.scale_by_held_out_rate(3))
    x = jnp.array([1.0, 1.0])
    state = tx.init(x)
    step = jax.jit(lambda x, s: tx.update(jax.grad(loss)(x), s, x, value_fn=loss))
    measured = []
    for _ in range(10):
        before = int(state[1].measurements)
        updates, state = step(x, state)
        measured.append(int(state[1].measurements) > before)
        x = x + updates
    assert measured == [t >= 1 and t % 3 == 0 for t in range(10)]


# --- convergence ----------------------------------------------------------------


def _stationary(
    tx: optax.GradientTransformation,
    hessian: jax.Array,
    gradient: jax.Array,
    noise: float,
    steps: int,
    seeds: int,
    held_out: bool = True,
) -> Any:
    """Gradient descent on a quadratic that looks the same from every iterate.

    Batch ``t``'s loss is ``1/2 (x - c).H(x - c) + (G + n_t).(x - c)``, with
    ``c = theta_{t-1}`` and fresh noise ``n_t ~ N(0, noise I)``; the step at
    ``theta_t`` is computed from ``G + n_t``. The true gradient where each
    step starts is ``G``, so the best rate is the same at every step.
    Without ``held_out``, ``value_fn`` keeps the last batch's noise, the
    one the step was computed from. Returns the stage's state after each
    step, for each seed.
    """
    d = gradient.shape[0]

    def run(key: jax.Array) -> Any:
        def body(carry: tuple, k: jax.Array) -> tuple[tuple, Any]:
            theta, center, last, state = carry
            batch = gradient + jnp.sqrt(noise) * jax.random.normal(k, (d,))
            judged = batch if held_out else last

            def value_fn(x: jax.Array) -> jax.Array:
                y = x - center
                return 0.5 * y @ hessian @ y + judged @ y

            updates, state = tx.update(batch, state, theta, value_fn=value_fn)
            return (theta + updates, theta, batch, state), state[1]

        theta = jnp.zeros(d)
        keys = jax.random.split(key, steps)
        carry = (theta, theta, gradient, tx.init(theta))
        return jax.lax.scan(body, carry, keys)[1]

    return jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), seeds))


def _problem(d: int) -> tuple[jax.Array, jax.Array, float]:
    hessian = _spd(d, 0, condition=10.0)
    gradient = jax.random.normal(jax.random.key(123), (d,))
    eps_max = float(gradient @ gradient) / float(gradient @ hessian @ gradient)
    return hessian, gradient, eps_max


@pytest.mark.parametrize("every", [1, 4])
def test_without_noise_the_rate_converges_to_gg_over_ghg(every: int) -> None:
    # From the wrapped sgd's rate 1, the rate moves by at most 5% down (GeN's
    # clamp and smoothing) per measurement, then at 0.9 per measurement.
    hessian, gradient, eps_max = _problem(8)
    tx = optax.chain(optax.sgd(1.0), lyapopt.scale_by_held_out_rate(every))
    states = _stationary(tx, hessian, gradient, 0.0, 250 * every, seeds=1)
    np.testing.assert_allclose(states.rate[0, -1], eps_max, rtol=1e-5)
    np.testing.assert_allclose(states.optimum[0, -1], eps_max, rtol=1e-5)


@pytest.mark.parametrize("noise_ratio", [0.25, 1.0, 4.0])
def test_with_gradient_noise_the_rate_converges_to_the_noise_aware_optimum(
    noise_ratio: float,
) -> None:
    # Sigma = s^2 I with tr(H Sigma) = noise_ratio * G.HG, so McCandlish's
    # optimum is eps_max / (1 + noise_ratio): 20% to 80% below eps_max.
    # Tolerance 2%: the target is a ratio of averages per unit length of
    # the step, exact where ||G + n|| does not vary with the noise and off
    # by O(1/d) here (0.2-0.4% measured at d = 64, against 4% at d = 16);
    # the mean over 8 seeds x 300 steps varies by less than 0.1%.
    d = 64
    hessian, gradient, eps_max = _problem(d)
    s2 = noise_ratio * float(gradient @ hessian @ gradient) / float(jnp.trace(hessian))
    eps_opt = eps_max / (1 + noise_ratio)
    tx = optax.chain(optax.sgd(1.0), lyapopt.scale_by_held_out_rate(1))
    states = _stationary(tx, hessian, gradient, s2, 600, seeds=8)
    rate = float(np.mean(states.rate[:, 300:]))
    np.testing.assert_allclose(rate, eps_opt, rtol=2e-2)
    assert abs(rate / eps_max - 1) > 0.15  # the noise-free optimum is far off


def test_judged_on_the_batch_the_step_came_from_the_rate_would_be_overrated() -> None:
    # What the held-out batch removes: on the step's own batch the target is
    # about (|G|^2 + tr Sigma) / (G.HG + tr(H Sigma)), here 2.08x McCandlish's
    # optimum (the noise the step followed looks like signal).
    d = 64
    hessian, gradient, eps_max = _problem(d)
    s2 = float(gradient @ hessian @ gradient) / float(jnp.trace(hessian))
    eps_opt = eps_max / 2
    own = (float(gradient @ gradient) + d * s2) / (
        2 * float(gradient @ hessian @ gradient)
    )
    tx = optax.chain(optax.sgd(1.0), lyapopt.scale_by_held_out_rate(1))
    states = _stationary(tx, hessian, gradient, s2, 600, seeds=4, held_out=False)
    rate = float(np.mean(states.rate[:, 300:]))
    np.testing.assert_allclose(rate, own, rtol=5e-2)
    assert rate > 1.5 * eps_opt


def test_the_shape_multiplies_the_measured_rate_and_is_not_undone() -> None:
    hessian, gradient, eps_max = _problem(8)
    steps = 300
    shape = optax.linear_schedule(1.0, 0.25, steps)
    tx = optax.chain(
        optax.sgd(1.0), lyapopt.scale_by_held_out_rate(1, rate_shape=shape)
    )
    states = _stationary(tx, hessian, gradient, 0.0, steps, seeds=1)
    np.testing.assert_allclose(states.rate[0, -1], eps_max, rtol=1e-5)
    np.testing.assert_allclose(
        states.scale[0, -1], eps_max * float(shape(steps - 1)), rtol=1e-5
    )


def test_rate_until_follows_the_target_with_the_clamp_alone_then_holds() -> None:
    # Noiseless, every measurement is eps_max = 0.284, so the averaged
    # target is too; from r = 1 the clamp allows a halving (0.5), then the
    # target itself. Measured at steps 1..until-1, then held.
    hessian, gradient, eps_max = _problem(8)
    until, steps = 20, 60
    tx = optax.chain(
        optax.sgd(1.0), lyapopt.scale_by_held_out_rate(1, rate_until=until)
    )
    states = _stationary(tx, hessian, gradient, 0.0, steps, seeds=1)
    rate = np.asarray(states.rate[0])
    np.testing.assert_allclose(rate[:3], [1.0, 0.5, eps_max], rtol=1e-5)
    np.testing.assert_array_equal(rate[until - 1 :], rate[until - 1])
    assert int(states.measurements[0, -1]) == until - 1
    with pytest.raises(ValueError, match="rate_every=1"):
        lyapopt.stabilize(optax.sgd(1.0), rate_until=10)
    with pytest.raises(ValueError, match=r"rate_until.*steps // 10"):
        lyapopt.scale_by_held_out_rate(1, rate_until=-1)


def test_the_optimizers_move_the_papers_decay_into_the_shape() -> None:
    alpha = 0.05
    tx = lyapopt.lyapunov_sgd(
        0.5, modulation=None, decay_constant=alpha, rate_every=1, guard=None
    )
    x = jnp.array([1.0, -2.0])
    loss = lambda p: jnp.sum(p**2)  # noqa: E731
    state = tx.init(x)
    for t in range(5):
        updates, state = tx.update(jax.grad(loss)(x), state, x, value_fn=loss)
        x = x + updates
        stats = lyapopt.stats(state)
        np.testing.assert_allclose(stats["learning_rate"], 0.5)  # constant
        np.testing.assert_allclose(
            stats["rate_scale"], stats["rate"] * np.exp(-alpha * t), rtol=1e-6
        )
    with pytest.raises(ValueError, match="rate_shape="):
        lyapopt.lyapunov_adam(optax.cosine_decay_schedule(1e-2, 10), rate_every=4)


def test_a_shape_without_rate_every_is_refused() -> None:
    with pytest.raises(ValueError, match="rate_every=4"):
        lyapopt.stabilize(optax.sgd(1.0), rate_shape=optax.constant_schedule(1.0))


# --- the guard keeps its guarantee ----------------------------------------------


@pytest.mark.parametrize(
    ("lr", "safety"),
    # The rate learns only from steps taken: at 1e3 with no cap the guard
    # would reject every step, and there would be nothing to measure.
    [(1e-2, None), (1.0, None), (1e3, 1.0)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_in_stabilize_the_guard_lets_no_rise_through(
    lr: float, safety: float | None, seed: int
) -> None:
    a = _spd(6, seed, condition=100.0)
    b = jax.random.normal(jax.random.key(seed + 20), (6,))
    key = jax.random.key(seed + 40)

    def loss(p: jax.Array, batch: jax.Array) -> jax.Array:
        return 0.5 * p @ a @ p - batch @ p

    tx = lyapopt.stabilize(optax.sgd(lr), rate_every=1, safety=safety)

    @jax.jit
    def step(p: jax.Array, s: Any, batch: jax.Array) -> tuple:
        value_fn = lambda q: loss(q, batch)  # noqa: E731
        value, grads = jax.value_and_grad(value_fn)(p)
        updates, s = tx.update(grads, s, p, value=value, value_fn=value_fn)
        new = optax.apply_updates(p, updates)
        return new, s, value, value_fn(new)

    p = jnp.ones(6)
    s = tx.init(p)
    for k in jax.random.split(key, 60):
        batch = b + 0.3 * jax.random.normal(k, (6,))  # a new batch each step
        p, s, before, after = step(p, s, batch)
        assert float(after) <= float(before)
    assert int(lyapopt.stats(s)["rate_measurements"]) > 0


# --- optax conventions ------------------------------------------------------------


def test_a_chain_with_optax_backtracking_linesearch_works() -> None:
    # The line search forwards the extra keywords to value_fn; the stage
    # adds no extra-argument name of its own, so the chain runs unchanged.
    def fn(w: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean((x @ w - y) ** 2)

    x = jax.random.normal(jax.random.key(0), (32, 4))
    y = x @ jnp.array([1.0, -1.0, 2.0, 0.5])
    tx = optax.chain(
        optax.sgd(1.0),
        lyapopt.scale_by_held_out_rate(2),
        optax.scale_by_backtracking_linesearch(max_backtracking_steps=15),
    )
    w = jnp.zeros(4)
    state = tx.init(w)

    @jax.jit
    def step(w: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        value, grad = jax.value_and_grad(fn)(w, x, y)
        updates, state = tx.update(
            grad, state, w, value=value, grad=grad, value_fn=fn, x=x, y=y
        )
        return optax.apply_updates(w, updates), state

    for _ in range(30):
        w, state = step(w, state)
    assert float(fn(w, x, y)) < 1e-3 * float(fn(jnp.zeros(4), x, y))
    assert int(lyapopt.stats(state)["rate_measurements"]) > 0


def test_inject_hyperparams_gives_the_same_steps_with_a_schedule_shape() -> None:
    shape = optax.linear_schedule(1.0, 0.5, 6)
    plain = optax.chain(
        optax.sgd(0.3), lyapopt.scale_by_held_out_rate(2, rate_shape=shape)
    )
    injected = optax.chain(
        optax.sgd(0.3),
        optax.inject_hyperparams(lyapopt.scale_by_held_out_rate)(
            rate_every=2, rate_shape=shape
        ),
    )
    loss = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 5.0, 20.0]) * p**2)  # noqa: E731
    outs = []
    for tx in (plain, injected):
        step = jax.jit(make_step(tx, loss))
        p, s = jnp.ones(3), tx.init(jnp.ones(3))
        for _ in range(8):
            p, s, _ = step(p, s)
        outs.append((p, lyapopt.stats(s)))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
    for name in ("rate", "rate_scale", "rate_measurements"):
        np.testing.assert_allclose(outs[0][1][name], outs[1][1][name], rtol=1e-6)


def _assert_trees_equal(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert jnp.result_type(x) == jnp.result_type(y)
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_the_rate_state_survives_a_checkpoint_under_inject_hyperparams(
    tmp_path: Path,
) -> None:
    # As tests/test_checkpoint.py: stop, save with orbax, restore into a
    # fresh optimizer, resume; the rate, its averages and `previous` travel.
    batch = digits.batch(128)
    params0 = digits.init(jax.random.key(0), hidden=16)

    def loss(p: dict) -> jax.Array:
        return digits.loss_fn(p, batch)

    def build() -> tuple[optax.GradientTransformation, Callable]:
        tx = optax.inject_hyperparams(lyapopt.lyapunov_sgd)(
            learning_rate=1.0, rate_every=2, decay_constant=1e-2
        )
        return tx, jax.jit(make_step(tx, loss))

    def run(step: Callable, params: Any, state: Any, steps: int) -> tuple:
        for _ in range(steps):
            params, state, _ = step(params, state)
        return params, state

    tx, step = build()
    params, state = run(step, params0, tx.init(params0), 5)
    assert int(lyapopt.stats(state)["rate_measurements"]) == 2
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    unbroken = run(step, params, state, 5)

    tx, step = build()
    target = jax.eval_shape(lambda: {"params": params0, "opt_state": tx.init(params0)})
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "ckpt", target)
    _assert_trees_equal(restored, {"params": params, "opt_state": state})
    resumed = run(step, restored["params"], restored["opt_state"], 5)
    _assert_trees_equal(resumed, unbroken)
    assert float(lyapopt.stats(resumed[1])["rate"]) != 1.0


# --- Flax --------------------------------------------------------------------------


class _MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(64, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(nnx.relu(self.l1(x)))


@pytest.mark.slow
def test_works_in_nnx_optimizer_with_the_flax_value_fn() -> None:
    def nnx_loss(model: _MLP, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    model = _MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, lyapopt.lyapunov_adam(1e-2, rate_every=2), wrt=nnx.Param
    )

    @nnx.jit
    def step(model: _MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
        value_fn = lyapopt.flax.nnx_value_fn(model, nnx_loss, x, y)
        loss, grads = nnx.value_and_grad(nnx_loss)(model, x, y)
        optimizer.update(model, grads, value=loss, value_fn=value_fn)
        return loss

    x, y = digits.batch(128)
    losses = [float(step(model, optimizer, x, y)) for _ in range(9)]
    stats = lyapopt.stats(optimizer.opt_state)
    assert int(stats["rate_measurements"]) == 4
    assert losses[-1] < losses[0]
