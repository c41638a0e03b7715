"""Smoke test of an installed lyapopt wheel; `.ci/run` runs it from a temp dir.

Checks what a user of the wheel gets, not the repository's copy: the package
imports from site-packages, ships its `py.typed` marker, and takes one
stabilised step on a quadratic.
"""

import importlib.metadata
import importlib.resources
import pathlib

import jax
import jax.numpy as jnp
import optax

import lyapopt

where = pathlib.Path(lyapopt.__file__).resolve()
assert "site-packages" in where.parts, f"lyapopt imported from {where}, not a wheel"
assert importlib.resources.files("lyapopt").joinpath("py.typed").is_file(), (
    "py.typed is missing from the installed package"
)
assert lyapopt.__version__ == importlib.metadata.version("lyapopt"), (
    lyapopt.__version__,
    importlib.metadata.version("lyapopt"),
)


def loss(x):
    return jnp.sum((x - 1.0) ** 2)


# Ten times too large a rate: the curvature cap takes the step to the minimum.
tx = lyapopt.stabilize(optax.sgd(10.0))
x = jnp.zeros(3)
state = tx.init(x)
value, grad = jax.value_and_grad(loss)(x)
updates, state = tx.update(grad, state, x, value=value, value_fn=loss)
x = optax.apply_updates(x, updates)
after = float(loss(x))
assert after < 1e-6 < float(value), (float(value), after)
stats = lyapopt.stats(state)
assert float(stats["guard_scale"]) == 1.0, stats
print(
    f"lyapopt {lyapopt.__version__} wheel OK: {where.parent}; loss {value} -> {after}"
)
