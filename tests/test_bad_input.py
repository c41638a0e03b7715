"""Bad input: every public function refuses it with a message that says the fix.

Each case names the call, the exception type, and words the message must hold:
the argument's name, the value, and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

import lyapopt

X = jnp.ones(3)
LOSS = lambda p: jnp.sum(p**2)  # noqa: E731


def _update(
    tx: optax.GradientTransformation, updates: Any = X, params: Any = X, **kw: Any
):
    return lambda: tx.update(updates, tx.init(X), params, **kw)


# (call, exception, fragments of the message)
CASES: dict[str, tuple[Callable[[], Any], type[Exception], tuple[str, ...]]] = {
    # exponential_schedule
    "schedule_zero_init": (lambda: lyapopt.exponential_schedule(0.0, 0.1), ValueError, ("`init_value`", "> 0", "got 0.0", "positive learning rate")),
    "schedule_negative_init": (lambda: lyapopt.exponential_schedule(-1.0, 0.1), ValueError, ("`init_value`", "got -1.0")),
    "schedule_nan_init": (lambda: lyapopt.exponential_schedule(float("nan"), 0.1), ValueError, ("`init_value`", "finite", "got nan")),
    "schedule_inf_init": (lambda: lyapopt.exponential_schedule(float("inf"), 0.1), ValueError, ("`init_value`", "got inf")),
    "schedule_string_init": (lambda: lyapopt.exponential_schedule("0.1", 0.1), TypeError, ("`init_value`", "real number", "'0.1'")),
    "schedule_negative_decay": (lambda: lyapopt.exponential_schedule(0.1, -0.5), ValueError, ("`decay_constant`", ">= 0", "got -0.5", "Pass 0.0 for a constant")),
    "schedule_nan_decay": (lambda: lyapopt.exponential_schedule(0.1, float("nan")), ValueError, ("`decay_constant`", "got nan")),
    "schedule_zero_steps_per_epoch": (lambda: lyapopt.exponential_schedule(0.1, 0.1, steps_per_epoch=0), ValueError, ("`steps_per_epoch`", "integer >= 1", "got 0")),
    "schedule_fractional_steps_per_epoch": (lambda: lyapopt.exponential_schedule(0.1, 0.1, steps_per_epoch=2.5), ValueError, ("`steps_per_epoch`", "integer", "got 2.5")),
    "schedule_negative_floor": (lambda: lyapopt.exponential_schedule(0.1, 0.1, end_value=-1e-3), ValueError, ("`end_value`", "got -0.001", "Pass 0.0 for no floor")),
    "schedule_vector_init": (lambda: lyapopt.exponential_schedule(jnp.ones(2), 0.1), TypeError, ("`init_value`", "scalar", "shape (2,)")),
    "schedule_bool_init": (lambda: lyapopt.exponential_schedule(True, 0.1), TypeError, ("`init_value`", "bool")),
    # transforms
    "modulation_negative": (lambda: lyapopt.scale_by_gradient_modulation(-1.0), ValueError, ("scale_by_gradient_modulation", "`modulation`", "got -1.0", "Pass 1.0")),
    "modulation_inf": (lambda: lyapopt.scale_by_gradient_modulation(float("inf")), ValueError, ("`modulation`", "got inf")),
    "learning_rate_negative": (lambda: lyapopt.scale_by_logged_learning_rate(-0.1), ValueError, ("`learning_rate`", "got -0.1")),
    "curvature_zero_safety": (lambda: lyapopt.scale_by_curvature(0.0), ValueError, ("scale_by_curvature", "`safety`", "> 0", "got 0.0", "Pass 1.0")),
    "curvature_negative_safety": (lambda: lyapopt.scale_by_curvature(-1.0), ValueError, ("`safety`", "got -1.0")),
    "curvature_nan_safety": (lambda: lyapopt.scale_by_curvature(float("nan")), ValueError, ("`safety`", "got nan")),
    "curvature_every_zero": (lambda: lyapopt.scale_by_curvature(curvature_every=0), ValueError, ("`curvature_every`", "integer >= 1", "got 0")),
    "curvature_every_fraction": (lambda: lyapopt.scale_by_curvature(curvature_every=1.5), ValueError, ("`curvature_every`", "got 1.5")),
    "curvature_max_scale_below_one": (lambda: lyapopt.scale_by_curvature(max_scale=0.5), ValueError, ("`max_scale`", ">= 1", "got 0.5")),
    "level_nan_level": (lambda: lyapopt.scale_by_level(float("nan")), ValueError, ("scale_by_level", "`level`", "got nan", "lower bound")),
    "level_inf_level": (lambda: lyapopt.scale_by_level(-float("inf")), ValueError, ("`level`", "got -inf")),
    "guard_negative_tolerance": (lambda: lyapopt.lyapunov_guard(tolerance=-1e-3), ValueError, ("lyapunov_guard", "`tolerance`", ">= 0", "got -0.001", "Pass 0.0")),
    "guard_nan_tolerance": (lambda: lyapopt.lyapunov_guard(tolerance=float("nan")), ValueError, ("`tolerance`", "got nan")),
    "guard_unknown_mode": (lambda: lyapopt.lyapunov_guard(guard="reject"), ValueError, ("`guard`", "'record', 'backtrack', 'skip', 'check'", "got 'reject'")),
    "guard_negative_backtracks": (lambda: lyapopt.lyapunov_guard(max_backtracks=-1), ValueError, ("`max_backtracks`", "got -1")),
    "guard_decrease_one": (lambda: lyapopt.lyapunov_guard(decrease=1.0), ValueError, ("`decrease`", "< 1", "got 1.0", "0.25")),
    "guard_negative_decrease": (lambda: lyapopt.stabilize(optax.sgd(1.0), decrease=-0.5), ValueError, ("`decrease`", "got -0.5")),
    "guard_fractional_backtracks": (lambda: lyapopt.lyapunov_guard(max_backtracks=2.5), ValueError, ("`max_backtracks`", "integer")),
    # stabilize and the optimizers
    "stabilize_not_a_transform": (lambda: lyapopt.stabilize(optax.adam), TypeError, ("stabilize", "`tx`", "GradientTransformation", "optax.adam(1e-3)")),
    "stabilize_unknown_guard": (lambda: lyapopt.stabilize(optax.adam(1e-3), guard="strict"), ValueError, ("`guard`", "None", "got 'strict'")),
    "stabilize_zero_safety": (lambda: lyapopt.stabilize(optax.adam(1e-3), safety=0.0), ValueError, ("`safety`", "got 0.0")),
    "sgd_zero_learning_rate": (lambda: lyapopt.lyapunov_sgd(0.0), ValueError, ("lyapunov_sgd", "`learning_rate`", "> 0", "got 0.0", "optax schedule")),
    "sgd_nan_learning_rate": (lambda: lyapopt.lyapunov_sgd(float("nan")), ValueError, ("lyapunov_sgd", "`learning_rate`", "got nan")),
    "sgd_momentum_one": (lambda: lyapopt.lyapunov_sgd(momentum=1.0), ValueError, ("`momentum`", "< 1", "got 1.0", "0.9")),
    "sgd_negative_modulation": (lambda: lyapopt.lyapunov_sgd(modulation=-2.0), ValueError, ("`modulation`", "got -2.0", "None to turn it off")),
    "sgd_safety_not_a_number": (lambda: lyapopt.lyapunov_sgd(safety="yes"), TypeError, ("`safety`", "real number", "'yes'")),
    "sgd_negative_decay": (lambda: lyapopt.lyapunov_sgd(decay_constant=-1.0), ValueError, ("`decay_constant`", "got -1.0")),
    "adam_b1_one": (lambda: lyapopt.lyapunov_adam(b1=1.0), ValueError, ("lyapunov_adam", "`b1`", "< 1", "got 1.0")),
    "adam_negative_b2": (lambda: lyapopt.lyapunov_adam(b2=-0.1), ValueError, ("`b2`", "got -0.1")),
    "adam_negative_eps": (lambda: lyapopt.lyapunov_adam(eps=-1e-8), ValueError, ("`eps`", "got -1e-08")),
    "adam_inf_learning_rate": (lambda: lyapopt.lyapunov_adam(float("inf")), ValueError, ("`learning_rate`", "got inf")),
    # update calls
    "missing_value_fn": (_update(lyapopt.lyapunov_adam(), value=1.0), ValueError, ("needs the extra argument `value_fn`", "value_fn=lambda p: loss_fn(p, batch)")),
    "value_fn_not_callable": (_update(lyapopt.lyapunov_guard(), value_fn=1.0), TypeError, ("`value_fn` must be a callable",)),
    "missing_params": (_update(lyapopt.scale_by_curvature(), params=None, value_fn=LOSS), ValueError, ("needs the current parameters", "tx.update(grads, state, params")),
    "tree_mismatch": (_update(lyapopt.lyapunov_guard(), updates={"a": X}, value_fn=LOSS), ValueError, ("`updates` and `params` must have the same tree structure",)),
    "shape_mismatch": (_update(lyapopt.scale_by_curvature(), updates=jnp.ones(4), value_fn=LOSS), ValueError, ("shape (4,)", "shape (3,)", "must match")),
    "integer_params": (lambda: lyapopt.lyapunov_guard().update(jnp.ones(3, jnp.int32), lyapopt.lyapunov_guard().init(X), jnp.ones(3, jnp.int32), value_fn=LOSS), TypeError, ("dtype int32", "floating-point", ".astype(jnp.float32)")),
    "vector_loss": (_update(lyapopt.lyapunov_guard(), value_fn=lambda p: p**2), ValueError, ("`value_fn` returned an array", "not a scalar loss", "shape (3,)", ".mean()")),
    "level_without_grad_or_value_fn": (_update(lyapopt.scale_by_level(0.0), value=1.0), ValueError, ("scale_by_level needs `value_fn`, or else both `value` and `grad`", "`grad` is missing")),
    "grad_shape_mismatch": (_update(lyapopt.scale_by_curvature(), value_fn=LOSS, grad=jnp.ones(2)), ValueError, ("`grad`", "shape (2,)")),
    "inside_masked": (lambda: (lambda tx: tx.update({"a": X, "b": X}, tx.init({"a": X, "b": X}), {"a": X, "b": X}, value_fn=LOSS))(optax.masked(lyapopt.lyapunov_guard(), {"a": True, "b": False})), ValueError, ("inside `optax.masked`", "lyapopt.stabilize(optax.multi_transform")),
    # diagnostics and testing helpers
    "sharpness_without_a_key": (lambda: lyapopt.diagnostics.sharpness(LOSS, X, key=0), TypeError, ("sharpness", "`key`", "jax.random.key(0)")),
    "sharpness_zero_iters": (lambda: lyapopt.diagnostics.sharpness(LOSS, X, key=jax.random.key(0), num_iters=0), ValueError, ("`num_iters`", "got 0")),
    "hvp_mismatched_vector": (lambda: lyapopt.diagnostics.hvp(LOSS, X, jnp.ones(2)), ValueError, ("hvp", "`v`", "shape (2,)")),
    "segment_mismatched_ends": (lambda: lyapopt.diagnostics.segment_profile(LOSS, X, {"b": X}), ValueError, ("segment_profile", "`b`", "tree structure")),
    "monotone_negative_tolerance": (lambda: lyapopt.testing.assert_monotone_decrease([1.0], tolerance=-1.0), ValueError, ("`tolerance`", "got -1.0")),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_refused_with_the_argument_value_and_fix(case: tuple) -> None:
    call, error, fragments = case
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


def test_a_refused_update_leaves_state_and_params_untouched() -> None:
    tx = lyapopt.lyapunov_adam()
    state = tx.init(X)
    before = jax.tree.map(jnp.copy, state)
    with pytest.raises(ValueError):
        tx.update(X, state, X)  # no value_fn
    assert jax.tree.all(
        jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state, before)
    )
