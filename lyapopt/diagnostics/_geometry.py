r"""The geometry of the loss around a run: level sets, 2-D slices, path checks.

The paper (Chaudhary et al., JAIR 2025) argues geometrically: the Lyapunov
function ``V = L`` decreases monotonically along the training path, the step
adapts to the curvature, and the super-level sets
``S_lambda = {theta : L(theta) >= lambda}`` stay connected along the path.
lyapopt enforces none of the geometry; these functions measure it, so that a
user can look:

- :func:`level_set_components` counts the connected components of the
  super-level set ``{L >= lambda}`` and of the sub-level set
  ``{L <= lambda}`` of a function sampled on a grid (``scipy.ndimage.label``);
- :func:`loss_slice` samples the loss on a 2-D plane through the parameters,
  spanned by two directions: random and filter-normalised
  (:func:`filter_normalized_directions`, after Li et al., 2018), or the top
  two principal directions of a trajectory (:func:`pca_directions`);
- :func:`path_checks` checks each step of a recorded run: the loss along the
  step's segment stays at or below its start (a descent path, via
  :func:`lyapopt.diagnostics.segment_profile`), and ``eta * lambda_max < 2`` (the edge of
  stability, via :func:`lyapopt.diagnostics.sharpness`).

The definitions of the level sets are the paper's; the grid counts, the
slices and the checks are ours (the slices and their normalisation follow
Li, Xu, Taylor, Studer and Goldstein, "Visualizing the Loss Landscape of
Neural Nets", NeurIPS 2018).

A count on a grid is a count in a window: a set that is connected through
the outside of the window can fall apart inside it. For a loss that grows
without bound away from the window (a coercive loss: Rosenbrock, Himmelblau,
any loss with weight decay), pass ``coercive=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from lyapopt import _line
from lyapopt._checks import check_choice, check_number
from lyapopt.diagnostics._hessian import segment_profile, sharpness

# --------------------------------------------------------------------------
# Level sets on a grid.


class LevelSetComponents(NamedTuple):
    """Numbers of connected components, with the shape of the levels asked for."""

    superlevel: np.ndarray  # components of {values >= level}
    sublevel: np.ndarray  # components of {values <= level}


def level_set_components(
    values: np.typing.ArrayLike,
    level: np.typing.ArrayLike,
    *,
    connectivity: int = 1,
    coercive: bool = False,
) -> LevelSetComponents:
    r"""The connected components of the super- and sub-level sets on a grid.

    For samples ``values`` of a function ``L`` on a regular grid and a level
    ``lambda``, counts the connected components of

    .. math::
      S_\lambda = \{x : L(x) \ge \lambda\} \quad\text{and}\quad
      \{x : L(x) \le \lambda\}

    among the grid points, with ``scipy.ndimage.label``. The super-level set
    ``S_lambda`` is the paper's; the sub-level set is its mirror, whose
    components are the basins at that level (a function with four separate
    minima, like Himmelblau's, has four at a low level). A NaN sample is in
    neither set.

    Args:
      values: the samples, an array of any rank (2-D for a plane, e.g. the
        ``values`` of :func:`loss_slice`).
      level: ``lambda``, a scalar or an array of levels (e.g. the losses
        along a run): each is counted on its own.
      connectivity: which grid neighbours touch, as in
        ``scipy.ndimage.generate_binary_structure``: 1 (the default) joins
        points that differ in one index (4 neighbours in 2-D); ``values.ndim``
        adds the diagonals (8 neighbours in 2-D).
      coercive: take the function to be above every level outside the grid
        (for a loss that grows without bound), so that every part of the
        super-level set that reaches the edge of the grid is one component.
        With ``False`` (the default) the count is that of the window, where a
        set connected only around the outside counts as several.

    Returns:
      ``LevelSetComponents(superlevel, sublevel)``: integer arrays with the
      shape of ``level`` (0-d for a scalar; ``int(...)`` gives the number).

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

    Examples:
      Two peaks, 2 and 3, rise above 1.5; three dips, the 0s and the 1,
      lie below it:

      >>> import numpy as np
      >>> from lyapopt.diagnostics import level_set_components
      >>> values = np.array([0.0, 2.0, 1.0, 3.0, 0.0])
      >>> counts = level_set_components(values, 1.5)
      >>> int(counts.superlevel), int(counts.sublevel)
      (2, 3)
      >>> level_set_components(values, [0.5, 2.5]).superlevel
      array([1, 1])
    """
    where = "level_set_components"
    grid = np.asarray(values, dtype=np.float64)
    if grid.ndim < 1 or grid.size == 0:
        raise ValueError(
            f"{where}: `values` must be a non-empty array of samples on a grid, "
            f"got shape {grid.shape}."
        )
    check_choice(where, "connectivity", connectivity, tuple(range(1, grid.ndim + 1)))
    levels = np.asarray(level, dtype=np.float64)
    if np.isnan(levels).any():
        raise ValueError(f"{where}: `level` must not be NaN, got {level!r}.")
    from scipy import ndimage  # only here: `import lyapopt` does not pay for it

    structure = ndimage.generate_binary_structure(grid.ndim, connectivity)
    if coercive:
        # A ring above every level joins the super-level parts that reach it.
        grid = np.pad(grid, 1, constant_values=np.inf)

    def count(mask: np.ndarray) -> int:
        # Without `output`, label returns (labels, number of components).
        labelled = cast(
            tuple[np.ndarray, int], ndimage.label(mask, structure=structure)
        )
        return int(labelled[1])

    superlevel = np.empty(levels.shape, dtype=np.int64)
    sublevel = np.empty(levels.shape, dtype=np.int64)
    for index, lam in np.ndenumerate(levels):
        superlevel[index] = count(grid >= lam)
        sublevel[index] = count(grid <= lam)
    return LevelSetComponents(superlevel=superlevel, sublevel=sublevel)


# --------------------------------------------------------------------------
# 2-D slices of the loss.


class LossSlice(NamedTuple):
    """The loss on a plane: ``values[i, j] = L(params + alphas[j] d1 + betas[i] d2)``.

    Rows follow ``betas`` and columns ``alphas``, as ``matplotlib``'s
    ``contour(alphas, betas, values)`` expects.
    """

    alphas: jax.Array  # (nx,) coordinates along the first direction
    betas: jax.Array  # (ny,) coordinates along the second direction
    values: jax.Array  # (ny, nx)


def _extent(
    where: str, extent: float | Sequence[float]
) -> tuple[float, float, float, float]:
    if np.ndim(extent) == 0:
        check_number(
            where,
            "extent",
            extent,
            lower=0.0,
            lower_open=True,
            fix="Pass a radius such as 1.0, or (alpha_min, alpha_max, beta_min, "
            "beta_max).",
        )
        r = float(cast(float, extent))
        return (-r, r, -r, r)
    bounds = tuple(float(e) for e in np.asarray(extent, dtype=np.float64).ravel())
    if len(bounds) != 4 or not (bounds[0] < bounds[1] and bounds[2] < bounds[3]):
        raise ValueError(
            f"{where}: `extent` must be a radius or (alpha_min, alpha_max, "
            f"beta_min, beta_max) with each min below its max, got {extent!r}."
        )
    return bounds[0], bounds[1], bounds[2], bounds[3]


def _grid_sizes(where: str, num: int | Sequence[int]) -> tuple[int, int]:
    sizes = (num, num) if np.ndim(num) == 0 else tuple(cast(Sequence[int], num))
    if len(sizes) != 2:
        raise ValueError(
            f"{where}: `num` must be an integer or a pair (nx, ny), got {num!r}."
        )
    for n in sizes:
        check_number(
            where,
            "num",
            n,
            lower=2.0,
            integer=True,
            fix="Pass the points per axis, such as 41.",
        )
    nx, ny = cast(tuple[int, int], sizes)
    return int(nx), int(ny)


def loss_slice(
    value_fn: Callable[[optax.Params], jax.Array],
    params: optax.Params,
    directions: tuple[optax.Updates, optax.Updates],
    *,
    extent: float | Sequence[float] = 1.0,
    num: int | Sequence[int] = 41,
    batch_size: int | None = None,
) -> LossSlice:
    r"""The loss on the plane through ``params`` spanned by two directions.

    .. math::
      f(\alpha, \beta) = L(\theta + \alpha\, d_1 + \beta\, d_2)

    on a regular ``alpha x beta`` grid (Li et al., 2018). With the unit
    vectors of a 2-D problem as directions and zero as ``params`` it is the
    function itself on a grid; with :func:`filter_normalized_directions` it
    is a random slice of a network's loss whose scale is comparable across
    networks; with :func:`pca_directions` it is the plane that holds most of
    a run's trajectory.

    Args:
      value_fn: the loss, params -> scalar (e.g. on the full training set).
      params: the centre of the slice.
      directions: ``(d1, d2)``, two trees like ``params``.
      extent: a radius ``r`` for ``[-r, r]^2``, or ``(alpha_min, alpha_max,
        beta_min, beta_max)``.
      num: points per axis, or ``(nx, ny)``.
      batch_size: evaluate this many points at once with ``jax.vmap`` (as
        ``jax.lax.map``'s ``batch_size``); ``None`` evaluates them one by one,
        which needs the least memory.

    Returns:
      ``LossSlice(alphas, betas, values)`` with ``values`` of shape
      ``(ny, nx)``.

    References:
      Li, Xu, Taylor, Studer and Goldstein, "Visualizing the Loss Landscape
      of Neural Nets", NeurIPS 2018.

    Examples:
      With the unit vectors as directions, the slice of ``x^2 + y^2`` around
      zero is the function on the grid:

      >>> import jax.numpy as jnp
      >>> from lyapopt.diagnostics import loss_slice
      >>> f = lambda p: jnp.sum(p**2)
      >>> e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
      >>> s = loss_slice(f, jnp.zeros(2), (e1, e2), extent=1.0, num=3)
      >>> s.alphas
      Array([-1.,  0.,  1.], dtype=float32)
      >>> s.values
      Array([[2., 1., 2.],
             [1., 0., 1.],
             [2., 1., 2.]], dtype=float32)
    """
    where = "loss_slice"
    if len(directions) != 2:
        raise ValueError(
            f"{where}: `directions` must be a pair (d1, d2) of trees like "
            f"`params`, got {len(directions)} of them."
        )
    for d in directions:
        if jax.tree.structure(d) != jax.tree.structure(params):
            raise ValueError(
                f"{where}: each direction must be a tree like `params`; got "
                f"{jax.tree.structure(d)} for {jax.tree.structure(params)}."
            )
    if batch_size is not None:
        check_number(where, "batch_size", batch_size, lower=1.0, integer=True)
    a_min, a_max, b_min, b_max = _extent(where, extent)
    nx, ny = _grid_sizes(where, num)
    dtype = _line.scalar_dtype(params)
    alphas = jnp.linspace(a_min, a_max, nx, dtype=dtype)
    betas = jnp.linspace(b_min, b_max, ny, dtype=dtype)
    aa, bb = jnp.meshgrid(alphas, betas)  # (ny, nx), "xy" indexing
    d1, d2 = directions

    def at(ab: jax.Array) -> jax.Array:
        a, b = ab[0], ab[1]
        point = jax.tree.map(
            lambda p, x, y: (p + a * x + b * y).astype(p.dtype), params, d1, d2
        )
        return jnp.asarray(value_fn(point)).astype(dtype)

    points = jnp.stack([aa.ravel(), bb.ravel()], axis=-1)
    values = jax.lax.map(at, points, batch_size=batch_size)
    return LossSlice(alphas=alphas, betas=betas, values=values.reshape(ny, nx))


def filter_normalized_directions(
    key: jax.Array, params: optax.Params, *, ignore_1d: bool = True
) -> tuple[optax.Updates, optax.Updates]:
    r"""Two random directions, each filter scaled to its weights' norm.

    Li et al. (2018): draw ``d`` from a standard normal like ``params``, then
    for each filter ``j`` of each weight array

    .. math::
      d_j \leftarrow \frac{d_j}{\lVert d_j \rVert} \lVert \theta_j \rVert,

    so that a step of 1 along ``d`` is as large as the weights themselves,
    filter by filter, and slices of different networks compare. A filter is
    one output unit: all entries that share the last index (Flax's
    ``Linear`` kernels are ``(in, out)``, ``Conv`` kernels ``(..., in,
    out)``). Arrays of rank 0 or 1 (biases, normalisation scales) get a zero
    direction with ``ignore_1d`` (Li et al.'s choice for their figures),
    otherwise a copy of themselves.

    Args:
      key: a ``jax.random`` key.
      params: the parameters, a tree of arrays.
      ignore_1d: keep rank-0 and rank-1 arrays fixed.

    Returns:
      ``(d1, d2)``: two independent directions, trees like ``params``.

    References:
      Li, Xu, Taylor, Studer and Goldstein, "Visualizing the Loss Landscape
      of Neural Nets", NeurIPS 2018.

    Examples:
      Each column (filter) of ``d1["w"]`` has the norm of that column of
      ``w``, 5 and 1; the bias gets a zero direction:

      >>> import jax, jax.numpy as jnp
      >>> from lyapopt.diagnostics import filter_normalized_directions
      >>> params = {"w": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "b": jnp.ones(2)}
      >>> d1, d2 = filter_normalized_directions(jax.random.key(0), params)
      >>> jnp.linalg.norm(d1["w"], axis=0).round(3)
      Array([5., 1.], dtype=float32)
      >>> d1["b"]
      Array([0., 0.], dtype=float32)
    """

    def normalise(d: jax.Array, w: jax.Array) -> jax.Array:
        if w.ndim <= 1:
            return jnp.zeros_like(w) if ignore_1d else w
        axes = tuple(range(w.ndim - 1))
        d_norm = jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True))
        w_norm = jnp.sqrt(jnp.sum(w * w, axis=axes, keepdims=True))
        safe = jnp.where(d_norm > 0, d_norm, 1.0)
        return (d / safe * w_norm).astype(w.dtype)

    k1, k2 = jax.random.split(key)
    d1 = jax.tree.map(normalise, optax.tree.random_like(k1, params), params)
    d2 = jax.tree.map(normalise, optax.tree.random_like(k2, params), params)
    return d1, d2


class TrajectoryPCA(NamedTuple):
    """The plane of a trajectory: ``snapshot_i ~ center + c_i1 d1 + c_i2 d2``."""

    center: optax.Params  # a tree like one snapshot
    # (d1, d2), orthonormal over the whole tree
    directions: tuple[optax.Updates, optax.Updates]
    coordinates: jax.Array  # (n, 2): each snapshot's (alpha, beta)
    explained_variance: jax.Array  # (2,): share of sum ||snapshot - center||^2


def _snapshots(where: str, trajectory: optax.Params) -> int:
    """The number of snapshots in a stacked trajectory (leading axis)."""
    leaves = jax.tree.leaves(trajectory)
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if not leaves or len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"{where}: `trajectory` must be a tree of arrays stacked along a "
            "leading snapshot axis of the same length (what `jax.lax.scan` "
            "returns); stack a list of snapshots with "
            "`jax.tree.map(lambda *x: jnp.stack(x), *snapshots)`."
        )
    return int(cast(int, sizes.pop()))  # not None: checked above


def pca_directions(
    trajectory: optax.Params, *, center: optax.Params | None = None
) -> TrajectoryPCA:
    r"""The top two principal directions of a trajectory of parameters.

    Li et al. (2018) plot a run in the plane that holds most of it: with
    ``theta_i`` the snapshots and ``c`` the centre (the last snapshot by
    default, as theirs), the rows ``theta_i - c`` are decomposed by an SVD,
    and the first two right singular vectors are the directions. Pass them
    to :func:`loss_slice` around ``center``; ``coordinates`` places each
    snapshot in that plane. The PCA is not mean-centred (as Li et al.), so a
    straight run to ``c`` lies on ``d1``.

    Args:
      trajectory: the snapshots, a tree of arrays stacked along a leading
        axis (at least two snapshots).
      center: the origin of the plane, a tree like one snapshot; the last
        snapshot by default.

    Returns:
      ``TrajectoryPCA(center, directions, coordinates, explained_variance)``.
      The directions are orthonormal over the whole tree; each is signed so
      that its largest coordinate in magnitude is positive.

    References:
      Li, Xu, Taylor, Studer and Goldstein, "Visualizing the Loss Landscape
      of Neural Nets", NeurIPS 2018.

    Examples:
      A straight run from ``(0, 0)`` to its centre ``(2, 2)`` lies on ``d1``:

      >>> import jax.numpy as jnp
      >>> from lyapopt.diagnostics import pca_directions
      >>> run = jnp.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
      >>> pca = pca_directions(run)
      >>> pca.directions[0].round(3)
      Array([-0.707, -0.707], dtype=float32)
      >>> pca.coordinates[:2, 0].round(3)  # the centre itself is at 0
      Array([2.828, 1.414], dtype=float32)
      >>> pca.explained_variance.round(3)
      Array([1., 0.], dtype=float32)
    """
    where = "pca_directions"
    n = _snapshots(where, trajectory)
    if n < 2:
        raise ValueError(
            f"{where}: `trajectory` needs at least two snapshots, got {n}."
        )
    origin = jax.tree.map(lambda x: x[-1], trajectory) if center is None else center
    flat_center, unravel = ravel_pytree(origin)
    flat = jax.vmap(lambda t: ravel_pytree(t)[0])(trajectory)
    dtype = jnp.promote_types(flat.dtype, jnp.float32)
    diffs = (flat - flat_center).astype(dtype)
    _, s, vt = jnp.linalg.svd(diffs, full_matrices=False)
    vt = vt[:2]
    if vt.shape[0] < 2:  # one parameter: the plane degenerates to a line
        vt = jnp.concatenate([vt, jnp.zeros_like(vt)])
    coordinates = diffs @ vt.T
    biggest = jnp.take_along_axis(
        coordinates, jnp.argmax(jnp.abs(coordinates), axis=0)[None], axis=0
    )[0]
    sign = jnp.where(biggest < 0, -1.0, 1.0).astype(dtype)
    vt, coordinates = vt * sign[:, None], coordinates * sign
    total = jnp.sum(s**2)
    share = jnp.zeros(2, dtype).at[: min(2, s.shape[0])].set(s[:2] ** 2)
    explained = jnp.where(total > 0, share / jnp.where(total > 0, total, 1.0), 0.0)
    directions = (unravel(vt[0]), unravel(vt[1]))
    return TrajectoryPCA(
        center=origin,
        directions=directions,
        coordinates=coordinates,
        explained_variance=explained,
    )


# --------------------------------------------------------------------------
# Checks along a run.


class PathChecks(NamedTuple):
    """Per-step checks of a run; every field has one entry per step."""

    start: jax.Array  # L(theta_t)
    end: jax.Array  # L(theta_{t+1})
    profiles: jax.Array  # (steps, num): L along the segment, ends included
    segment_max: jax.Array  # the largest of the profile
    below_start: jax.Array  # bool: segment_max <= start + tolerance
    monotone: jax.Array  # bool: the profile never rises by more than tolerance
    sharpness: jax.Array  # lambda_max at theta_t (power iteration)
    eta_sharpness: jax.Array  # eta_t * lambda_max
    stable: jax.Array  # bool: eta_t * lambda_max < 2


def path_checks(
    value_fn: Callable[[optax.Params], jax.Array],
    trajectory: optax.Params,
    learning_rates: jax.typing.ArrayLike,
    *,
    key: jax.Array,
    num: int = 11,
    tolerance: float = 0.0,
    num_iters: int = 20,
) -> PathChecks:
    r"""Checks each step of a run for a descent path and the edge of stability.

    For consecutive snapshots ``theta_t``, ``theta_{t+1}`` of a run:

    - *descent path*: the loss on the segment between them,
      ``L((1 - s) theta_t + s theta_{t+1})`` at ``num`` points
      (:func:`lyapopt.diagnostics.segment_profile`), stays at or below its start,
      ``L(theta_t)`` (``below_start``), and, more strictly, never rises from
      one point to the next (``monotone``). The paper's Lyapunov argument
      asks ``V = L`` to decrease along the path; a step that jumps over a
      hump into another basin ends lower and still fails ``below_start``.
    - *edge of stability*: ``eta_t * lambda_max(theta_t) < 2``
      (``stable``), with ``lambda_max`` by :func:`lyapopt.diagnostics.sharpness`. On the
      quadratic model, a gradient step of rate ``eta`` is stable exactly
      when this holds. It is the test for plain gradient steps; for an
      adaptive method such as Adam, ``eta * lambda_max`` is only a reference
      (its stability is governed by the preconditioned Hessian).

    The checks are ours, built on the paper's Lyapunov function. They are as
    good as the samples: ``num`` points on a segment can miss a hump narrower
    than their spacing, and power iteration returns the eigenvalue of largest
    magnitude, which is ``lambda_max`` where the Hessian has no larger
    negative eigenvalue.

    Args:
      value_fn: the loss the checks use, params -> scalar (e.g. on the full
        training set; a step taken on a mini-batch can fail them on the full
        loss and pass on its own batch).
      trajectory: the snapshots ``theta_0 ... theta_n`` stacked along a
        leading axis (``n >= 1`` steps).
      learning_rates: ``eta_t``: a scalar, or one per step (shape ``(n,)``).
        For a gradient step ``u = -eta g`` with lyapopt, the effective rate
        is the product of ``learning_rate``, ``modulation``,
        ``curvature_scale`` and ``guard_scale`` from :func:`lyapopt.stats`.
      key: a ``jax.random`` key for the power iterations.
      num: points on each segment, ends included (>= 2).
      tolerance: the rise of the loss that still passes.
      num_iters: power iterations per step (>= 1).

    Returns:
      ``PathChecks``, one entry per step in each field.

    References:
      Chaudhary, Nidhi, Heikkonen, Merisaari and Kanth, "Super Level Sets and
      Exponential Decay: A Synergistic Approach to Stable Neural Network
      Training", JAIR 83 (2025), doi:10.1613/jair.1.17272.

      Cohen, Kaur, Li, Kolter and Talwalkar, "Gradient Descent on Neural
      Networks Typically Occurs at the Edge of Stability", ICLR 2021.

    Examples:
      Gradient steps on ``f(x) = x^2`` (``lambda_max = 2``): at rate 0.25
      from 1 to 0.5, then at rate 1.25 from 0.5 over the minimum to -0.75:

      >>> import jax, jax.numpy as jnp
      >>> from lyapopt.diagnostics import path_checks
      >>> f = lambda x: jnp.sum(x**2)
      >>> run = jnp.array([[1.0], [0.5], [-0.75]])
      >>> checks = path_checks(f, run, jnp.array([0.25, 1.25]), key=jax.random.key(0))
      >>> checks.below_start, checks.stable
      (Array([ True, False], dtype=bool), Array([ True, False], dtype=bool))
      >>> checks.eta_sharpness.round(3)
      Array([0.5, 2.5], dtype=float32)
    """
    where = "path_checks"
    check_number(where, "num", num, lower=2.0, integer=True, fix="Such as 11.")
    check_number(where, "num_iters", num_iters, lower=1.0, integer=True)
    check_number(where, "tolerance", tolerance, lower=0.0)
    snapshots = _snapshots(where, trajectory)
    steps = snapshots - 1
    if steps < 1:
        raise ValueError(
            f"{where}: `trajectory` needs at least two snapshots (one step), "
            f"got {snapshots}."
        )
    dtype = _line.scalar_dtype(trajectory)
    etas = jnp.asarray(learning_rates, dtype)
    if etas.shape not in ((), (steps,)):
        raise ValueError(
            f"{where}: `learning_rates` must be a scalar or have one entry per "
            f"step, shape ({steps},); got shape {etas.shape}."
        )
    etas = jnp.broadcast_to(etas, (steps,))
    starts = jax.tree.map(lambda x: x[:-1], trajectory)
    ends = jax.tree.map(lambda x: x[1:], trajectory)

    def one(
        args: tuple[optax.Params, optax.Params, jax.Array],
    ) -> tuple[jax.Array, jax.Array]:
        a, b, k = args
        _, profile = segment_profile(value_fn, a, b, num)
        return profile, sharpness(value_fn, a, num_iters=num_iters, key=k)

    profiles, lams = jax.lax.map(one, (starts, ends, jax.random.split(key, steps)))
    start, segment_max = profiles[:, 0], jnp.max(profiles, axis=1)
    eta_lam = etas * lams
    return PathChecks(
        start=start,
        end=profiles[:, -1],
        profiles=profiles,
        segment_max=segment_max,
        below_start=segment_max <= start + tolerance,
        monotone=jnp.all(jnp.diff(profiles, axis=1) <= tolerance, axis=1),
        sharpness=lams,
        eta_sharpness=eta_lam,
        stable=eta_lam < 2.0,
    )
