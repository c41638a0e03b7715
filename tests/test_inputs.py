"""Every form of input JAX users pass: shapes only, donated state, complex
parameters, and named errors for the inputs that cannot work."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt
from tests.helpers import make_step

OPTIMIZERS = {
    "lyapunov_adam": lambda: lyapopt.lyapunov_adam(),
    "lyapunov_sgd": lambda: lyapopt.lyapunov_sgd(),
    "lyapunov_sgd_first_order": lambda: lyapopt.lyapunov_sgd(safety=None, guard=None),
    "stabilize_adam": lambda: lyapopt.stabilize(optax.adam(1e-2)),
    "stabilize_sgd_momentum": lambda: lyapopt.stabilize(optax.sgd(0.1, momentum=0.9)),
    "lyapunov_adam_every_10": lambda: lyapopt.lyapunov_adam(curvature_every=10),
    "level_and_record": lambda: lyapopt.lyapunov_sgd(level=0.0, guard="record"),
}
optimizers = pytest.mark.parametrize("name", OPTIMIZERS)

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2, jnp.bfloat16)}


def _loss(p: Any) -> jax.Array:
    x = jnp.arange(3.0)
    return jnp.sum((x @ p["w"] + p["b"].astype(jnp.float32) - 1.0) ** 2)


@optimizers
def test_init_accepts_shape_dtype_structs(name: str) -> None:
    tx = OPTIMIZERS[name]()
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), PARAMS)
    real = tx.init(PARAMS)
    for abstract in (jax.eval_shape(tx.init, PARAMS), tx.init(shapes)):
        assert jax.tree.structure(abstract) == jax.tree.structure(real)
        for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(real), strict=True):
            assert (a.shape, a.dtype) == (r.shape, r.dtype)


@pytest.mark.slow
@optimizers
def test_the_optimizer_state_can_be_donated(name: str) -> None:
    # 0.1 shared one zero array between three state fields: "Attempt to
    # donate the same buffer twice".
    tx = OPTIMIZERS[name]()
    step = jax.jit(make_step(tx, _loss), donate_argnums=(0, 1))
    params = jax.tree.map(jnp.copy, PARAMS)
    state = tx.init(params)
    leaves = jax.tree.leaves(state)
    assert len({id(x) for x in leaves}) == len(leaves)
    for _ in range(3):
        old = jax.tree.leaves((params, state))
        params, state, _ = step(params, state)
        # XLA reuses every donated array buffer; it may pass over a scalar.
        assert all(x.is_deleted() for x in old if x.size > 1)
    assert float(_loss(params)) < float(_loss(PARAMS))


# --- complex parameters ------------------------------------------------------


def _complex_problem():
    target = jnp.array([1.0 + 2.0j, -1.0 + 0.5j, 3.0 - 1.0j], jnp.complex64)
    weights = jnp.array([1.0, 10.0, 100.0])

    def loss(z: jax.Array) -> jax.Array:
        return jnp.sum(weights * jnp.abs(z - target) ** 2)

    def real_loss(xy: tuple[jax.Array, jax.Array]) -> jax.Array:
        return loss(xy[0] + 1j * xy[1])

    return loss, real_loss


@pytest.mark.slow
@pytest.mark.parametrize(
    "factory",
    [
        lambda: lyapopt.stabilize(optax.sgd(1.0)),
        lambda: lyapopt.lyapunov_sgd(modulation=0.5, level=0.0),
        lambda: lyapopt.stabilize(optax.sgd(0.3, momentum=0.5), curvature_every=2),
    ],
    # Not Adam: its second moment of a complex coordinate is |g|^2, one number
    # for the real and the imaginary part, by optax's definition.
    ids=["stabilize_sgd", "lyapunov_sgd_level", "stabilize_momentum_every_2"],
)
def test_complex_parameters_step_as_their_real_and_imaginary_parts(factory) -> None:
    # The same optimizer on z = x + iy (with the conjugated gradient, optax's
    # convention for complex descent) and on the real pair (x, y) must take
    # the same steps: same inner products, norms and cap.
    loss, real_loss = _complex_problem()
    tx = factory()
    z = jnp.zeros(3, jnp.complex64)
    xy = (jnp.zeros(3), jnp.zeros(3))
    sz, sxy = tx.init(z), tx.init(xy)
    for _ in range(5):
        vz, gz = jax.value_and_grad(loss)(z)
        uz, sz = tx.update(jnp.conj(gz), sz, z, value=vz, value_fn=loss)
        z = optax.apply_updates(z, uz)
        vxy, gxy = jax.value_and_grad(real_loss)(xy)
        uxy, sxy = tx.update(gxy, sxy, xy, value=vxy, value_fn=real_loss)
        xy = optax.apply_updates(xy, uxy)
        np.testing.assert_allclose(z.real, xy[0], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(z.imag, xy[1], rtol=2e-5, atol=2e-6)
    assert float(loss(z)) < 0.5 * float(loss(jnp.zeros(3, jnp.complex64)))
    stats = lyapopt.stats(sz)
    for key in ("violations", "guard_nonfinite", "curvature_nonfinite"):
        assert int(stats.get(key, 0)) == 0, key


# --- named errors ------------------------------------------------------------


def _update(tx, grads, params, **extra):
    return tx.update(grads, tx.init(params), params, **extra)


def test_an_empty_parameter_tree_is_a_named_error() -> None:
    with pytest.raises(ValueError, match=r"`params` has no leaves.*Pass the tree"):
        _update(lyapopt.lyapunov_adam(), {}, {}, value_fn=lambda p: 0.0)


def test_a_value_of_the_wrong_shape_is_a_named_error() -> None:
    p = jnp.ones(3)
    with pytest.raises(ValueError, match=r"`value` is an array of shape \(3,\).*mean"):
        _update(
            lyapopt.lyapunov_adam(), p, p, value=p, value_fn=lambda q: jnp.sum(q**2)
        )


@pytest.mark.parametrize(
    "aux", [{"accuracy": jnp.ones(())}, jnp.ones(4)], ids=["dict", "array"]
)
def test_a_value_fn_returning_loss_and_aux_is_a_named_error(aux) -> None:
    p = jnp.ones(3)
    with pytest.raises(TypeError, match=r"`value_fn` returned a tuple.*has_aux"):
        _update(lyapopt.lyapunov_sgd(), p, p, value_fn=lambda q: (jnp.sum(q**2), aux))


def test_an_integer_loss_is_a_named_error() -> None:
    p = jnp.ones(3)
    with pytest.raises(TypeError, match=r"loss of dtype int32.*floating"):
        _update(
            lyapopt.lyapunov_adam(),
            p,
            p,
            value_fn=lambda q: jnp.sum(q).astype(jnp.int32),
        )


def test_max_backtracks_beyond_int32_is_a_named_error() -> None:
    with pytest.raises(ValueError, match=r"`max_backtracks` must be .*<= 2.14748e\+09"):
        lyapopt.lyapunov_adam(max_backtracks=2**31)


def test_bfloat16_parameters_under_inject_hyperparams_name_hyperparam_dtype() -> None:
    p = jnp.ones(3, jnp.bfloat16)
    injected = optax.inject_hyperparams(lyapopt.lyapunov_adam, static_args=("guard",))
    with pytest.raises(ValueError, match=r"hyperparam_dtype=jnp.float32"):
        injected(learning_rate=0.1).init(p)  # b2 = 0.999 rounds to 1 in bfloat16
    tx = optax.inject_hyperparams(
        lyapopt.lyapunov_adam, static_args=("guard",), hyperparam_dtype=jnp.float32
    )(learning_rate=0.1)

    def f(q):
        return jnp.sum(q.astype(jnp.float32) ** 2)

    state = tx.init(p)
    step = jax.jit(make_step(tx, f))
    new_p, new_state, _ = step(p, state)
    new_p, new_state, _ = step(new_p, new_state)
    assert new_p.dtype == jnp.bfloat16
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
        lambda x: x.dtype, state
    )
    assert float(f(new_p)) < float(f(p))
