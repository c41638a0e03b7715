"""Names and signatures that mean what they mean in optax; one set of stage options."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt
from lyapopt._options import DEFAULTS, StageOptions

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _adam_direction(*args, **kwargs) -> optax.GradientTransformation:
    return optax.chain(
        optax.scale_by_adam(*args, **kwargs),
        lyapopt.scale_by_logged_learning_rate(1e-2),
    )


def _params(fn) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


# --- one name, one default, one off-switch ---------------------------------


@pytest.mark.parametrize(
    "factory", [lyapopt.stabilize, lyapopt.lyapunov_sgd, lyapopt.lyapunov_adam]
)
def test_every_stage_option_has_the_shared_name_and_default(factory) -> None:
    params = _params(factory)
    for name in StageOptions._fields:
        assert name in params, f"{factory.__name__} lacks `{name}`"
        assert params[name].default == getattr(DEFAULTS, name), name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


@pytest.mark.parametrize(
    ("factory", "names"),
    [
        (lyapopt.scale_by_curvature, ("safety", "curvature_every", "max_scale")),
        (lyapopt.lyapunov_guard, ("tolerance", "max_backtracks", "decrease")),
        (lyapopt.scale_by_held_out_rate, ("rate_shape", "rate_until")),
        (lyapopt.skip_loss_spikes, ("spike_window", "max_skips")),
    ],
)
def test_the_stage_transforms_use_the_same_names_and_defaults(factory, names) -> None:
    params = _params(factory)
    for name in names:
        assert params[name].default == getattr(DEFAULTS, name), name
    assert set(params) <= set(StageOptions._fields)


def test_the_guard_mode_is_called_guard_everywhere() -> None:
    assert _params(lyapopt.lyapunov_guard)["guard"].default == DEFAULTS.guard
    assert "mode" not in _params(lyapopt.lyapunov_guard)
    assert "level" in _params(lyapopt.scale_by_level)
    assert "modulation" in _params(lyapopt.scale_by_gradient_modulation)
    assert "modulation" in _params(lyapopt.lyapunov_sgd)
    for fn in (lyapopt.lyapunov_sgd, lyapopt.lyapunov_adam):
        assert "curvature" not in _params(fn)  # the cap is off by safety=None


def _quadratic_steps(tx, steps: int = 4, lr_scale: float = 1.0):
    """Runs ``tx`` on an ill-conditioned quadratic; returns params and stats."""
    scales = jnp.array([100.0, 1.0, 0.01])

    def f(p):
        return 0.5 * jnp.sum(scales * p**2)

    p = jnp.array([1.0, -2.0, 3.0]) * lr_scale
    state = tx.init(p)
    for _ in range(steps):
        v, g = jax.value_and_grad(f)(p)
        u, state = tx.update(g, state, p, value=v, value_fn=f)
        p = optax.apply_updates(p, u)
    return p, lyapopt.stats(state)


NON_DEFAULT = {
    "spike_factor": 1.0,
    "spike_window": 2,
    "max_skips": 1,
    "rate_every": 2,
    "rate_until": 3,
    "rate_shape": optax.linear_schedule(1.0, 0.5, 4),
    "safety": 0.5,
    "curvature_every": 3,
    "max_scale": 2.0,
    "level": 0.5,
    "guard": "skip",
    "tolerance": 10.0,
    "max_backtracks": 1,
    "decrease": 0.0,
}


# axis_name needs a mapped axis: tests/test_sharding.py runs it under pmap.
@pytest.mark.slow
@pytest.mark.parametrize(
    "option", [f for f in StageOptions._fields if f != "axis_name"]
)
def test_lyapunov_adam_forwards_every_stage_option_to_stabilize(option: str) -> None:
    # A shape multiplies a measured rate: it goes with `rate_every`.
    options = {option: NON_DEFAULT[option]}
    if option in ("rate_shape", "rate_until"):
        options["rate_every"] = NON_DEFAULT["rate_every"]
    ours = _quadratic_steps(lyapopt.lyapunov_adam(1.0, **options))[0]
    direct = _quadratic_steps(
        lyapopt.stabilize(
            optax.chain(
                optax.scale_by_adam(), lyapopt.scale_by_logged_learning_rate(1.0)
            ),
            **options,
        )
    )[0]
    np.testing.assert_array_equal(ours, direct)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["tolerance", "max_backtracks", "decrease"])
def test_the_guard_options_change_the_optimizers_steps(option: str) -> None:
    # 0.1's optimizers did not forward tolerance and max_backtracks at all.
    for factory in (lyapopt.lyapunov_sgd, lyapopt.lyapunov_adam):
        base = _quadratic_steps(factory(1.0, safety=None), lr_scale=1.0)
        changed = _quadratic_steps(
            factory(1.0, safety=None, **{option: NON_DEFAULT[option]}), lr_scale=1.0
        )
        assert not np.array_equal(base[0], changed[0]), (factory.__name__, option)


# --- positional arguments as optax has them ---------------------------------


@pytest.mark.slow
def test_lyapunov_adam_takes_optax_adams_positional_arguments() -> None:
    names = list(_params(optax.adam))[:6]
    assert list(_params(lyapopt.lyapunov_adam))[:6] == names
    ours = _quadratic_steps(lyapopt.lyapunov_adam(1e-2, 0.5, 0.9, 1e-3))[0]
    direct = _quadratic_steps(
        lyapopt.stabilize(
            optax.chain(
                optax.scale_by_adam(0.5, 0.9, 1e-3),
                lyapopt.scale_by_logged_learning_rate(1e-2),
            )
        )
    )[0]
    np.testing.assert_array_equal(ours, direct)


@pytest.mark.slow
def test_lyapunov_sgd_takes_optax_sgds_positional_arguments() -> None:
    assert list(_params(lyapopt.lyapunov_sgd))[:4] == list(_params(optax.sgd))[:4]
    with_momentum = _quadratic_steps(lyapopt.lyapunov_sgd(0.1, 0.9, True))[0]
    keyword = _quadratic_steps(lyapopt.lyapunov_sgd(0.1, momentum=0.9, nesterov=True))[
        0
    ]
    without = _quadratic_steps(lyapopt.lyapunov_sgd(0.1))[0]
    np.testing.assert_array_equal(with_momentum, keyword)
    assert not np.array_equal(with_momentum, without)


# --- no optax name with another meaning -------------------------------------


def test_no_optax_name_means_something_else_here() -> None:
    schedule = _params(lyapopt.exponential_schedule)
    assert "decay_rate" not in schedule and "min_value" not in schedule
    assert "end_value" in schedule  # optax's name for the floor, same meaning
    for fn in (lyapopt.lyapunov_sgd, lyapopt.lyapunov_adam):
        assert "decay_rate" not in _params(fn)
    # 0.1's lyapopt.scale_by_learning_rate had optax's name, not its signature.
    assert not hasattr(lyapopt, "scale_by_learning_rate")


@pytest.mark.parametrize("rate", [0.3, optax.linear_schedule(1.0, 0.1, 5)])
@pytest.mark.parametrize("flip_sign", [True, False])
def test_scale_by_logged_learning_rate_is_optaxs_transform_plus_its_rate(
    rate, flip_sign: bool
) -> None:
    ours = lyapopt.scale_by_logged_learning_rate(rate, flip_sign=flip_sign)
    theirs = optax.scale_by_learning_rate(rate, flip_sign=flip_sign)
    g = jnp.array([1.0, -2.0])
    s_ours, s_theirs = ours.init(g), theirs.init(g)
    for t in range(6):
        u_ours, s_ours = ours.update(g, s_ours)
        u_theirs, s_theirs = theirs.update(g, s_theirs)
        np.testing.assert_allclose(u_ours, u_theirs, rtol=1e-6)
        expected = rate(t) if callable(rate) else rate
        np.testing.assert_allclose(s_ours.learning_rate, expected, rtol=1e-6)


def test_scale_by_x_states_are_named_scale_by_x_state() -> None:
    params = jnp.zeros(2)
    for name in dir(lyapopt):
        if not name.startswith("scale_by_"):
            continue
        factory = getattr(lyapopt, name)
        tx = factory(0.0) if name == "scale_by_level" else factory(1.0)
        expected = "".join(w.capitalize() for w in name.split("_")) + "State"
        assert type(tx.init(params)).__name__ == expected
        assert getattr(lyapopt, expected) is type(tx.init(params))


# --- stats keys that do not depend on the configuration -----------------------


def test_stats_keys_do_not_depend_on_the_order_of_the_chain() -> None:
    for tx in (
        lyapopt.lyapunov_sgd(),
        lyapopt.lyapunov_sgd(momentum=0.9, level=0.0),
        lyapopt.lyapunov_adam(),
        lyapopt.stabilize(
            optax.chain(lyapopt.scale_by_gradient_modulation(), optax.sgd(1))
        ),
    ):
        keys = set(lyapopt.stats(tx.init(jnp.zeros(2))))
        assert not any(re.search(r"_\d+$", k) for k in keys), keys
        assert "nonfinite_gradients" in keys


def test_a_nan_gradient_is_counted_once_in_nonfinite_gradients() -> None:
    tx = lyapopt.lyapunov_sgd()
    p = jnp.ones(2)
    f = lambda q: jnp.sum(q**2)  # noqa: E731
    _, state = tx.update(jnp.array([jnp.nan, 1.0]), tx.init(p), p, value_fn=f)
    assert int(lyapopt.stats(state)["nonfinite_gradients"]) == 1


# --- value_fn receives the extra arguments it names --------------------------


@pytest.mark.slow
def test_value_fn_gets_the_extra_arguments_it_names_as_in_optaxs_linesearch() -> None:
    # The calling pattern of optax.scale_by_backtracking_linesearch's docstring:
    # value_fn(params, x, y), with x and y passed to update as keywords.
    def fn(w, x, y):
        return jnp.mean((x @ w - y) ** 2)

    x = jax.random.normal(jax.random.key(0), (16, 3))
    y = x @ jnp.array([1.0, -1.0, 2.0])
    w = jnp.zeros(3)
    for tx in (lyapopt.lyapunov_adam(0.5), lyapopt.stabilize(optax.sgd(10.0))):
        state = tx.init(w)
        p = w
        for _ in range(30):
            value, grad = jax.value_and_grad(fn)(p, x, y)
            updates, state = tx.update(
                grad,
                state,
                p,
                value=value,
                grad=grad,
                value_fn=fn,
                x=x,
                y=y,
                ignored=1,
            )
            p = optax.apply_updates(p, updates)
        assert float(fn(p, x, y)) < 1e-2 * float(fn(w, x, y))
        assert int(lyapopt.stats(state)["value_mismatches"]) == 0


# --- public optax only; namespaces ------------------------------------------


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_the_library_imports_only_public_optax() -> None:
    for path in (ROOT / "lyapopt").rglob("*.py"):
        private = [m for m in _imports(path) if m.startswith("optax._")]
        assert not private, (path.name, private)


def test_the_benchmarks_do_not_import_the_demo() -> None:
    for path in (ROOT / "benchmarks").rglob("*.py"):
        assert "lyapopt.demo" not in _imports(path), path.name


def test_diagnostics_and_flax_helpers_live_in_subpackages() -> None:
    for name in ("hvp", "sharpness", "segment_profile", "loss_slice", "path_checks"):
        assert hasattr(lyapopt.diagnostics, name) and not hasattr(lyapopt, name)
    for name in ("nnx_value_fn", "apply_gradients"):
        assert hasattr(lyapopt.flax, name) and not hasattr(lyapopt, name)


def test_import_lyapopt_imports_neither_scipy_nor_flax() -> None:
    code = "import sys, lyapopt; print('scipy' in sys.modules, 'flax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]
