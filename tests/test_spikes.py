"""skip_loss_spikes: a batch whose loss is far above the recent ones is refused.

The guard judges a step on the batch it came from, so a garbage batch's
step, which lowers that batch's own loss, passes it. The loss reference
judges the batch itself against the median of the recent admitted losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt


def _standalone(losses, **kw):
    """Feeds ``losses`` as ``value`` to ``chain(sgd(1), skip_loss_spikes)``;
    returns which steps moved and the stage's last state."""
    tx = optax.chain(optax.sgd(1.0), lyapopt.skip_loss_spikes(**kw))
    x = jnp.ones(2)
    state = tx.init(x)
    step = jax.jit(lambda s, v: tx.update(x, s, x, value=v))
    moved = []
    for v in losses:
        updates, state = step(state, jnp.asarray(v, jnp.float32))
        moved.append(bool(jnp.any(updates != 0)))
    return moved, state[1]


def test_refuses_exactly_the_losses_above_factor_times_the_median() -> None:
    # The window holds 1..5: median 3, factor 1.5, the bound 4.5.
    first = [1.0, 2.0, 3.0, 4.0, 5.0]
    moved, state = _standalone([*first, 4.5001, 4.5], spike_factor=1.5, spike_window=5)
    assert moved == [True] * 5 + [False, True]
    assert int(state.skipped) == 1 and int(state.consecutive) == 0
    # 4.5001 left the window alone; 4.5 took the oldest's place, 1.0's.
    np.testing.assert_array_equal(
        np.sort(np.asarray(state.losses)), [2.0, 3.0, 4.0, 4.5, 5.0]
    )


def test_nothing_is_judged_until_the_window_is_full() -> None:
    moved, state = _standalone([1.0, 100.0, 1e4, 1.0], spike_window=3)
    assert moved == [True, True, True, True]  # median of (1, 100, 1e4): 100
    assert int(state.skipped) == 0


def test_it_cannot_freeze_training_on_a_new_level() -> None:
    # The loss jumps from 1 to 3 for good: exactly max_skips batches are
    # refused, the next is admitted and starts a new window, which the new
    # level then fills.
    losses = [1.0] * 4 + [3.0] * 10
    moved, state = _standalone(losses, spike_window=4, max_skips=3)
    assert moved == [True] * 4 + [False] * 3 + [True] * 7
    assert int(state.skipped) == 3 and int(state.restarts) == 1
    np.testing.assert_array_equal(state.losses, [3.0] * 4)


def test_a_short_burst_is_skipped_whole_and_the_reference_kept() -> None:
    losses = [1.0] * 4 + [50.0] * 3 + [1.1, 1.0]
    moved, state = _standalone(losses, spike_window=4, max_skips=3)
    assert moved == [True] * 4 + [False] * 3 + [True] * 2
    assert int(state.restarts) == 0 and int(state.consecutive) == 0


def test_a_nonfinite_loss_is_refused_even_after_max_skips() -> None:
    moved, state = _standalone(
        [1.0, 1.0, jnp.nan, jnp.inf, jnp.nan, 1.0], spike_window=2, max_skips=1
    )
    assert moved == [True, True, False, False, False, True]
    assert int(state.skipped) == 3 and int(state.restarts) == 0


def test_the_callers_value_is_judged_where_given_else_value_fn() -> None:
    # `value` is free (the caller computed it with the gradient); without it
    # the stage evaluates value_fn.
    tx = optax.chain(optax.sgd(1.0), lyapopt.skip_loss_spikes(spike_window=2))
    x = jnp.ones(2)
    state = tx.init(x)
    flat = lambda p: jnp.sum(p) * 0 + 1.0  # noqa: E731
    for v in (1.0, 1.0):
        _, state = tx.update(x, state, x, value=jnp.asarray(v), value_fn=flat)
    _, judged_by_value = tx.update(x, state, x, value=10.0, value_fn=flat)
    assert int(judged_by_value[1].skipped) == 1
    _, judged_by_fn = tx.update(x, state, x, value_fn=lambda p: 10.0 + 0 * p[0])
    assert int(judged_by_fn[1].skipped) == 1
    _, admitted = tx.update(x, state, x, value_fn=flat)
    assert int(admitted[1].skipped) == 0


def test_a_nonpositive_reference_judges_nothing() -> None:
    # The ratio only means something for a positive loss: with a median of
    # -1 no batch is refused.
    moved, _ = _standalone([-1.0, -1.0, 5.0], spike_window=2)
    assert moved == [True, True, True]


# --- inside stabilize: the batch never reaches the wrapped optimizer ----------


def _regression(seed: int, rows: int = 16):
    x = jax.random.normal(jax.random.key(seed), (rows, 3))
    w = jnp.array([1.0, -2.0, 0.5])
    return x, x @ w


def _loss(w, batch):
    x, y = batch
    return jnp.mean((x @ w - y) ** 2)


def _train(tx, batches):
    w = jnp.zeros(3)
    state = tx.init(w)

    @jax.jit
    def step(w, state, batch):
        loss, g = jax.value_and_grad(_loss)(w, batch)
        updates, state = tx.update(
            g, state, w, value=loss, value_fn=lambda p: _loss(p, batch)
        )
        return optax.apply_updates(w, updates), state

    history = []
    for batch in batches:
        w, state = step(w, state, batch)
        history.append((w, state))
    return history


def test_in_stabilize_a_refused_batch_leaves_params_and_adams_state_bitwise() -> None:
    clean = [_regression(s) for s in range(6)]
    x, y = _regression(99)
    garbage = (x, y + 100.0)  # every target off by 100: the loss is ~1e4
    tx = lyapopt.stabilize(optax.adam(0.1), spike_factor=1.5, spike_window=3)
    with_bad = _train(tx, [*clean[:4], garbage, *clean[4:]])
    without = _train(tx, clean)
    (w_before, s_before), (w_bad, s_bad) = with_bad[3], with_bad[4]
    np.testing.assert_array_equal(w_bad, w_before)
    # Adam's moments and count as they were; not counted as a non-finite
    # gradient.
    jax.tree.map(np.testing.assert_array_equal, s_bad.inner_state, s_before.inner_state)
    stats = lyapopt.stats(s_bad)
    assert int(stats["spike_skips"]) == 1
    assert int(stats["nonfinite_gradients"]) == 0
    # The run then goes on as if the batch had never come, to the bit.
    np.testing.assert_array_equal(with_bad[-1][0], without[-1][0])


def test_the_guard_accepts_the_garbage_batch_the_reference_refuses() -> None:
    # Goal 3 of the loss-spike benchmark in a closed form: the garbage
    # batch's gradient lowers its own loss, so the guard takes the step, and
    # the loss on clean data rises; the reference refuses it.
    clean = [_regression(s) for s in range(20)]
    x, y = _regression(99)
    garbage = (x, y + 100.0)
    held_out = _regression(123, rows=256)

    def clean_loss_after(tx):
        history = _train(tx, [*clean, garbage])
        (w_before, _), (w_after, state) = history[-2], history[-1]
        return _loss(w_before, held_out), _loss(w_after, held_out), state

    before, after, state = clean_loss_after(lyapopt.stabilize(optax.sgd(0.1)))
    assert float(lyapopt.stats(state)["guard_scale"]) > 0  # taken
    assert float(before) < 1e-3 and float(after) > 1.0
    before, after, state = clean_loss_after(
        lyapopt.stabilize(optax.sgd(0.1), spike_factor=1.5, spike_window=3)
    )
    assert float(after) == float(before)
    assert int(lyapopt.stats(state)["spike_skips"]) == 1


def test_the_held_out_rate_does_not_measure_on_a_refused_batch() -> None:
    clean = [_regression(s) for s in range(5)]
    x, y = _regression(99)
    tx = lyapopt.stabilize(
        optax.sgd(0.05), spike_factor=1.5, spike_window=3, rate_every=1
    )
    history = _train(tx, [*clean[:4], (x, y + 100.0)])
    before, after = (lyapopt.stats(s) for _, s in history[-2:])
    assert int(after["rate_rejected"]) == int(before["rate_rejected"]) + 1
    assert int(after["rate_measurements"]) == int(before["rate_measurements"])
    np.testing.assert_array_equal(after["rate"], before["rate"])


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spike_factor": 0.5}, "spike_factor.*1.5"),
        ({"spike_window": 0}, "spike_window.*50"),
        ({"spike_window": 2.5}, "spike_window.*50"),
        ({"max_skips": 0}, "max_skips.*10"),
    ],
)
def test_bad_options_name_the_argument_and_the_fix(kwargs, match) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        lyapopt.skip_loss_spikes(**kwargs)
    factor = kwargs.get("spike_factor", 1.5)
    with pytest.raises((TypeError, ValueError), match=match):
        lyapopt.stabilize(optax.sgd(0.1), **{"spike_factor": factor, **kwargs})


def test_without_a_loss_it_says_what_to_pass() -> None:
    tx = lyapopt.skip_loss_spikes()
    x = jnp.ones(2)
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(x, tx.init(x), x)
