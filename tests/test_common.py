"""The suite that every lyapopt transform and optimizer passes.

Modelled on optax/contrib/_common_test.py: extra arguments ignored, no
recompilation, convergence on a parabola and on Rosenbrock, chains,
inject_hyperparams, MultiSteps and dtypes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt
from tests.helpers import make_step, parabola, rosenbrock, run


class Case(NamedTuple):
    factory: Callable[..., optax.GradientTransformation]
    kwargs: dict[str, Any]
    # Turns the transform into an optimizer (a step direction and length).
    wrap: Callable[[optax.GradientTransformation], optax.GradientTransformation]


def _alone(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    return tx


CASES = {
    "scale_by_gradient_modulation": Case(
        lyapopt.scale_by_gradient_modulation,
        {"modulation": 1.0},
        lambda t: optax.chain(t, optax.sgd(2e-3, momentum=0.9)),
    ),
    "scale_by_logged_learning_rate": Case(
        lyapopt.scale_by_logged_learning_rate,
        {"learning_rate": 1e-2},
        lambda t: optax.chain(optax.scale_by_adam(), t),
    ),
    "scale_by_curvature": Case(
        lyapopt.scale_by_curvature,
        {"safety": 1.0},
        lambda t: optax.chain(optax.sgd(10.0), t),
    ),
    "scale_by_curvature_every_3": Case(
        lyapopt.scale_by_curvature,
        {"safety": 0.5, "curvature_every": 3},
        lambda t: optax.chain(optax.sgd(10.0), t, lyapopt.lyapunov_guard()),
    ),
    "scale_by_held_out_rate": Case(
        lyapopt.scale_by_held_out_rate,
        {"rate_every": 2},
        lambda t: optax.chain(optax.sgd(0.1), t, lyapopt.lyapunov_guard()),
    ),
    "skip_loss_spikes": Case(
        lyapopt.skip_loss_spikes,
        {"spike_factor": 1.5, "spike_window": 3},
        lambda t: optax.chain(optax.sgd(1e-2), t, lyapopt.lyapunov_guard()),
    ),
    "scale_by_level": Case(
        lyapopt.scale_by_level,
        {"level": 0.0},
        lambda t: optax.chain(optax.sgd(1.0), t),
    ),
    "lyapunov_guard": Case(
        lyapopt.lyapunov_guard,
        {"guard": "backtrack"},
        lambda t: optax.chain(optax.sgd(1e-2), t),
    ),
    "stabilize_adamw": Case(
        functools.partial(lyapopt.stabilize, optax.adamw(0.1)), {"safety": 1.0}, _alone
    ),
    "lyapunov_sgd": Case(lyapopt.lyapunov_sgd, {}, _alone),
    "lyapunov_sgd_momentum": Case(lyapopt.lyapunov_sgd, {"momentum": 0.9}, _alone),
    "lyapunov_sgd_first_order": Case(
        lyapopt.lyapunov_sgd,
        {
            "learning_rate": 1e-2,
            "decay_constant": 1e-4,
            "safety": None,
            "guard": None,
        },
        _alone,
    ),
    # With no decay by default, Adam's default rate travels the parabola's 11
    # units (0.1's default decay limited a run to rate / 1e-3).
    "lyapunov_adam": Case(lyapopt.lyapunov_adam, {}, _alone),
    "lyapunov_adam_every_10": Case(
        lyapopt.lyapunov_adam, {"curvature_every": 10}, _alone
    ),
    "lyapunov_adam_rate_every_4": Case(
        lyapopt.lyapunov_adam, {"rate_every": 4}, _alone
    ),
    "lyapunov_adam_spike_factor": Case(
        lyapopt.lyapunov_adam, {"spike_factor": 1.5, "spike_window": 3}, _alone
    ),
}


def build(case: Case) -> optax.GradientTransformation:
    return case.wrap(case.factory(**case.kwargs))


cases = pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())


@cases
def test_unknown_extra_args_are_ignored_and_nothing_recompiles(case: Case) -> None:
    tx = build(case)
    params, _, loss_fn = rosenbrock()
    traces = []

    def step(p: Any, s: Any) -> tuple[Any, Any, jax.Array]:
        traces.append(1)  # runs once per trace, i.e. per compilation
        return make_step(tx, loss_fn, an_argument_nobody_expects=1)(p, s)

    step = jax.jit(step)
    state = tx.init(params)
    for _ in range(3):
        params, state, _ = step(params, state)
    assert len(traces) == 1


@cases
@pytest.mark.parametrize("target", [parabola, rosenbrock])
def test_converges(case: Case, target: Callable) -> None:
    params, solution, loss_fn = target()
    params, _, losses = run(build(case), loss_fn, params, steps=20_000)
    np.testing.assert_allclose(params, solution, rtol=3e-2, atol=3e-2)
    assert losses[-1] < 1e-3 * losses[0]


@cases
def test_works_inside_a_chain_with_optax_transforms(case: Case) -> None:
    tx = optax.chain(optax.clip_by_global_norm(100.0), build(case), optax.scale(1.0))
    params, solution, loss_fn = parabola()
    params, _, _ = run(tx, loss_fn, params, steps=5_000)
    np.testing.assert_allclose(params, solution, rtol=3e-2, atol=3e-2)


@cases
def test_inject_hyperparams_gives_the_same_step(case: Case) -> None:
    injected = case.wrap(optax.inject_hyperparams(case.factory)(**case.kwargs))
    plain = build(case)
    params, _, loss_fn = rosenbrock()
    params = params + 0.3
    outs = []
    for tx in (plain, injected):
        step = jax.jit(make_step(tx, loss_fn))
        p, s = params, tx.init(params)
        for _ in range(3):
            p, s, _ = step(p, s)
        outs.append(p)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


@cases
def test_multisteps_accumulates_then_takes_one_step(case: Case) -> None:
    tx = build(case)
    multi = optax.MultiSteps(tx, every_k_schedule=2)
    params, _, loss_fn = rosenbrock()
    params = params + 0.3
    value, grads = jax.value_and_grad(loss_fn)(params)

    def update(t: optax.GradientTransformation, state: Any) -> tuple[Any, Any]:
        return t.update(grads, state, params, value=value, value_fn=loss_fn)

    first, state = jax.jit(functools.partial(update, multi))(multi.init(params))
    second, state = jax.jit(functools.partial(update, multi))(state)
    single, _ = jax.jit(functools.partial(update, tx))(tx.init(params))
    np.testing.assert_array_equal(first, jnp.zeros_like(first))
    np.testing.assert_allclose(second, single, rtol=1e-6)


@pytest.mark.slow
@cases
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_keeps_dtypes(case: Case, dtype: str) -> None:
    with jax.enable_x64(dtype == "float64"):
        tx = build(case)
        params, _, loss_fn = parabola(jnp.dtype(dtype))
        state = tx.init(params)
        step = jax.jit(make_step(tx, loss_fn))
        new_params, new_state = params, state
        for _ in range(2):
            new_params, new_state, _ = step(new_params, new_state)
        assert new_params.dtype == jnp.dtype(dtype)
        assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
            lambda x: x.dtype, state
        )
        assert bool(jnp.all(jnp.isfinite(new_params)))
        if dtype != "bfloat16":  # bfloat16 rounds the smaller steps away
            assert float(loss_fn(new_params)) < float(loss_fn(params))
