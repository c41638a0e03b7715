"""lyapunov_guard: record, backtrack, skip and check."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import lyapopt


def loss(p: jax.Array) -> jax.Array:
    return jnp.sum(p**2)


X = jnp.array([1.0])
OVERSHOOT = jnp.array([-3.0])  # 1 -> -2: V goes from 1 to 4


def _guard(mode: str, **kwargs: object) -> tuple[jax.Array, lyapopt.LyapunovGuardState]:
    # decrease=0: these cases ask only that the loss does not rise.
    kwargs.setdefault("decrease", 0.0)
    tx = lyapopt.lyapunov_guard(guard=mode, **kwargs)
    return tx.update(OVERSHOOT, tx.init(X), X, value=loss(X), value_fn=loss)


def test_record_takes_the_step_and_counts_the_violation() -> None:
    updates, state = _guard("record")
    np.testing.assert_array_equal(updates, OVERSHOOT)
    assert int(state.violations) == 1
    assert float(state.value_before) == 1.0
    assert float(state.value_after) == 4.0


def test_backtrack_halves_until_the_loss_goes_down() -> None:
    # Halved once: 1 - 1.5 = -0.5, V = 0.25 < 1.
    updates, state = _guard("backtrack")
    np.testing.assert_allclose(updates, OVERSHOOT / 2)
    assert int(state.backtracks) == 1
    assert float(state.scale) == 0.5
    assert float(state.value_after) == 0.25
    assert int(state.violations) == 1


def test_backtrack_gives_up_after_max_backtracks_and_takes_no_step() -> None:
    updates, state = _guard("backtrack", max_backtracks=0)
    np.testing.assert_array_equal(updates, 0.0)
    assert float(state.scale) == 0.0
    assert float(state.value_after) == float(state.value_before)


def test_skip_takes_no_step_on_a_violation() -> None:
    updates, state = _guard("skip")
    np.testing.assert_array_equal(updates, 0.0)
    assert int(state.violations) == 1


def test_tolerance_allows_a_small_rise() -> None:
    updates, state = _guard("skip", tolerance=3.5)
    np.testing.assert_array_equal(updates, OVERSHOOT)
    assert int(state.violations) == 0


def test_a_good_step_passes_untouched_in_every_mode() -> None:
    for mode in lyapopt._options.GUARD_MODES:
        tx = lyapopt.lyapunov_guard(guard=mode)
        updates, state = tx.update(-0.5 * X, tx.init(X), X, value_fn=loss)
        np.testing.assert_array_equal(updates, -0.5 * X)
        assert int(state.violations) == 0


def test_check_mode_raises_under_chexify() -> None:
    tx = lyapopt.lyapunov_guard(guard="check")

    def step(p: jax.Array, state: lyapopt.LyapunovGuardState) -> jax.Array:
        updates, _ = tx.update(OVERSHOOT, state, p, value=loss(p), value_fn=loss)
        return optax.apply_updates(p, updates)

    checked = chex.chexify(jax.jit(step), async_check=False)
    with pytest.raises(
        checkify.JaxRuntimeError, match=r"raised the loss from 1\.0 to 4\.0"
    ):
        checked(X, tx.init(X))
    # Without chexify the debug check is inert and the step goes through.
    np.testing.assert_array_equal(jax.jit(step)(X, tx.init(X)), X + OVERSHOOT)


@pytest.mark.slow
@pytest.mark.parametrize("decrease", [0.0, 0.25])
@pytest.mark.parametrize("mode", ["backtrack", "skip"])
def test_never_accepts_an_increase_on_random_quadratics(
    mode: str, decrease: float
) -> None:
    key = jax.random.key(0)
    tx = lyapopt.lyapunov_guard(guard=mode, decrease=decrease)
    for i in range(30):
        k1, k2, k3, key = jax.random.split(key, 4)
        a = jnp.exp(jax.random.uniform(k1, (5,), minval=-6, maxval=6))
        f = lambda p, a=a: 0.5 * jnp.sum(a * p * p)  # noqa: E731
        x = jax.random.normal(k2, (5,))
        u = -jnp.exp(jax.random.uniform(k3, (), minval=-4, maxval=4)) * jax.grad(f)(x)
        updates, state = tx.update(u, tx.init(x), x, value_fn=f)
        assert float(f(x + updates)) <= float(f(x)), i
        assert float(state.value_after) <= float(state.value_before)


@pytest.mark.parametrize("mode", ["backtrack", "skip"])
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_non_finite_value_takes_no_step_and_is_counted_apart(
    mode: str, bad: float
) -> None:
    calls: list[int] = []

    def counted(p: jax.Array) -> jax.Array:
        # The guard judges V(theta) = value_fn(params), never `value`: the
        # loss itself is non-finite at the parameters.
        jax.debug.callback(lambda: calls.append(1))
        return loss(p) * bad

    tx = lyapopt.lyapunov_guard(guard=mode)
    state = tx.init(X)
    _, state = tx.update(-0.5 * X, state, X, value_fn=loss)  # a good step first
    updates, new_state = tx.update(
        -X, state, X, value=bad, value_fn=counted, grad=2 * X
    )
    jax.effects_barrier()
    np.testing.assert_array_equal(updates, 0.0)
    assert int(new_state.nonfinite) == 1
    assert int(new_state.violations) == 0
    # V(theta) and V(theta + u), no backtracking on a loss that cannot be judged.
    assert len(calls) == 2
    # The recorded values stay those of the last finite step.
    assert float(new_state.value_before) == float(state.value_before) == 1.0
    assert bool(
        jax.tree.reduce(
            lambda a, b: a & b,
            jax.tree.map(jnp.all, jax.tree.map(jnp.isfinite, new_state)),
        )
    )


def test_a_step_into_nan_is_a_violation() -> None:
    f = lambda p: jnp.where(p[0] < 0, jnp.nan, p[0] ** 2)  # noqa: E731
    tx = lyapopt.lyapunov_guard(guard="skip")
    updates, state = tx.update(-2 * X, tx.init(X), X, value_fn=f)
    np.testing.assert_array_equal(updates, 0.0)
    assert int(state.violations) == 1


def test_value_fn_is_needed() -> None:
    tx = lyapopt.lyapunov_guard()
    with pytest.raises(
        ValueError, match="lyapunov_guard needs the extra argument `value_fn`"
    ):
        tx.update(X, tx.init(X), X, value=1.0)


def test_unknown_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"`guard` must be one of 'record', 'backtrack'"
    ):
        lyapopt.lyapunov_guard(guard="reject")


def test_sufficient_decrease_refuses_a_step_that_overshoots_the_valley() -> None:
    # V = x^2 from x = 1 (g = 2) along u = -1.6: V(1 - 1.6) = 0.36 < 1, a
    # decrease, but less than 1/4 of the slope's promise 3.2: Armijo's bound
    # is 1 - 0.25 * 3.2 = 0.2. Halved once: V(0.2) = 0.04 <= 1 - 0.25 * 1.6.
    u = jnp.array([-1.6])
    plain = lyapopt.lyapunov_guard(decrease=0.0)
    sufficient = lyapopt.lyapunov_guard(decrease=0.25)
    for tx, backtracks, kwargs in ((plain, 0, {}), (sufficient, 1, {"grad": 2 * X})):
        updates, state = tx.update(u, tx.init(X), X, value_fn=loss, **kwargs)
        np.testing.assert_allclose(updates, u / 2**backtracks)
        assert int(state.backtracks) == backtracks


def test_sufficient_decrease_without_grad_takes_the_slope_from_value_fn() -> None:
    tx = lyapopt.lyapunov_guard(decrease=0.25)
    with_grad = tx.update(jnp.array([-1.6]), tx.init(X), X, value_fn=loss, grad=2 * X)
    without = tx.update(jnp.array([-1.6]), tx.init(X), X, value_fn=loss)
    np.testing.assert_array_equal(with_grad[0], without[0])


@pytest.mark.parametrize("mode", ["record", "backtrack"])
def test_the_update_returned_lands_on_the_parameters_judged_to_the_bit(
    mode: str,
) -> None:
    # bfloat16 parameters and steps of every size: where theta + u rounds to
    # a power of two, theta plus (trial - theta) may round to its neighbour
    # below (the spacing of floats halves there). The guard returns the
    # step that lands on the trial parameters it judged. sum((p - y)^2) is
    # lowered by u = r (y - x) for 0 < r < 2 in every entry, so the step is
    # taken whole.
    keys = jax.random.split(jax.random.key(0), 4)
    n = 200_000

    def spread(key: jax.Array, scale_key: jax.Array) -> jax.Array:
        scale = jnp.exp(jax.random.uniform(scale_key, (n,), minval=-4, maxval=4))
        return jax.random.normal(key, (n,)) * scale

    x = spread(keys[0], keys[1]).astype(jnp.bfloat16)
    y = spread(keys[2], keys[1])
    r = jax.random.uniform(keys[3], (n,), minval=0.05, maxval=1.95)
    u = (r * (y - x.astype(jnp.float32))).astype(jnp.bfloat16)
    tx = lyapopt.lyapunov_guard(guard=mode, decrease=0.0)
    value_fn = lambda p: jnp.sum((p.astype(jnp.float32) - y) ** 2)  # noqa: E731
    updates, state = jax.jit(
        lambda u, x: tx.update(u, tx.init(x), x, value_fn=value_fn)
    )(u, x)
    judged = lyapopt._line.moved(x, u)
    stored = optax.apply_updates(x, updates)
    assert float(state.scale) == 1.0
    np.testing.assert_array_equal(
        np.asarray(stored, np.float32), np.asarray(judged, np.float32)
    )
    # The plain difference would not have landed there everywhere.
    naive = optax.apply_updates(x, judged - x)
    assert int(jnp.sum(naive != judged)) > 0
