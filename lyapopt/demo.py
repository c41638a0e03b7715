"""The main job: lyapunov_adam against optax.adam over six learning rates.

    python -m lyapopt.demo [--steps 300] [--out lyapopt-demo]

Trains a Flax NNX MLP (64-128-128-10) on scikit-learn's bundled digits, full
batch on the train part of a 70/30 split, with ``lyapopt.lyapunov_adam`` at
its defaults and with ``optax.adam``, at learning rates 1e-3 ... 100. Prints
a table (final train loss, test accuracy, steps where the loss went up,
diverged or not, seconds) and writes the loss curves to a PNG.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import lyapopt

LEARNING_RATES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformationExtraArgs]] = {
    "lyapunov_adam": lambda lr: lyapopt.lyapunov_adam(lr),
    "optax.adam": lambda lr: optax.adam(lr),
}


class MLP(nnx.Module):
    """A ReLU perceptron, 64-128-128-10 by default."""

    def __init__(self, sizes: tuple[int, ...], *, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def digits_split(
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, scaled to [0, 1], split 70/30 (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    parts = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    x_train, x_test, y_train, y_test = (np.asarray(a) for a in parts)
    return x_train, x_test, y_train, y_test


@dataclass
class Run:
    """One training run's record."""

    optimizer: str
    learning_rate: float
    losses: np.ndarray  # train loss before each step, then the final one
    test_accuracy: float
    seconds: float

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])

    @property
    def increases(self) -> int:
        finite = np.nan_to_num(self.losses, nan=np.inf)
        return int(np.sum(np.diff(finite) > 0))

    @property
    def diverged(self) -> bool:
        return not math.isfinite(self.final_loss) or self.final_loss > self.losses[0]


def train(
    make_tx: Callable[[float], optax.GradientTransformationExtraArgs],
    learning_rate: float,
    data: tuple[np.ndarray, ...],
    *,
    steps: int,
    seed: int = 0,
    on_step: Callable[[], object] = lambda: None,
) -> tuple[np.ndarray, float, float]:
    """Full-batch training; returns (losses, test accuracy, seconds)."""
    x_train, x_test, y_train, y_test = (jnp.asarray(a) for a in data)
    model = MLP((64, 128, 128, 10), rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(p: optax.Params) -> jax.Array:
        logits = nnx.merge(graphdef, p)(x_train)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()

    tx = make_tx(learning_rate)
    state = tx.init(params)

    @jax.jit
    def step(
        p: optax.Params, s: optax.OptState
    ) -> tuple[optax.Params, optax.OptState, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p, value=loss, value_fn=loss_fn)
        return optax.apply_updates(p, updates), s, loss

    start = time.perf_counter()
    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(loss)
        on_step()
    losses.append(jax.jit(loss_fn)(params))
    losses = np.asarray(jax.device_get(losses), dtype=np.float64)
    seconds = time.perf_counter() - start
    logits = nnx.merge(graphdef, params)(x_test)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    return losses, accuracy, seconds


def table(runs: list[Run]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| optimizer | learning rate | final train loss | test accuracy | loss increases | diverged | seconds |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.optimizer} | {r.learning_rate:g} | {r.final_loss:.4g} | "
            f"{r.test_accuracy:.3f} | {r.increases} | {'yes' if r.diverged else 'no'} | "
            f"{r.seconds:.1f} |"
        )
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    """Loss curves, one panel per optimizer, one line per learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.optimizer for r in runs))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        for r in (r for r in runs if r.optimizer == name):
            shown = np.where(np.isfinite(r.losses), r.losses, np.nan)
            ax.plot(
                shown,
                label=f"lr={r.learning_rate:g}" + (" (diverged)" if r.diverged else ""),
            )
        ax.set_yscale("log")
        ax.set_title(f"{name} on digits (full batch)")
        ax.set_xlabel("step")
        ax.set_ylabel("train cross-entropy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Run]:
    parser = argparse.ArgumentParser(
        prog="python -m lyapopt.demo", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--steps", type=int, default=300, help="full-batch steps per run"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("lyapopt-demo"), help="folder for the PNG"
    )
    parser.add_argument(
        "--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES)
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    from tqdm.auto import tqdm

    data = digits_split()
    runs = []
    total = len(OPTIMIZERS) * len(args.learning_rates) * args.steps
    with tqdm(total=total, desc="training", unit="step") as bar:
        for name, make_tx in OPTIMIZERS.items():
            for lr in args.learning_rates:
                bar.set_postfix_str(f"{name} lr={lr:g}")
                losses, acc, secs = train(
                    make_tx, lr, data, steps=args.steps, on_step=lambda: bar.update()
                )
                runs.append(Run(name, lr, losses, acc, secs))
    print(table(runs))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "loss_curves.png"
    plot(runs, path)
    print(f"loss curves: {path.resolve()}")
    return runs


if __name__ == "__main__":
    main()
