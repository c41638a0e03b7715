"""benchmarks.spike_peers: ZClip, SPAM and skip-on-spike, checked by hand."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from benchmarks.spike_peers import (
    ScaleBySpamState,
    SkipOnSpikeState,
    ZClipState,
    scale_by_spam,
    skip_on_spike,
    spam,
    zclip,
)

# A unit direction spread over a nested tree (norm 1 up to float32 rounding),
# so that a gradient of a given global norm is `norm * DIRECTION`.
_RNG = np.random.default_rng(0)
_RAW = {"w": _RNG.normal(size=(2, 3)), "b": {"c": _RNG.normal(size=(3,))}}
_SIZE = math.sqrt(sum(float(np.sum(x**2)) for x in jax.tree.leaves(_RAW)))
DIRECTION = jax.tree.map(lambda x: jnp.asarray(x / _SIZE, jnp.float32), _RAW)


def grad_of_norm(norm: float) -> Any:
    return jax.tree.map(lambda d: d * norm, DIRECTION)


def flat(tree: Any) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def global_norm(tree: Any) -> float:
    return float(np.linalg.norm(flat(tree).astype(np.float64)))


def feed(tx: optax.GradientTransformation, norms: list[float], state: Any = None):
    """Applies ``tx`` to gradients of the given norms; returns (outputs, state)."""
    state = tx.init(DIRECTION) if state is None else state
    outputs = []
    for n in norms:
        out, state = tx.update(grad_of_norm(n), state)
        outputs.append(out)
    return outputs, state


# --------------------------------------------------------------------------
# ZClip
# --------------------------------------------------------------------------


def test_zclip_does_not_clip_during_warmup() -> None:
    # Wildly different norms in warmup: all pass through bit for bit.
    norms = [1.0, 100.0, 0.01, 50.0, 3.0]
    outs, state = feed(zclip(warmup_steps=5), norms)
    for n, out in zip(norms, outs, strict=True):
        np.testing.assert_array_equal(flat(out), flat(grad_of_norm(n)))
    assert int(state.count) == 5
    assert int(state.clipped) == 0
    # The warmup's population mean and variance (divide by N).
    np.testing.assert_allclose(float(state.mean), np.mean(norms), rtol=1e-5)
    np.testing.assert_allclose(float(state.var), np.var(norms), rtol=1e-5)


def test_zclip_constant_norms_are_never_clipped() -> None:
    # The same gradient every step: z = (g - mu) / (sigma + eps) stays at 0
    # (up to float32 rounding of the EMA, |z| < 1 with eps = 1e-6), so nothing
    # is clipped; mu stays 2 and sigma^2 stays 0.
    g = grad_of_norm(2.0)
    tx = zclip(warmup_steps=5)
    state = tx.init(g)
    for _ in range(20):
        out, state = tx.update(g, state)
        np.testing.assert_array_equal(flat(out), flat(g))
    assert int(state.clipped) == 0
    np.testing.assert_allclose(float(state.mean), global_norm(g), rtol=1e-6)
    assert float(state.var) < 1e-12


def test_zclip_clips_a_spike_to_the_reciprocal_threshold() -> None:
    alpha, zt, eps = 0.97, 2.5, 1e-6
    tx = zclip(alpha=alpha, z_thresh=zt, warmup_steps=4, eps=eps)
    # Warmup norms 1, 3, 1, 3: mean 2, population std 1.
    _, state = feed(tx, [1.0, 3.0, 1.0, 3.0])
    np.testing.assert_allclose(
        [float(state.mean), float(state.var)], [2.0, 1.0], rtol=1e-6
    )

    # A spike of norm 10: z = (10 - 2) / (1 + eps) ~ 8 > 2.5, so the gradient
    # is rescaled to the norm 2 + 2.5^2 / z * 1 ~ 2.78125, its direction kept.
    z = (10.0 - 2.0) / (1.0 + eps)
    threshold = 2.0 + zt**2 / z * 1.0
    (out,), state = feed(tx, [10.0], state)
    np.testing.assert_allclose(global_norm(out), threshold, rtol=1e-5)
    np.testing.assert_allclose(
        flat(out), flat(DIRECTION) * threshold, rtol=1e-5, atol=1e-7
    )
    assert int(state.clipped) == 1
    # The EMA is updated with the clipped norm, the variance with the new mean.
    mean1 = alpha * 2.0 + (1 - alpha) * threshold
    var1 = alpha * 1.0 + (1 - alpha) * (threshold - mean1) ** 2
    np.testing.assert_allclose(
        [float(state.mean), float(state.var)], [mean1, var1], rtol=1e-5
    )

    # One more, ordinary, step (norm 2.5): z = (2.5 - mean1) / sqrt(var1) ~ 0.48,
    # not clipped; the EMA takes the raw norm.
    assert (2.5 - mean1) / (math.sqrt(var1) + eps) < zt
    (out,), state = feed(tx, [2.5], state)
    np.testing.assert_allclose(global_norm(out), 2.5, rtol=1e-6)
    mean2 = alpha * mean1 + (1 - alpha) * 2.5
    var2 = alpha * var1 + (1 - alpha) * (2.5 - mean2) ** 2
    np.testing.assert_allclose(
        [float(state.mean), float(state.var)], [mean2, var2], rtol=1e-5
    )

    # And a spike of norm 6 is judged against those updated statistics.
    z = (6.0 - mean2) / (math.sqrt(var2) + eps)
    assert z > zt
    (out,), state = feed(tx, [6.0], state)
    np.testing.assert_allclose(
        global_norm(out), mean2 + zt**2 / z * math.sqrt(var2), rtol=1e-5
    )
    assert int(state.clipped) == 2


def test_zclip_is_the_same_under_jit_and_in_scan() -> None:
    tx = zclip(warmup_steps=5)
    norms = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 30.0, 1.05, 0.95, 12.0, 1.0]
    eager, eager_state = feed(tx, norms)

    jitted = jax.jit(tx.update)
    state = tx.init(DIRECTION)
    for n, expected in zip(norms, eager, strict=True):
        out, state = jitted(grad_of_norm(n), state)
        np.testing.assert_allclose(flat(out), flat(expected), rtol=1e-6)

    def body(s: ZClipState, n: jax.Array) -> tuple[ZClipState, Any]:
        out, s = tx.update(grad_of_norm(n), s)
        return s, out

    final, outs = jax.jit(lambda s: lax.scan(body, s, jnp.asarray(norms)))(
        tx.init(DIRECTION)
    )
    for i, expected in enumerate(eager):
        np.testing.assert_allclose(
            flat(jax.tree.map(lambda x, i=i: x[i], outs)), flat(expected), rtol=1e-6
        )
    assert int(final.clipped) == int(eager_state.clipped) == 2
    np.testing.assert_allclose(float(final.mean), float(eager_state.mean), rtol=1e-6)


def test_zclip_nan_norm_leaves_the_statistics_alone() -> None:
    tx = zclip(warmup_steps=3)
    nan_grad = jax.tree.map(lambda d: d.at[0].set(jnp.nan), grad_of_norm(1.0))

    # During warmup: the NaN does not count towards the warmup.
    _, state = feed(tx, [1.0, 3.0])
    _, after = tx.update(nan_grad, state)
    for a, b in zip(after, state, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(after.count) == 2

    # After warmup: mean, variance, count and clip counter are unchanged, and
    # the gradient is passed through as it is.
    _, state = feed(tx, [1.0, 3.0, 2.0, 2.5])
    out, after = tx.update(nan_grad, state)
    for a, b in zip(after, state, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(flat(out)).any()
    np.testing.assert_array_equal(
        flat(out)[~np.isnan(flat(out))], flat(nan_grad)[~np.isnan(flat(nan_grad))]
    )


def test_zclip_refuses_no_warmup() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        zclip(warmup_steps=0)


# --------------------------------------------------------------------------
# SPAM
# --------------------------------------------------------------------------


def random_grads(n: int, seed: int = 1) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(
            lambda d: jnp.asarray(rng.normal(size=d.shape), jnp.float32), DIRECTION
        )
        for _ in range(n)
    ]


def cosine_warmup(k: int, n: int) -> float:
    return 0.5 * (1 - math.cos(math.pi * min(k, n) / n))


def test_spam_without_spikes_or_resets_is_warmed_up_adam() -> None:
    b1, b2, eps, n = 0.8, 0.99, 1e-8, 4
    ours = scale_by_spam(
        b1, b2, eps, reset_interval=10**9, spike_threshold=1e30, warmup_steps=n
    )
    adam = optax.scale_by_adam(b1, b2, eps)
    s, a = ours.init(DIRECTION), adam.init(DIRECTION)
    for k, g in enumerate(random_grads(8)):
        u, s = ours.update(g, s)
        v, a = adam.update(g, a)
        np.testing.assert_allclose(
            flat(u), flat(v) * cosine_warmup(k, n), rtol=1e-6, atol=1e-7
        )
    assert int(s.clipped) == 0


def test_spam_warmup_multiplier_is_zero_at_the_start_and_one_after_n_steps() -> None:
    n = 4
    tx = scale_by_spam(reset_interval=10**9, warmup_steps=n)
    adam = optax.scale_by_adam()
    g = grad_of_norm(1.0)
    s, a = tx.init(g), adam.init(g)
    for k in range(n + 2):
        u, s = tx.update(g, s)
        v, a = adam.update(g, a)
        if k == 0:  # k = 0: multiplier 0, no move at all
            np.testing.assert_array_equal(flat(u), 0.0)
        if k == n // 2:  # 0.5 * (1 - cos(pi / 2)) = 0.5
            np.testing.assert_allclose(flat(u), 0.5 * flat(v), rtol=1e-6)
        if k >= n:  # multiplier 1 from k = N on
            np.testing.assert_allclose(flat(u), flat(v), rtol=1e-6)


def test_spam_clips_a_spiking_entry_to_sqrt_theta_v() -> None:
    b1, b2, eps, theta = 0.9, 0.999, 1e-8, 4.0
    tx = scale_by_spam(
        b1, b2, eps, reset_interval=10**9, spike_threshold=theta, warmup_steps=0
    )
    state = tx.init(jnp.zeros(2))
    # Step 1, g = (1, 1): v was 0 (nothing clipped); v1 = 0.001, m1 = 0.1.
    _, state = tx.update(jnp.array([1.0, 1.0]), state)
    assert int(state.clipped) == 0
    np.testing.assert_allclose(state.nu, [1e-3, 1e-3], rtol=1e-6)
    # Step 2, g = (-10, 0.05): 100 > 4 * 0.001 = 0.004, so the first entry
    # becomes -sqrt(0.004); 0.0025 < 0.004, so the second is kept.
    u, state = tx.update(jnp.array([-10.0, 0.05]), state)
    assert int(state.clipped) == 1
    g = np.array([-math.sqrt(theta * 1e-3), 0.05])
    m = b1 * 0.1 + (1 - b1) * g
    v = b2 * 1e-3 + (1 - b2) * g**2
    np.testing.assert_allclose(state.mu, m, rtol=1e-6)
    np.testing.assert_allclose(state.nu, v, rtol=1e-6)
    m_hat, v_hat = m / (1 - b1**2), v / (1 - b2**2)
    # float32 loses about 4 digits in 1 - b2**2 = 0.002 (optax's Adam too):
    # relative 6e-8 / 0.002 = 3e-5 on v_hat, half that on its square root.
    np.testing.assert_allclose(u, m_hat / (np.sqrt(v_hat) + eps), rtol=3e-5)


def test_spam_resets_the_moments_and_the_bias_correction() -> None:
    tx = scale_by_spam(reset_interval=3, spike_threshold=1e30, warmup_steps=0)
    grads = random_grads(6, seed=2)
    state = tx.init(DIRECTION)
    for g in grads[:2]:
        _, state = tx.update(g, state)
    assert int(state.count) == 2
    assert np.abs(flat(state.nu)).sum() > 0
    before_reset, state = tx.update(grads[2], state)
    # After reset_interval = 3 steps: zero moments, count back to 0.
    assert int(state.count) == 0
    np.testing.assert_array_equal(flat(state.mu), 0.0)
    np.testing.assert_array_equal(flat(state.nu), 0.0)

    # The next steps are a fresh Adam's: the first is g / (|g| + eps) ~ sign(g).
    adam = optax.scale_by_adam()
    a = adam.init(DIRECTION)
    for i, g in enumerate(grads[3:]):
        u, state = tx.update(g, state)
        v, a = adam.update(g, a)
        np.testing.assert_allclose(flat(u), flat(v), rtol=1e-6)
        if i == 0:  # ~ sign(g), to the float32 rounding of 1 - b2 (see above)
            np.testing.assert_allclose(flat(u), np.sign(flat(g)), rtol=1e-5)
    # ... which the step before the reset was not (it had history).
    fresh, _ = adam.update(grads[2], adam.init(DIRECTION))
    assert not np.allclose(flat(before_reset), flat(fresh), rtol=1e-3)


def test_spam_warmup_restarts_after_a_reset() -> None:
    tx = scale_by_spam(reset_interval=3, spike_threshold=1e30, warmup_steps=2)
    state = tx.init(DIRECTION)
    outs = []
    for g in random_grads(5, seed=3):
        u, state = tx.update(g, state)
        outs.append(flat(u))
    # k = 0, 1, 2 | 0, 1: multipliers 0, 0.5, 1 | 0, 0.5.
    np.testing.assert_array_equal(outs[0], 0.0)
    np.testing.assert_array_equal(outs[3], 0.0)
    assert np.abs(outs[1]).min() > 0 and np.abs(outs[4]).min() > 0


def test_spam_applies_decoupled_weight_decay_and_the_schedule() -> None:
    wd, eps = 0.1, 1e-8
    schedule = lambda count: 0.1 * (count + 1)  # noqa: E731  # 0.1, then 0.2
    # b1 = b2 = 1/2 keep Adam's part exact in binary: 1 - 0.5**2 = 0.75.
    tx = spam(schedule, b1=0.5, b2=0.5, eps=eps, weight_decay=wd, warmup_steps=2)
    p0 = jnp.array([1.0, -2.0])
    g = jnp.array([0.5, -3.0])
    state = tx.init(p0)
    # Step 1: warmup multiplier 0, so only the decay: -0.1 * (0.1 * p0).
    u1, state = tx.update(g, state, p0)
    np.testing.assert_allclose(u1, -0.1 * wd * np.asarray(p0), rtol=1e-6)
    p1 = np.asarray(p0) + np.asarray(u1)
    # Step 2, the same gradient: m2 = 0.25 g + 0.5 g = 0.75 g, so m_hat = g,
    # and likewise v_hat = g^2: Adam's direction is g / (|g| + eps); the
    # multiplier is 0.5 * (1 - cos(pi / 2)) = 0.5 and the rate 0.2.
    u2, state = tx.update(g, state, jnp.asarray(p1))
    gn = np.asarray(g)
    expected = -0.2 * (0.5 * gn / (np.abs(gn) + eps) + wd * p1)
    np.testing.assert_allclose(u2, expected, rtol=1e-6)
    assert isinstance(state[0], ScaleBySpamState)


def test_spam_runs_in_a_jitted_scan() -> None:
    tx = spam(1e-2, reset_interval=4, warmup_steps=2)
    loss = lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))  # noqa: E731

    def body(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], jax.Array]:
        p, s = carry
        value, grads = jax.value_and_grad(loss)(p)
        u, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, u), s), value

    (_, state), values = jax.jit(lambda p: lax.scan(body, (p, tx.init(p)), length=10))(
        DIRECTION
    )
    assert np.all(np.isfinite(values)) and values[-1] < values[0]
    assert int(state[0].count) == 10 % 4


# --------------------------------------------------------------------------
# skip_on_spike
# --------------------------------------------------------------------------

G = jnp.array([1.0, -2.0])
P = jnp.zeros(2)


def fill(tx: optax.GradientTransformationExtraArgs, losses: list[float]) -> Any:
    state = tx.init(P)
    for v in losses:
        _, state = tx.update(G, state, P, value=v)
    return state


def assert_trees_equal(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_skip_never_skips_a_finite_loss_before_the_window_is_full() -> None:
    tx = skip_on_spike(optax.sgd(1.0), factor=1.5, window=5)
    state = tx.init(P)
    for v in [1.0, 100.0, 1000.0, 5.0, 1e4]:
        u, state = tx.update(G, state, P, value=v)
        np.testing.assert_array_equal(u, -G)
    assert int(state.skipped) == 0 and int(state.filled) == 5


def test_skip_drops_a_spike_and_keeps_the_inner_state() -> None:
    tx = skip_on_spike(optax.adam(0.1), factor=1.5, window=5)
    state = fill(tx, [1.0] * 5)  # median 1: the limit is 1.5
    u, after = tx.update(G, state, P, value=2.0)
    np.testing.assert_array_equal(u, 0.0)
    assert_trees_equal(after.inner_state, state.inner_state)  # adam count, mu, nu
    np.testing.assert_array_equal(after.losses, state.losses)
    assert int(after.filled) == int(state.filled) and int(after.index) == int(
        state.index
    )
    assert int(after.skipped) == 1

    # 1.4 (and 1.5, not > 1.5) pass: exactly adam's step from the kept state.
    adam = optax.adam(0.1)
    for v in (1.4, 1.5):
        u, after = tx.update(G, after, P, value=v)
        expected, _ = adam.update(G, state.inner_state, P)
        np.testing.assert_allclose(u, expected, rtol=1e-6)
        state = after
    assert int(after.skipped) == 1
    assert int(after.inner_state[0].count) == 7


def test_skip_compares_with_the_median_of_the_last_accepted_losses() -> None:
    # Median, not mean: one 100 in the window does not move the limit (1.5).
    tx = skip_on_spike(optax.sgd(1.0), factor=1.5, window=5)
    state = fill(tx, [1.0, 1.0, 100.0, 1.0, 1.0])
    _, after = tx.update(G, state, P, value=2.0)
    assert int(after.skipped) == 1

    # A ring buffer: after 1.4, 1.4, 1.4 enter a window of 3, the median is
    # 1.4, the limit 2.1, and 2.0 passes where it was a spike before.
    tx = skip_on_spike(optax.sgd(1.0), factor=1.5, window=3)
    state = fill(tx, [1.0, 1.0, 1.0])
    _, probe = tx.update(G, state, P, value=2.0)
    assert int(probe.skipped) == 1
    state = fill(tx, [1.0, 1.0, 1.0, 1.4, 1.4, 1.4])
    np.testing.assert_allclose(state.losses, [1.4, 1.4, 1.4])
    u, after = tx.update(G, state, P, value=2.0)
    assert int(after.skipped) == 0
    np.testing.assert_array_equal(u, -G)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_skip_drops_a_non_finite_loss_even_before_the_window_is_full(
    bad: float,
) -> None:
    tx = skip_on_spike(optax.adam(0.1), window=5)
    state = fill(tx, [1.0])
    u, after = tx.update(G, state, P, value=bad)
    np.testing.assert_array_equal(u, 0.0)
    assert_trees_equal(after.inner_state, state.inner_state)
    assert int(after.skipped) == 1 and int(after.filled) == 1


def test_skip_under_jit_in_a_chain_after_a_clip() -> None:
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), skip_on_spike(optax.sgd(1.0), window=2)
    )
    update = jax.jit(tx.update)
    state = tx.init(P)
    clipped = -np.asarray(G) / np.linalg.norm(G)  # |G| = sqrt(5) > 1
    for v in (1.0, 1.0):
        u, state = update(G, state, P, value=jnp.float32(v))
        np.testing.assert_allclose(u, clipped, rtol=1e-6)
    u, state = update(G, state, P, value=jnp.float32(3.0))
    np.testing.assert_array_equal(u, 0.0)
    assert isinstance(state[1], SkipOnSpikeState) and int(state[1].skipped) == 1


def test_skip_runs_in_a_scan() -> None:
    tx = skip_on_spike(optax.adam(0.1), window=3)
    values = jnp.array([1.0, 1.1, 0.9, 5.0, 1.0, jnp.nan, 1.2])

    def body(s: SkipOnSpikeState, v: jax.Array) -> tuple[SkipOnSpikeState, Any]:
        u, s = tx.update(G, s, P, value=v)
        return s, u

    state, outs = jax.jit(lambda s: lax.scan(body, s, values))(tx.init(P))
    assert int(state.skipped) == 2  # the 5.0 and the NaN
    assert int(state.inner_state[0].count) == 5
    np.testing.assert_array_equal(outs[3], 0.0)
    np.testing.assert_array_equal(outs[5], 0.0)


def test_skip_hands_value_and_extra_args_to_an_extra_args_inner() -> None:
    # An inner that records the `value` and `scale` it was given in its state.
    def update(
        updates: Any, state: Any, params: Any = None, *, value: Any, scale: Any
    ) -> tuple[Any, Any]:
        return updates, jnp.stack([jnp.asarray(value, jnp.float32), scale])

    inner = optax.GradientTransformationExtraArgs(lambda p: jnp.zeros(2), update)
    tx = skip_on_spike(inner, window=1)
    state = tx.init(P)
    _, state = tx.update(G, state, P, value=2.0, scale=3.0)
    np.testing.assert_array_equal(state.inner_state, [2.0, 3.0])
    _, state = tx.update(G, state, P, value=4.0, scale=5.0)  # 4 > 1.5 * 2: skipped
    np.testing.assert_array_equal(state.inner_state, [2.0, 3.0])
    assert int(state.skipped) == 1


def test_skip_needs_a_scalar_value() -> None:
    tx = skip_on_spike(optax.sgd(1.0))
    with pytest.raises(TypeError):
        tx.update(G, tx.init(P), P)  # no value
    with pytest.raises(ValueError, match="scalar"):
        tx.update(G, tx.init(P), P, value=jnp.ones(2))
