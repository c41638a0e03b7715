"""The one training loop of the suite, and the timing of its step.

A run is a *lane*: one optimizer at one learning rate from one seed. Each
optimizer gets one jitted function per task, ``run``, that takes ``chunk``
steps in a ``lax.scan`` with the learning rate as a traced argument; the
sweep, the seeds and the timing all call that one compiled function, so
every optimizer compiles once per task.

Lanes run one after the other, not under ``jax.vmap``: under ``vmap`` a
``lax.cond`` with a per-lane predicate runs both branches and a
``while_loop`` runs until every lane is done, which would make the
curvature-every-10 variants measure every step and every lane pay for the
slowest line search.

XLA:CPU runs the backward pass of a convolution inside a loop body (a
``scan``, a ``while_loop``, a ``cond`` branch) about 20x slower than at the
top level, so the CNN task takes one step per call (``Task.chunk = 1``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.optimizers import LearningRate, Optimizer
from benchmarks.tasks import Task

Params = Any
Arrays = dict[str, jax.Array]


class Problem:
    """A task's data on the device and its model as a pure function."""

    def __init__(self, task: Task) -> None:
        self.task = task
        d = task.load()
        self.data: Arrays = {
            "x_train": jnp.asarray(d.x_train),
            "y_train": jnp.asarray(d.y_train),
            "x_test": jnp.asarray(d.x_test),
            "y_test": jnp.asarray(d.y_test),
            "train_eval": jnp.asarray(d.train_eval),
        }
        self.num_train = len(d.x_train)
        self.graphdef, _ = nnx.split(task.make_model(nnx.Rngs(0)), nnx.Param)
        self.evaluate_jit = jax.jit(self.evaluate)

    def init_params(self, seed: int) -> Params:
        return nnx.split(self.task.make_model(nnx.Rngs(seed)), nnx.Param)[1]

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.init_params(0)))

    def logits(self, params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(self.graphdef, params)(x)

    def loss(self, params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
        """Mean softmax cross-entropy (nats) over every prediction."""
        logits = self.logits(params, x).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits, y.astype(jnp.int32)
        )
        return ce.mean()

    def batch(self, data: Arrays, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.task.batch_size is None:
            return data["x_train"], data["y_train"]
        return data["x_train"][idx], data["y_train"][idx]

    def indices(self, seed: int, steps: int) -> np.ndarray:
        """The rows of each step's batch: epochs of shuffled, full batches."""
        size = self.task.batch_size
        if size is None:
            return np.zeros((steps, 0), np.int32)
        rng = np.random.default_rng(1000 + seed)
        per_epoch = self.num_train // size
        epochs = -(-steps // per_epoch)
        rows = [
            rng.permutation(self.num_train)[: per_epoch * size] for _ in range(epochs)
        ]
        return np.concatenate(rows).reshape(-1, size)[:steps].astype(np.int32)

    def fresh_indices(self, seed: int, steps: int) -> np.ndarray:
        """The rows of each step's *fresh* batch (``fresh_value_fn``): a second
        shuffle of the training set, independent of :meth:`indices`' (GeN's
        second iterator over the training loader)."""
        return self.indices(FRESH_SEED + seed, steps)

    def evaluate(self, data: Arrays, params: Params) -> Arrays:
        """Train loss (on ``train_eval``), test loss and the task's metric."""
        rows = data["train_eval"]
        train_loss = self.loss(params, data["x_train"][rows], data["y_train"][rows])
        logits = self.logits(params, data["x_test"]).astype(jnp.float32)
        y = data["y_test"].astype(jnp.int32)
        test_loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        if self.task.metric == "accuracy":
            metric = jnp.mean(jnp.argmax(logits, -1) == y)
        else:
            metric = test_loss / jnp.log(2.0)
        return {"train_loss": train_loss, "test_loss": test_loss, "metric": metric}


# The seed offset of the fresh batches' shuffle (Problem.fresh_indices).
FRESH_SEED = 7919

# What a run keeps of the optimizer's state after every step: named numbers
# (the guard's scale, a skip count), read inside the jitted step.
Record = Callable[[Any], Arrays]


def _nothing(state: Any) -> Arrays:
    return {}


class Runner:
    """An optimizer on a problem: ``init`` and ``run``, each jitted once.

    ``run(params, state, lr, idx)`` takes ``len(idx)`` steps in one
    ``lax.scan`` and returns the new parameters and state, the batch loss
    before each step, and ``record(state)`` after each step, stacked over
    the steps (``record`` reads nothing by default: an empty dict).

    The extra arguments offered to an optimizer (it takes those it names in
    ``Optimizer.extras``): ``value``, ``grad``, ``value_fn`` and ``obj_fn``
    (the loss on the step's batch), and ``fresh_value_fn``: the loss on a
    batch the step was not computed from, the rows ``fresh`` of ``run``
    (GeN's fresh minibatch, :mod:`benchmarks.gen`).
    """

    def __init__(
        self, problem: Problem, opt: Optimizer, record: Record = _nothing
    ) -> None:
        self.problem, self.opt = problem, opt
        # The run's length only sets the decay of sgd+exponential_decay.
        total = problem.task.steps
        one_step = problem.task.steps_per_call == 1

        def init(params: Params, lr: LearningRate) -> Any:
            return opt.make(lr, total).init(params)

        def run(
            data: Arrays,
            params: Params,
            state: Any,
            lr: LearningRate,
            idx: jax.Array,
            fresh: jax.Array,
        ) -> tuple[Params, Any, jax.Array, Arrays]:
            tx = opt.make(lr, total)

            def step(
                carry: tuple[Params, Any], rows: tuple[jax.Array, jax.Array]
            ) -> tuple[Any, tuple[jax.Array, Arrays]]:
                params, state = carry
                x, y = problem.batch(data, rows[0])
                fx, fy = problem.batch(data, rows[1])

                def value_fn(p: Params) -> jax.Array:
                    return problem.loss(p, x, y)

                def fresh_value_fn(p: Params) -> jax.Array:
                    return problem.loss(p, fx, fy)

                value, grads = jax.value_and_grad(value_fn)(params)
                offered = {
                    "value": value,
                    "grad": grads,
                    "value_fn": value_fn,
                    "obj_fn": value_fn,
                    "fresh_value_fn": fresh_value_fn,
                }
                extra = {k: offered[k] for k in opt.extras}
                updates, state = tx.update(grads, state, params, **extra)
                params = optax.apply_updates(params, updates)
                return (params, state), (value, record(state))

            if one_step:  # no loop at all: see the module's docstring
                (params, state), out = step((params, state), (idx[0], fresh[0]))
                value, kept = jax.tree.map(lambda a: a[None], out)
                return params, state, value, kept
            (params, state), (values, kept) = jax.lax.scan(
                step, (params, state), (idx, fresh)
            )
            return params, state, values, kept

        self._init = jax.jit(init)
        self._run = jax.jit(run)
        self._pick = jax.jit(opt.eval_params) if opt.eval_params else None

    def evaluate(self, params: Params, state: Any) -> Arrays:
        """The problem's evaluation at the parameters the optimizer reports."""
        if self._pick is not None:
            params = self._pick(state, params)
        return self.problem.evaluate_jit(self.problem.data, params)

    def init(self, seed: int, lr: float) -> tuple[Params, Any, jax.Array]:
        params = self.problem.init_params(seed)
        lr = jnp.asarray(lr, jnp.float32)
        return params, self._init(params, lr), lr

    def run(
        self,
        params: Params,
        state: Any,
        lr: jax.Array,
        idx: np.ndarray,
        fresh: np.ndarray | None = None,
    ) -> tuple[Params, Any, jax.Array, Arrays]:
        """``len(idx)`` steps, ``task.steps_per_call`` per call; waits for the result.

        ``fresh``: the rows of each step's fresh batch (``fresh_value_fn``);
        by default the next step's rows (the last step's: the first's).
        """
        if fresh is None:
            fresh = np.roll(idx, -1, axis=0)
        values, kept, chunk = [], [], self.problem.task.steps_per_call
        for start in range(0, len(idx), chunk):
            rows = jnp.asarray(idx[start : start + chunk])
            other = jnp.asarray(fresh[start : start + chunk])
            params, state, v, k = self._run(
                self.problem.data, params, state, lr, rows, other
            )
            values.append(v)
            kept.append(k)
        kept = jax.tree.map(lambda *a: jnp.concatenate(a), *kept)
        return params, state, *jax.block_until_ready((jnp.concatenate(values), kept))


@dataclass
class Lane:
    """The record of one run: one optimizer, learning rate and seed."""

    learning_rate: float
    seed: int
    eval_steps: list[int]
    train_loss: list[float]
    test_loss: list[float]
    metric: list[float]
    batch_values: np.ndarray  # the batch loss before each step
    # The runner's ``record`` after each step, by name (empty by default).
    recorded: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def increases(self) -> int:
        """How often the loss went up from one step to the next (the batch
        loss before each step, then the final train loss)."""
        seq = np.append(self.batch_values, self.train_loss[-1])
        seq = np.nan_to_num(seq, nan=np.inf)
        with np.errstate(invalid="ignore"):
            return int(np.sum(np.diff(seq) > 0))

    @property
    def diverged(self) -> bool:
        """A non-finite final train loss, or one above the initial."""
        final = self.train_loss[-1]
        return not math.isfinite(final) or final > self.train_loss[0]


def train(
    runner: Runner,
    lr: float,
    seed: int,
    steps: int,
    *,
    on_steps: Callable[[int], None] = lambda n: None,
) -> Lane:
    """One run of ``steps`` steps, evaluated every ``task.eval_every`` steps."""
    problem = runner.problem
    every = min(problem.task.eval_every, steps)
    idx = problem.indices(seed, steps)
    fresh = problem.fresh_indices(seed, steps)
    params, state, lr_arg = runner.init(seed, lr)
    evals, values, eval_steps = [runner.evaluate(params, state)], [], [0]
    kept = []
    for start in range(0, steps, every):
        rows = idx[start : start + every]
        params, state, v, k = runner.run(
            params, state, lr_arg, rows, fresh[start : start + every]
        )
        values.append(v)
        kept.append(k)
        evals.append(runner.evaluate(params, state))
        eval_steps.append(start + len(rows))
        on_steps(len(rows))
    evals = jax.device_get(evals)
    return Lane(
        learning_rate=lr,
        seed=seed,
        eval_steps=eval_steps,
        train_loss=[float(e["train_loss"]) for e in evals],
        test_loss=[float(e["test_loss"]) for e in evals],
        metric=[float(e["metric"]) for e in evals],
        batch_values=np.asarray(jax.device_get(jnp.concatenate(values)), np.float64),
        recorded=jax.device_get(jax.tree.map(lambda *a: jnp.concatenate(a), *kept)),
    )


# --- cost per step ------------------------------------------------------------

CHUNK = 10  # steps per timed call at least: one period of curvature_every=10
MIN_SECONDS = 0.04  # and at least this long


def time_steps(
    entries: dict[str, tuple[Runner, float]],
    rounds: int,
    *,
    on_round: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, float]]:
    """Seconds per step of each ``(runner, learning rate)``, interleaved.

    Each measurement is a whole number of calls of ``run``, at least
    ``CHUNK`` steps and at least ``MIN_SECONDS`` of the first entry's step
    (the dispatch of a call, ~0.1 ms, must not decide a ratio on a small
    model). After one untimed round that compiles and warms up, every round
    measures every entry once, in an order rotated from round to round so
    that a slow spell of the shared machine hits every entry alike. The
    parameters keep training from round to round: a guard's backtracking
    and a line search's trials depend on where training is. Returns the
    median and quartiles per step over the rounds.
    """
    first = next(iter(entries.values()))[0]
    call = first.problem.task.steps_per_call
    steps = call * -(-CHUNK // call)
    carries = {name: runner.init(0, lr) for name, (runner, lr) in entries.items()}
    names = list(entries)

    def measure(name: str, rows: np.ndarray) -> float:
        params, state, lr = carries[name]
        start = time.perf_counter()
        params, state, _, _ = entries[name][0].run(params, state, lr, rows)
        carries[name] = (params, state, lr)
        return (time.perf_counter() - start) / len(rows)

    warm = first.problem.indices(0, steps)
    for name in names:
        measure(name, warm)
    per_step = measure(names[0], warm)
    steps *= max(1, math.ceil(MIN_SECONDS / (per_step * steps)))
    idx = first.problem.indices(1, rounds * steps)
    times: dict[str, list[float]] = {name: [] for name in entries}
    on_round()
    for r in range(rounds):
        rows = idx[r * steps : (r + 1) * steps]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(measure(name, rows))
        on_round()
    return {
        name: _summary(t) | {"steps_per_measure": steps} for name, t in times.items()
    }


def _summary(seconds: list[float]) -> dict[str, float]:
    q1, med, q3 = np.percentile(seconds, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "n": len(seconds)}


def line_derivatives(
    value_fn: Callable[[Params], jax.Array], params: Params, u: Params
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(V, g.u, u.Hu)`` by forward-over-forward differentiation of the line
    ``s -> V(params + s u)`` (the construction of ``lyapopt``'s curvature cap)."""

    def phi(s: jax.Array) -> jax.Array:
        return value_fn(jax.tree.map(lambda p, d: p + s * d, params, u))

    def phi_and_slope(s: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jax.jvp(phi, (s,), (jnp.ones([]),))

    (v, gu), (_, uhu) = jax.jvp(phi_and_slope, (jnp.zeros([]),), (jnp.ones([]),))
    return v, gu, uhu


def time_derivatives(
    problem: Problem, rounds: int, *, on_round: Callable[[], None] = lambda: None
) -> dict[str, dict[str, float]]:
    """Seconds of a forward pass, a ``value_and_grad``, ``(g.u, u.Hu)`` by
    forward-over-forward, and a full HVP (forward-over-reverse), on one
    training batch, interleaved over ``rounds`` rounds of at least ``CHUNK``
    calls and ``MIN_SECONDS`` each."""
    params = problem.init_params(0)
    x, y = problem.batch(problem.data, jnp.asarray(problem.indices(0, 1)[0]))
    u = jax.grad(problem.loss)(params, x, y)

    def line(p: Params, u: Params, x: jax.Array, y: jax.Array) -> Any:
        return line_derivatives(lambda q: problem.loss(q, x, y), p, u)

    def hvp(p: Params, u: Params, x: jax.Array, y: jax.Array) -> Any:
        return jax.jvp(lambda q: jax.grad(problem.loss)(q, x, y), (p,), (u,))

    # Everything is an argument: with constants XLA could fold the work away.
    fns = {
        "forward": lambda p, u, x, y: problem.loss(p, x, y),
        "value_and_grad": lambda p, u, x, y: jax.value_and_grad(problem.loss)(p, x, y),
        "g.u and u.Hu (forward-over-forward)": line,
        "full HVP (forward-over-reverse)": hvp,
    }
    jitted = {name: jax.jit(f) for name, f in fns.items()}
    args = (params, u, x, y)

    def measure(name: str, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            out = jitted[name](*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / calls

    for name in fns:
        measure(name, 1)
    calls = max(CHUNK, math.ceil(MIN_SECONDS / measure("value_and_grad", CHUNK)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(measure(name, calls))
        on_round()
    return {name: _summary(t) for name, t in times.items()}
