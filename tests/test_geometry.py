"""level_set_components, loss_slice, the slice directions and path_checks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lyapopt


def _grid(
    f: Any, xs: tuple[float, float, int], ys: tuple[float, float, int] | None = None
) -> np.ndarray:
    x = np.linspace(*xs)
    y = np.linspace(*(ys or xs))
    return f(*np.meshgrid(x, y))


def himmelblau(x: Any, y: Any) -> Any:
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def rosenbrock(x: Any, y: Any) -> Any:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


# --------------------------------------------------------------------------
# level_set_components


def test_the_superlevel_set_outside_an_annulus_has_two_components() -> None:
    # (r - 1)^2 >= 0.04 holds for r <= 0.8 (a disk) and r >= 1.2 (the outside);
    # (r - 1)^2 <= 0.04 is the annulus between them.
    values = _grid(lambda x, y: (np.hypot(x, y) - 1) ** 2, (-2, 2, 81))
    got = lyapopt.diagnostics.level_set_components(values, 0.04)
    assert int(got.superlevel) == 2
    assert int(got.sublevel) == 1


def test_two_bumps_split_above_their_saddle_and_join_below_it() -> None:
    # exp(-|p - e1|^2) + exp(-|p + e1|^2): saddle at 0 with value 2/e = 0.7358.
    def bumps(x: Any, y: Any) -> Any:
        return np.exp(-((x - 1) ** 2 + y**2)) + np.exp(-((x + 1) ** 2 + y**2))

    values = _grid(bumps, (-3, 3, 121))
    got = lyapopt.diagnostics.level_set_components(values, [0.75, 0.72])
    np.testing.assert_array_equal(got.superlevel, [2, 1])
    np.testing.assert_array_equal(got.sublevel, [1, 1])


def test_himmelblau_counts_follow_its_critical_values() -> None:
    # Minima 0 (four), saddles 13.31, 67.72, 104.02, 178.34, local max 181.62.
    values = _grid(himmelblau, (-6, 6, 241))
    got = lyapopt.diagnostics.level_set_components(
        values, [1, 20, 80, 120, 180], coercive=True
    )
    np.testing.assert_array_equal(got.sublevel, [4, 3, 2, 1, 1])
    # Above the saddle at 178.34 the top around the local maximum is an island.
    np.testing.assert_array_equal(got.superlevel, [1, 1, 1, 1, 2])


def test_a_window_splits_a_set_that_coercive_joins_around_the_outside() -> None:
    # Rosenbrock's valley at level 50 crosses the window [-2,2]x[-1,3] from the
    # top edge to the top edge; in the plane {L >= 50} is connected.
    values = _grid(rosenbrock, (-2, 2, 161), (-1, 3, 161))
    assert int(lyapopt.diagnostics.level_set_components(values, 50.0).superlevel) == 2
    joined = lyapopt.diagnostics.level_set_components(values, 50.0, coercive=True)
    assert int(joined.superlevel) == 1
    assert int(joined.sublevel) == 1


def test_connectivity_two_joins_diagonal_neighbours() -> None:
    diagonal = np.eye(3)
    assert int(lyapopt.diagnostics.level_set_components(diagonal, 0.5).superlevel) == 3
    got = lyapopt.diagnostics.level_set_components(diagonal, 0.5, connectivity=2)
    assert int(got.superlevel) == 1


def test_levels_outside_the_range_give_empty_sets_and_nan_is_in_neither() -> None:
    values = np.array([[0.0, 1.0], [np.nan, 2.0]])
    got = lyapopt.diagnostics.level_set_components(values, [[3.0, -1.0]])
    assert got.superlevel.shape == (1, 2)
    np.testing.assert_array_equal(got.superlevel, [[0, 1]])
    np.testing.assert_array_equal(got.sublevel, [[1, 0]])
    # With the NaN corner out, {>= 0.5} is the two right-hand points.
    assert int(lyapopt.diagnostics.level_set_components(values, 0.5).superlevel) == 1
    assert int(lyapopt.diagnostics.level_set_components(values, 1.5).sublevel) == 1


def test_a_connectivity_beyond_the_rank_is_refused() -> None:
    with pytest.raises(ValueError, match=r"level_set_components: `connectivity`"):
        lyapopt.diagnostics.level_set_components(np.zeros((3, 3)), 0.0, connectivity=3)


# --------------------------------------------------------------------------
# loss_slice and its directions

A = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 4.0]])


def _quadratic_tree(p: dict[str, jax.Array]) -> jax.Array:
    x = jnp.concatenate([p["w"], p["b"]])
    return 0.5 * x @ A @ x


@pytest.mark.parametrize("batch_size", [None, 7])
def test_the_slice_of_a_quadratic_is_the_quadratic_in_alpha_and_beta(
    batch_size: int | None,
) -> None:
    theta = {"w": jnp.array([1.0, -1.0]), "b": jnp.array([0.5])}
    d1 = {"w": jnp.array([1.0, 0.0]), "b": jnp.array([1.0])}
    d2 = {"w": jnp.array([0.0, 2.0]), "b": jnp.array([0.0])}
    got = lyapopt.diagnostics.loss_slice(
        _quadratic_tree,
        theta,
        (d1, d2),
        extent=(-1.0, 2.0, -0.5, 0.5),
        num=(4, 3),
        batch_size=batch_size,
    )
    np.testing.assert_allclose(got.alphas, [-1.0, 0.0, 1.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(got.betas, [-0.5, 0.0, 0.5], atol=1e-6)
    assert got.values.shape == (3, 4)
    t, u, v = (np.concatenate([p["w"], p["b"]]) for p in (theta, d1, d2))
    a = np.asarray(A)
    for i, beta in enumerate(got.betas):
        for j, alpha in enumerate(got.alphas):
            x = t + float(alpha) * u + float(beta) * v
            np.testing.assert_allclose(got.values[i, j], 0.5 * x @ a @ x, rtol=1e-5)


def test_unit_directions_at_zero_sample_a_2d_function_on_its_grid() -> None:
    f = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2  # noqa: E731
    got = lyapopt.diagnostics.loss_slice(
        f, jnp.zeros(2), (jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])), extent=2.0
    )
    expected = _grid(rosenbrock, (-2, 2, 41))
    np.testing.assert_allclose(got.values, expected, rtol=1e-5, atol=1e-4)


def test_filter_normalised_directions_match_each_filters_norm() -> None:
    key = jax.random.key(0)
    params = {
        "kernel": jax.random.normal(key, (5, 3)) * jnp.array([0.1, 1.0, 10.0]),
        "conv": jax.random.normal(jax.random.key(1), (2, 2, 4, 6)),
        "bias": jnp.ones(3),
    }
    d1, d2 = lyapopt.diagnostics.filter_normalized_directions(jax.random.key(7), params)
    for d in (d1, d2):
        for name, axes in (("kernel", (0,)), ("conv", (0, 1, 2))):
            np.testing.assert_allclose(
                jnp.sqrt(jnp.sum(d[name] ** 2, axis=axes)),
                jnp.sqrt(jnp.sum(params[name] ** 2, axis=axes)),
                rtol=1e-5,
            )
        np.testing.assert_array_equal(d["bias"], jnp.zeros(3))
    assert float(jnp.abs(d1["kernel"] - d2["kernel"]).max()) > 0.1
    _, kept = lyapopt.diagnostics.filter_normalized_directions(
        jax.random.key(7), params, ignore_1d=False
    )
    np.testing.assert_array_equal(kept["bias"], params["bias"])


def _tree(x: jax.Array) -> dict[str, jax.Array]:
    return {"a": x[..., :2], "b": x[..., 2:].reshape(*x.shape[:-1], 2, 2)}


def test_pca_of_a_planar_trajectory_recovers_its_plane() -> None:
    u = jnp.array([1.0, 1.0, 0.0, 0.0, 0.0, 0.0]) / jnp.sqrt(2.0)
    v = jnp.array([0.0, 0.0, 0.0, 0.6, 0.8, 0.0])
    c = jnp.arange(6.0)
    t = jnp.linspace(0.0, 1.0, 9)[:, None]
    flat = c + 3.0 * (1 - t) * u + 2.0 * t * (1 - t) * v  # ends at c
    got = lyapopt.diagnostics.pca_directions(_tree(flat))
    np.testing.assert_allclose(
        jnp.concatenate([got.center["a"], got.center["b"].ravel()]), c
    )
    d1, d2 = (jnp.concatenate([d["a"], d["b"].ravel()]) for d in got.directions)
    for w in (u, v):  # u and v lie in the plane of d1 and d2
        np.testing.assert_allclose((d1 @ w) ** 2 + (d2 @ w) ** 2, 1.0, rtol=1e-5)
    np.testing.assert_allclose(d1 @ d2, 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(got.explained_variance), 1.0, rtol=1e-5)
    assert float(got.explained_variance[0]) > float(got.explained_variance[1])
    rebuilt = c + got.coordinates[:, :1] * d1 + got.coordinates[:, 1:] * d2
    np.testing.assert_allclose(rebuilt, flat, atol=1e-5)


def test_pca_of_a_straight_run_is_one_direction_pointing_back_to_the_start() -> None:
    start, end = jnp.array([4.0, 0.0, 3.0, 0.0, 0.0, 0.0]), jnp.zeros(6)
    flat = start + jnp.linspace(0.0, 1.0, 5)[:, None] * (end - start)
    got = lyapopt.diagnostics.pca_directions(_tree(flat))
    np.testing.assert_allclose(got.explained_variance, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(got.coordinates[:, 0], [5.0, 3.75, 2.5, 1.25, 0.0])
    np.testing.assert_allclose(got.coordinates[:, 1], 0.0, atol=1e-5)


@pytest.mark.parametrize("mirror", [1.0, -1.0])
def test_pca_signs_each_direction_so_its_largest_coordinate_is_positive(
    mirror: float,
) -> None:
    t = jnp.linspace(0.0, 1.0, 7)[:, None]
    u, v = jnp.eye(6)[1], jnp.eye(6)[4]
    flat = mirror * (3.0 * (1 - t) * u - 2.0 * t * (1 - t) * v)
    coordinates = lyapopt.diagnostics.pca_directions(_tree(flat)).coordinates
    largest = coordinates[jnp.argmax(jnp.abs(coordinates), axis=0), jnp.arange(2)]
    assert bool(jnp.all(largest > 0)), coordinates


def test_pca_refuses_a_list_of_snapshots() -> None:
    with pytest.raises(ValueError, match=r"pca_directions: `trajectory` must be"):
        lyapopt.diagnostics.pca_directions([jnp.zeros(3), jnp.ones(2)])


# --------------------------------------------------------------------------
# path_checks

STIFF = lambda x: 5.0 * jnp.sum(x**2)  # noqa: E731  lambda_max = 10


def _gradient_descent(loss: Any, x0: jax.Array, eta: float, steps: int) -> jax.Array:
    xs = [x0]
    for _ in range(steps):
        xs.append(xs[-1] - eta * jax.grad(loss)(xs[-1]))
    return jnp.stack(xs)


@pytest.mark.parametrize(
    ("eta", "below_start", "monotone", "stable"),
    [
        (0.05, True, True, True),  # x -> 0.5 x: straight down
        (0.15, True, False, True),  # x -> -0.5 x: over the minimum, still lower
        (0.25, False, False, False),  # x -> -1.5 x: past 2/lambda, diverges
    ],
)
def test_gradient_descent_on_a_quadratic_is_checked_against_2_over_eta(
    eta: float, below_start: bool, monotone: bool, stable: bool
) -> None:
    trajectory = _gradient_descent(STIFF, jnp.array([1.0, 0.0]), eta, 4)
    got = lyapopt.diagnostics.path_checks(STIFF, trajectory, eta, key=jax.random.key(0))
    assert got.profiles.shape == (4, 11)
    np.testing.assert_allclose(got.sharpness, 10.0, rtol=1e-4)
    np.testing.assert_allclose(got.eta_sharpness, 10.0 * eta, rtol=1e-4)
    np.testing.assert_array_equal(got.below_start, below_start)
    np.testing.assert_array_equal(got.monotone, monotone)
    np.testing.assert_array_equal(got.stable, stable)
    np.testing.assert_allclose(got.start, jax.vmap(STIFF)(trajectory[:-1]), rtol=1e-6)
    np.testing.assert_allclose(got.end, jax.vmap(STIFF)(trajectory[1:]), rtol=1e-6)


def test_a_step_over_a_hump_fails_even_though_it_ends_lower() -> None:
    well = lambda x: (x[0] ** 2 - 1) ** 2  # noqa: E731  hump of height 1 at 0
    trajectory = jnp.array([[-1.5], [-1.05], [0.95]])
    got = lyapopt.diagnostics.path_checks(well, trajectory, 0.01, key=jax.random.key(0))
    np.testing.assert_array_equal(got.below_start, [True, False])
    np.testing.assert_array_equal(got.monotone, [True, False])
    assert float(got.end[1]) < float(got.start[1])  # it does end lower
    assert float(got.segment_max[1]) > 0.99  # the sample at x = -0.05


def test_tolerance_lets_a_small_rise_pass() -> None:
    trajectory = jnp.array([[1.0, 0.0], [-1.02, 0.0]])  # 5.0 -> 5.202
    strict = lyapopt.diagnostics.path_checks(
        STIFF, trajectory, 0.1, key=jax.random.key(0)
    )
    loose = lyapopt.diagnostics.path_checks(
        STIFF, trajectory, 0.1, key=jax.random.key(0), tolerance=0.25
    )
    assert not bool(strict.below_start[0])
    assert bool(loose.below_start[0])


def test_per_step_learning_rates_are_checked_step_by_step() -> None:
    trajectory = _gradient_descent(STIFF, jnp.array([1.0, 1.0]), 0.05, 3)
    got = lyapopt.diagnostics.path_checks(
        STIFF, trajectory, jnp.array([0.1, 0.19, 0.21]), key=jax.random.key(1)
    )
    np.testing.assert_array_equal(got.stable, [True, True, False])
    with pytest.raises(ValueError, match=r"one entry per step, shape \(3,\)"):
        lyapopt.diagnostics.path_checks(
            STIFF, trajectory, jnp.ones(4), key=jax.random.key(1)
        )


def test_one_snapshot_is_not_a_path() -> None:
    with pytest.raises(ValueError, match=r"path_checks: `trajectory` needs"):
        lyapopt.diagnostics.path_checks(
            STIFF, jnp.ones((1, 2)), 0.1, key=jax.random.key(0)
        )


def test_lyapunov_sgd_keeps_a_descent_path_where_sgd_at_the_same_rate_does_not() -> (
    None
):
    loss = lambda x: 0.5 * jnp.sum(jnp.array([1.0, 10.0]) * x**2)  # noqa: E731

    def trajectory(tx: optax.GradientTransformation) -> jax.Array:
        def body(carry: Any, _: None) -> tuple[Any, jax.Array]:
            x, s = carry
            value, g = jax.value_and_grad(loss)(x)
            u, s = tx.update(g, s, x, value=value, value_fn=loss)
            return (optax.apply_updates(x, u), s), x

        x0 = jnp.array([1.0, 1.0])
        (x, _), xs = jax.lax.scan(body, (x0, tx.init(x0)), length=20)
        return jnp.concatenate([xs, x[None]])

    eta = 0.3  # 0.3 * 10 = 3 > 2
    sgd = lyapopt.diagnostics.path_checks(
        loss, trajectory(optax.sgd(eta)), eta, key=jax.random.key(0)
    )
    assert not bool(jnp.any(sgd.below_start))
    assert not bool(jnp.any(sgd.stable))
    ours = lyapopt.diagnostics.path_checks(
        loss,
        trajectory(lyapopt.lyapunov_sgd(eta, decay_constant=0.0, modulation=None)),
        eta,
        key=jax.random.key(0),
    )
    assert bool(jnp.all(ours.below_start))
    assert bool(jnp.all(ours.monotone))
