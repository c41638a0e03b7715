"""Defaults that keep training: runs of any length keep learning."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt
from tests.helpers import parabola, run

DEFAULT_OPTIMIZERS = {
    "lyapunov_adam": lyapopt.lyapunov_adam,
    "lyapunov_sgd": lyapopt.lyapunov_sgd,
}
defaults = pytest.mark.parametrize("name", DEFAULT_OPTIMIZERS)


@defaults
def test_defaults_reach_the_parabolas_optimum_within_3_percent(name: str) -> None:
    # optax's parabola test: from (-1, 10, 1) to (1, -1, 1) in 30,000 steps.
    # With 0.1's default decay (1e-3 per step) Adam at 1e-2 could travel at
    # most 10 in a whole run and ended at 1.77 instead of -1.
    params, solution, loss_fn = parabola()
    params, _, _ = run(DEFAULT_OPTIMIZERS[name](), loss_fn, params, steps=30_000)
    np.testing.assert_allclose(params, solution, rtol=3e-2, atol=3e-2)


@defaults
def test_a_100k_step_run_still_lowers_the_loss_in_its_last_10k_steps(name: str) -> None:
    # A quadratic whose minimum is far enough that neither optimizer reaches
    # it in 100,000 steps: Adam moves about its rate (1e-2) a step, and the
    # modulated gradient step is shorter than 1. A decay that freezes the
    # rate (0.1's default) leaves the last 10,000 steps without progress.
    center = jnp.array([1e5, -2e5], jnp.float32)

    def loss_fn(p: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum((p - center) ** 2)

    _, _, losses = run(
        DEFAULT_OPTIMIZERS[name](), loss_fn, jnp.zeros(2, jnp.float32), steps=100_000
    )
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[-10_000] * (1 - 1e-4)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_the_decay_is_off_by_default_and_the_papers_decay_is_one_argument_away() -> (
    None
):
    params = jnp.zeros(3)
    for factory in DEFAULT_OPTIMIZERS.values():
        for decay_constant, expected in ((0.0, 1.0), (1e-3, math.exp(-1e-3 * 7))):
            tx = factory(0.5, decay_constant=decay_constant)
            state = tx.init(params)
            f = lambda p: jnp.sum(p**2)  # noqa: E731
            for _ in range(8):
                _, state = tx.update(
                    jnp.ones(3), state, params, value=f(params), value_fn=f
                )
            rate = lyapopt.stats(state)["learning_rate"]
            np.testing.assert_allclose(rate, 0.5 * expected, rtol=1e-6)


def test_exponential_schedule_is_optax_exponential_decay_with_the_papers_constant() -> (
    None
):
    alpha, steps = 0.3, jnp.arange(20)
    ours = lyapopt.exponential_schedule(2.0, alpha, end_value=0.1)
    theirs = optax.exponential_decay(2.0, 1, math.exp(-alpha), end_value=0.1)
    np.testing.assert_allclose(
        jax.vmap(ours)(steps), jax.vmap(theirs)(steps), rtol=1e-6
    )
    # Per epoch: alpha is spread over steps_per_epoch steps.
    per_epoch = lyapopt.exponential_schedule(2.0, alpha, steps_per_epoch=10)
    np.testing.assert_allclose(per_epoch(10), 2.0 * math.exp(-alpha), rtol=1e-6)
