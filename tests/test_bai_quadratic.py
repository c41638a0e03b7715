"""Adam's loss spikes on a 1-D quadratic (Bai et al. 2025, arXiv 2506.04805).

On ``f(x) = h x^2 / 2`` Adam (b1 0.9, b2 0.99) at a rate twenty times below
gradient descent's limit ``2 / h`` still blows the loss up: as ``x`` shrinks,
the gradient shrinks faster than the second moment ``v`` forgets it (``v``
decays by ``b2`` a step), so the preconditioned curvature
``a_t = lr h / (sqrt(v_hat_t) + eps)`` climbs until it passes the stability
limit of the momentum recursion, ``2 (1 + b1) / (1 - b1)`` (38 for b1 0.9;
the ``2`` of plain gradient descent when ``b1 = 0``). Then the loss grows
geometrically until ``g^2`` catches ``v`` up and ``a_t`` falls back: a spike.

Late in the run (bias corrections ~ 1) Adam's step on the quadratic is
linear in ``(x_t, m_{t-1} / h)`` with the matrix
``[[1 - a (1 - b1), -a b1], [1 - b1, b1]]``, determinant ``b1`` and trace
``1 + b1 - a (1 - b1)``; an eigenvalue reaches -1 exactly at
``a = 2 (1 + b1) / (1 - b1)``.

The reference is that recursion in float64 NumPy; optax runs in float64 too
(the loss falls to ~1e-40 before the first spike, below float32's range).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt

H, X0, LR, B1, B2, EPS = 1.0, 1.0, 0.1, 0.9, 0.99, 1e-8
STEPS = 1200
LIMIT = 2 * (1 + B1) / (1 - B1)  # the momentum recursion's stability limit, 38


def f(x: jax.Array) -> jax.Array:
    return 0.5 * H * x**2


def reference(steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """``x_0 .. x_steps`` and ``a_1 .. a_steps`` of Adam's recursion, float64."""
    x, m, v = X0, 0.0, 0.0
    xs, a = [x], []
    for t in range(1, steps + 1):
        g = H * x
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        denom = np.sqrt(v / (1 - B2**t)) + EPS
        a.append(LR * H / denom)
        x = x - LR * (m / (1 - B1**t)) / denom
        xs.append(x)
    return np.asarray(xs), np.asarray(a)


def run(tx: optax.GradientTransformation, steps: int = STEPS) -> np.ndarray:
    """``x_0 .. x_steps`` under ``tx`` (given ``value`` and ``value_fn``), float64."""
    with jax.enable_x64(True):
        x0 = jnp.asarray(X0, jnp.float64)

        def step(carry, _):
            x, state = carry
            value, grad = jax.value_and_grad(f)(x)
            extra = {"value": value, "value_fn": f}
            if not isinstance(tx, optax.GradientTransformationExtraArgs):
                extra = {}
            updates, state = tx.update(grad, state, x, **extra)
            x = optax.apply_updates(x, updates)
            return (x, state), x

        _, xs = jax.jit(lambda x: jax.lax.scan(step, (x, tx.init(x)), None, steps))(x0)
        return np.concatenate([[X0], np.asarray(xs, np.float64)])


def rises(xs: np.ndarray) -> np.ndarray:
    """The steps ``t`` (0-based) with ``f(x_{t+1}) > f(x_t)``."""
    loss = 0.5 * H * xs**2
    return np.flatnonzero(np.diff(loss) > 0)


def unstable_windows(a: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of steps with ``a_t`` above the limit."""
    above = np.concatenate([[False], a > LIMIT, [False]])
    edges = np.flatnonzero(np.diff(above.astype(int)))
    return list(zip(edges[::2], edges[1::2], strict=True))


def envelope(xs: np.ndarray, half: int = 10) -> np.ndarray:
    """The loss's upper envelope: its maximum over ``t +- half`` steps (the
    momentum's oscillation makes the loss itself touch ~0 at every crossing)."""
    loss = 0.5 * H * xs**2
    pad = np.pad(loss, half, mode="edge")
    return np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1).max(axis=1)


@pytest.fixture(scope="module")
def ref() -> tuple[np.ndarray, np.ndarray]:
    return reference()


@pytest.fixture(scope="module")
def adam_xs() -> np.ndarray:
    return run(optax.adam(LR, b1=B1, b2=B2, eps=EPS))


def test_the_rate_is_far_below_gradient_descents_limit() -> None:
    assert LR * H <= (2 / H) * H / 20


def test_optax_adam_follows_the_recursion(ref, adam_xs) -> None:
    xs, _ = ref
    loss_ref, loss = 0.5 * H * xs**2, 0.5 * H * adam_xs**2
    # Relative to the loss's envelope: at a zero crossing the loss itself is
    # ~0 and its relative error meaningless.
    err = np.abs(loss - loss_ref) / envelope(xs)
    assert err.max() < 1e-6, err.max()


def test_optax_adam_rises_at_the_reference_steps(ref, adam_xs) -> None:
    xs, _ = ref
    expected = rises(xs)
    assert len(expected) >= 400
    np.testing.assert_array_equal(rises(adam_xs), expected)


def test_spikes_start_where_the_preconditioned_curvature_passes_the_limit(
    ref, adam_xs
) -> None:
    _, a = ref
    env = envelope(adam_xs)
    windows = unstable_windows(a)
    # The first spike comes after ~890 steps of a_t's climb from 0.1, the
    # second after v has forgotten the first.
    assert len(windows) == 2, windows
    assert a[:10].max() < 1.0  # the run starts far inside the stable region
    for start, end in windows:
        # x_{t+1} is made with a_{t+1} (index t): the loss blows up by more
        # than a million times across each window and the steps after it.
        assert env[end + 10] > 1e6 * env[start], (start, end)
    # Between and before the windows the envelope never grows ten-fold over
    # 20 steps: the only spikes are the unstable windows.
    stable = np.ones(len(a), bool)
    for start, end in windows:
        stable[max(0, start - 20) : end + 30] = False
    growth = env[20:] / env[:-20]
    assert growth[stable[: len(growth)]].max() < 10.0


@pytest.mark.parametrize(
    "options",
    [{}, {"safety": None}],
    ids=["cap_and_guard", "guard_only"],
)
def test_stabilized_adam_never_raises_the_loss(options, adam_xs) -> None:
    tx = lyapopt.stabilize(optax.adam(LR, b1=B1, b2=B2, eps=EPS), **options)
    xs = run(tx)
    assert len(rises(xs)) == 0
    # ... and still trains: a guard that rejected every step would pass the
    # line above at the initial loss.
    loss = 0.5 * H * xs**2
    assert loss[-1] < 1e-6 * loss[0]
    assert len(rises(adam_xs)) > 0
