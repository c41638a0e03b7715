"""optax's own common test suites, run against lyapopt's optimizers.

optax ships the suites that every one of its optimizers passes:
``optax/contrib/_common_test.py`` (``ContribTest``) and the common tests of
``optax/_src/alias_test.py`` (``AliasTest``). Their test bodies look an
optimizer up by name and call ``update`` without ``value_fn``, which
lyapopt's cap and guard need, so the bodies cannot run unchanged. This file
runs the same checks on the same problems with the same tolerances: the
problems (``_setup_parabola``, ``_setup_rosenbrock``,
``_setup_matrix_parabola``, ``_setup_mixed_tensor_target``) and the helpers
(``assert_trees_all_close``, ``log_compilations``) are imported from the
installed optax wheel, and each test names the optax test it mirrors. The
one difference: ``update`` gets ``value`` and ``value_fn`` (as optax's own
tests give ``value`` to ``polyak_sgd`` and ``obj_fn`` to ``sophia``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest
from optax._src import alias_test, test_utils
from optax.contrib import _common_test as contrib_test

import lyapopt

pytestmark = pytest.mark.slow  # optax's suites, compiled for every optimizer

# The configurations under test: each lyapopt optimizer at its defaults, the
# paper's first-order rule, stabilize around two optax optimizers, and the
# curvature measured every 10 steps. The first-order rule has no cap, so
# like optax's sgd entries it needs a rate that suits Rosenbrock's valley.
OPTIMIZERS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "lyapunov_adam": (lyapopt.lyapunov_adam, {}),
    "lyapunov_sgd": (lyapopt.lyapunov_sgd, {}),
    "lyapunov_sgd_first_order": (
        lyapopt.lyapunov_sgd,
        {"learning_rate": 1e-2, "safety": None, "guard": None},
    ),
    "stabilize_adam": (
        lambda **kw: lyapopt.stabilize(optax.adam(kw.pop("learning_rate", 1e-2)), **kw),
        {},
    ),
    "stabilize_sgd_momentum": (
        lambda **kw: lyapopt.stabilize(
            optax.sgd(kw.pop("learning_rate", 0.1), momentum=0.9), **kw
        ),
        {},
    ),
    "lyapunov_adam_every_10": (lyapopt.lyapunov_adam, {"curvature_every": 10}),
}
# The factories that inject_hyperparams can wrap as they are (stabilize takes
# an optimizer, not numbers, as its first argument).
FACTORIES = ("lyapunov_adam", "lyapunov_sgd", "lyapunov_sgd_first_order")

optimizers = pytest.mark.parametrize("name", OPTIMIZERS)


def build(name: str, **overrides: Any) -> optax.GradientTransformation:
    factory, kwargs = OPTIMIZERS[name]
    return factory(**{**kwargs, **overrides})


def step_fn(
    opt: optax.GradientTransformation,
    objective: Callable,
    *,
    conjugate: bool = False,
    **extra: Any,
) -> Callable:
    """optax's test step, with ``value`` and ``value_fn`` given to ``update``."""

    def step(params: Any, state: Any) -> tuple[Any, Any]:
        value, grads = jax.value_and_grad(objective)(params)
        if conjugate:  # alias_test: complex gradients are conjugated
            grads = jax.tree.map(jnp.conj, grads)
        updates, state = opt.update(
            grads, state, params, value=value, value_fn=objective, **extra
        )
        return optax.apply_updates(params, updates), state

    return step


def scan(step: Callable, params: Any, state: Any, length: int) -> tuple[Any, Any]:
    """``length`` steps in one jitted ``lax.scan``."""

    def f(carry: Any, _: None) -> tuple[Any, None]:
        return step(*carry), None

    return jax.jit(lambda c: jax.lax.scan(f, c, length=length)[0])((params, state))


# ---------------------------------------------------------------------------
# contrib/_common_test.py: ContribTest


@optimizers
def test_accept_extra_args_and_no_recompilation(name: str) -> None:
    """ContribTest.test_optimizers_accept_extra_args (and AliasTest's)."""
    opt = build(name)
    initial_params, _, objective = contrib_test._setup_rosenbrock(jnp.float32)
    step = jax.jit(
        step_fn(opt, objective, unexpected_extra_args_your_optimizer_doesnt_expect=1)
    )
    params, state = initial_params, opt.init(initial_params)
    for _ in range(2):
        params, state = step(params, state)
    params, state = step(initial_params, opt.init(initial_params))
    with test_utils.log_compilations() as compilation_logs:
        step(params, state)
    assert not compilation_logs, 'Optimizer recompiles on second call to "update".'


@optimizers
@pytest.mark.parametrize(
    "target",
    [
        contrib_test._setup_parabola,
        contrib_test._setup_rosenbrock,
        contrib_test._setup_matrix_parabola,
        contrib_test._setup_mixed_tensor_target,
    ],
    ids=["parabola", "rosenbrock", "matrix_parabola", "mixed_tensor"],
)
def test_optimizers(name: str, target: Callable) -> None:
    """ContribTest.test_optimizers: 30,000 steps in a scan, rtol = atol = 3e-2."""
    opt = build(name)
    initial_params, final_params, obj_fn = target(jnp.dtype("float32"))
    step = step_fn(opt, obj_fn)
    state = opt.init(initial_params)
    state = optax.tree.map_params(opt, lambda v: v, state)  # a no-op must work

    params, _ = scan(step, initial_params, state, 30_000)
    test_utils.assert_trees_all_close(params, final_params, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", FACTORIES)
def test_can_be_wrapped_in_inject_hyperparams(name: str) -> None:
    """ContribTest.test_optimizers_can_be_wrapped_in_inject_hyperparams.

    With AliasTest's twin, whose tolerances are looser (1e-3 and 1e-4).
    ``value_fn`` is the squared norm, as optax gives sophia's ``obj_fn``.
    """
    factory, hparams = OPTIMIZERS[name]
    opt = factory(**hparams)
    opt_inject = optax.inject_hyperparams(factory, static_args=("guard",))(**hparams)
    params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]

    def obj_fn(x: Any) -> jax.Array:
        return optax.tree.norm(x, squared=True)

    update_fn = functools.partial(opt.update, value_fn=obj_fn)
    inject_update_fn = functools.partial(opt_inject.update, value_fn=obj_fn)
    state = jax.jit(opt.init)(params)
    updates, new_state = jax.jit(update_fn)(grads, state, params)
    state_inject = jax.jit(opt_inject.init)(params)
    updates_inject, new_state_inject = jax.jit(inject_update_fn)(
        grads, state_inject, params
    )
    test_utils.assert_trees_all_close(updates_inject, updates, rtol=1e-5)
    test_utils.assert_trees_all_close(
        new_state_inject.inner_state, new_state, rtol=1e-5, atol=1e-5
    )


def _fun(x: jax.Array) -> jax.Array:
    return jnp.sum(x**2)


@optimizers
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_preserve_dtype(name: str, dtype: str) -> None:
    """ContribTest.test_preserve_dtype and AliasTest.test_preserve_dtype."""
    opt = build(name)
    params = jnp.array([1.0, 2.0], dtype=jnp.dtype(dtype))
    value, grads = jax.value_and_grad(_fun)(params)
    state = jax.jit(opt.init)(params)
    update_fn = functools.partial(opt.update, value_fn=_fun)
    updates, _ = jax.jit(update_fn)(grads, state, params, value=value)
    assert updates.dtype == params.dtype == grads.dtype


@optimizers
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gradient_accumulation(name: str, dtype: str) -> None:
    """ContribTest.test_gradient_accumulation and AliasTest's: MultiSteps(every 4)."""
    opt = build(name)
    update_fn = functools.partial(opt.update, value_fn=_fun)
    opt = optax.MultiSteps(
        optax.GradientTransformationExtraArgs(opt.init, update_fn), every_k_schedule=4
    )
    params = jnp.array([1.0, 2.0], dtype=jnp.dtype(dtype))
    value, grads = jax.value_and_grad(_fun)(params)
    state = jax.jit(opt.init)(params)
    updates, _ = jax.jit(opt.update)(grads, state, params, value=value)
    test_utils.assert_trees_all_equal(updates, jnp.zeros_like(grads))


def _shape_dtype_stability(name: str, dtype: Any, *, conjugate: bool) -> None:
    with jax.enable_x64(dtype in (jnp.float64, jnp.complex128)):
        opt = build(name)
        initial_params, _, objective = alias_test._setup_parabola(dtype)

        @jax.jit
        def step(params: Any, state: Any) -> tuple[Any, Any]:
            value, updates = jax.value_and_grad(objective)(params)
            if conjugate:
                updates = jax.tree.map(lambda x: x.conj(), updates)
            # The value's dtype is confused on purpose, as in optax's tests.
            value = value.astype(jnp.float16 if dtype != jnp.float16 else jnp.bfloat16)
            cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
            updates, state = jax.lax.cond(
                cond,
                lambda: opt.update(
                    updates, state, params, value=value, value_fn=objective
                ),
                lambda: (params, state),
            )
            return optax.apply_updates(params, updates), state

        params, state = initial_params, opt.init(initial_params)
        for _ in range(2):
            params, new_state = step(params, state)
            assert jax.tree.leaves(params)[0].dtype == dtype
            cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
            state = jax.lax.cond(cond, lambda: state, lambda: new_state)  # noqa: B023


@optimizers
@pytest.mark.parametrize(
    "dtype",
    [
        jnp.float16,
        jnp.bfloat16,
        jnp.float32,
        jnp.float64,
        jnp.complex64,
        jnp.complex128,
    ],
)
def test_state_shape_dtype_shard_stability(name: str, dtype: Any) -> None:
    """ContribTest.test_state_shape_dtype_shard_stability (real dtypes) and
    AliasTest's (complex dtypes too, with conjugated gradients)."""
    _shape_dtype_stability(name, dtype, conjugate=jnp.iscomplexobj(dtype))


@optimizers
def test_accepts_a_learning_rate_schedule(name: str) -> None:
    """ContribTest.test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such."""
    initial_params, _, obj_fn = contrib_test._setup_parabola(jnp.float32)
    opt_with_schedule = build(name, learning_rate=optax.constant_schedule(1e-3))
    opt_with_lr = build(name, learning_rate=1e-3)
    outs = []
    for opt in (opt_with_schedule, opt_with_lr):
        step = step_fn(opt, obj_fn)
        params, state = initial_params, opt.init(initial_params)
        for _ in range(10):
            params, state = step(params, state)
        outs.append(params)
    test_utils.assert_trees_all_close(outs[0], outs[1])


# ---------------------------------------------------------------------------
# _src/alias_test.py: AliasTest


@optimizers
@pytest.mark.parametrize(
    "target",
    [alias_test._setup_parabola, alias_test._setup_rosenbrock],
    ids=["parabola", "rosenbrock"],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_optimization(name: str, target: Callable, dtype: Any) -> None:
    """AliasTest.test_optimization: 10,000 steps, rtol = atol = 3e-2, complex too.

    optax runs the steps in a Python loop; a ``lax.scan`` runs the same
    steps faster, and the no-recompilation check runs on the jitted step.
    """
    opt = build(name)
    initial_params, final_params, objective = target(dtype)
    step = step_fn(opt, objective, conjugate=True)
    state = optax.tree.map_params(opt, lambda v: v, opt.init(initial_params))

    params, _ = scan(step, initial_params, state, 10_000)
    test_utils.assert_trees_all_close(params, final_params, rtol=3e-2, atol=3e-2)

    jitted = jax.jit(step)
    params, state = jitted(initial_params, opt.init(initial_params))
    with test_utils.log_compilations() as compilation_logs:
        jitted(params, state)
    assert not compilation_logs, 'Optimizer recompiles on second call to "update".'


@pytest.mark.parametrize("params_dtype", ["bfloat16", "float32", "complex64", None])
@pytest.mark.parametrize("state_dtype", ["bfloat16", "float32", "complex64", None])
@pytest.mark.parametrize("opt_name", ["sgd_mom", "adam"])
def test_explicit_dtype(params_dtype: Any, state_dtype: Any, opt_name: str) -> None:
    """AliasTest.test_explicit_dtype: ``accumulator_dtype`` and ``mu_dtype``."""
    if opt_name == "sgd_mom":
        opt = lyapopt.lyapunov_sgd(0.1, momentum=0.9, accumulator_dtype=state_dtype)
        attribute_name = "trace"
    else:
        opt = lyapopt.lyapunov_adam(0.1, mu_dtype=state_dtype)
        attribute_name = "mu"
    params_dtype = jax.dtypes.canonicalize_dtype(params_dtype)
    state = opt.init(jnp.array([0.0, 0.0], dtype=params_dtype))
    expected = (
        params_dtype
        if state_dtype is None
        else jax.dtypes.canonicalize_dtype(state_dtype)
    )
    assert optax.tree.get(state, attribute_name).dtype == expected


STAGES = {
    "scale_by_curvature": lambda: lyapopt.scale_by_curvature(),
    "scale_by_curvature_every2": lambda: lyapopt.scale_by_curvature(curvature_every=2),
    "scale_by_held_out_rate": lambda: lyapopt.scale_by_held_out_rate(2),
    "scale_by_level": lambda: lyapopt.scale_by_level(0.0),
    "skip_loss_spikes": lambda: lyapopt.skip_loss_spikes(spike_window=1),
    "lyapunov_guard": lambda: lyapopt.lyapunov_guard(),
    "stabilize": lambda: lyapopt.stabilize(optax.sgd(0.1)),
    "stabilize_rate": lambda: lyapopt.stabilize(optax.sgd(0.1), rate_every=1),
    "stabilize_spikes": lambda: lyapopt.stabilize(
        optax.sgd(0.1), spike_factor=1.5, spike_window=1
    ),
}
FLOATS = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


@pytest.mark.parametrize("name", sorted(STAGES))
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: jnp.dtype(d).name)
# The loss in float32 and float64 (optax's test also confuses with float16
# and bfloat16; a loss narrower than float32 is promoted by every stage, as
# a float32 one is, so those rows would test nothing more).
@pytest.mark.parametrize(
    "loss_dtype", (jnp.float32, jnp.float64), ids=lambda d: jnp.dtype(d).name
)
def test_linesearch_dtype_stability(name: str, dtype: Any, loss_dtype: Any) -> None:
    # optax's linesearch_test.test_dtype_stability with lyapopt's stages in
    # place of the line search: under lax.cond the updated state must have
    # init's dtypes, whatever the loss's dtype (0.2's curvature cap returned
    # float64 `s_star` and `scale` for a float64 loss).
    with jax.enable_x64(True):
        opt = STAGES[name]()
        x = jnp.array([1.0, 2.0], dtype=dtype)
        state = opt.init(x)

        def value_fn(x):
            return jnp.sum(x.astype(jnp.float32) ** 2).astype(loss_dtype)

        cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
        jax.lax.cond(
            cond,
            lambda x: opt.update(x, state, x, value=1.0, grad=x, value_fn=value_fn)[1],
            lambda x: state,
            x,
        )
