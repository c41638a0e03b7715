"""The benchmark tasks: the data, and which model of :mod:`benchmarks.models` on it.

Every task is a classification of rows of ``x`` into the labels ``y`` under
the mean softmax cross-entropy, so one training loop serves them all: the
digits tasks classify an image into 10 classes, the language model predicts
each of 64 next bytes (256 classes). Everything is real data already on this
machine: scikit-learn's bundled digits, and CPython standard-library sources
read from the running interpreter's own installation.
"""

from __future__ import annotations

import math
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from flax import nnx

from benchmarks.models import CNN, MLP, ByteTransformer

# Standard-library sources present, as plain modules, in every CPython >= 3.10
# (sorted; about 0.7 MB on 3.11). Their contents differ a little between
# Python versions, so bits per byte compare only within one interpreter.
STDLIB_FILES = (
    "argparse.py",
    "ast.py",
    "calendar.py",
    "collections/__init__.py",
    "contextlib.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "json/decoder.py",
    "json/encoder.py",
    "shlex.py",
    "string.py",
    "textwrap.py",
    "tokenize.py",
    "weakref.py",
)


@dataclass(frozen=True)
class Data:
    """Train and test arrays; ``train_eval`` indexes the rows the train loss is
    measured on (all of them, or a fixed sample when that is too slow)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_eval: np.ndarray


@dataclass(frozen=True)
class Task:
    """A model on a data set, and how long and how to train it.

    ``metric`` is ``"accuracy"`` (test accuracy, higher is better) or
    ``"bits_per_byte"`` (validation bits per byte, lower is better).
    ``batch_size=None`` trains on the whole train set at every step.
    """

    name: str
    title: str
    make_model: Callable[[nnx.Rngs], nnx.Module]
    load: Callable[[], Data]
    metric: str
    target: float  # the metric value that counts as "reached"
    steps: int
    eval_every: int
    batch_size: int | None = None
    chunk: int | None = None  # steps per jitted call (one lax.scan); eval_every
    sweep_seeds: int = 3  # seeds at every learning rate of the sweep
    quality_seeds: int = 3  # seeds at the chosen learning rate
    sweep_steps: int | None = None  # shorter sweep than `steps`, or None
    timing_rounds: int = 20  # rounds of 10 steps for the cost per step

    def __post_init__(self) -> None:
        for steps in (self.steps, self.sweep_steps or self.steps):
            if steps % self.eval_every or self.eval_every % self.steps_per_call:
                raise ValueError(
                    f"task {self.name}: the steps ({steps}) must be a multiple of "
                    f"eval_every ({self.eval_every}), and that of the steps per "
                    f"call ({self.steps_per_call})."
                )

    @property
    def steps_per_call(self) -> int:
        return self.chunk or self.eval_every

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def reached(self, value: float) -> bool:
        """Whether a metric value meets the target."""
        if not math.isfinite(value):
            return False
        return value >= self.target if self.higher_is_better else value <= self.target

    def shrunk(self, **changes: int | None) -> Task:
        """The same task with fewer steps, seeds or rounds (``--quick``)."""
        return replace(self, **changes)


# --- data -------------------------------------------------------------------


def _digits(image: bool) -> Data:
    """scikit-learn's digits in [0, 1], 70/30 stratified split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    if image:
        x = x.reshape(-1, 8, 8, 1)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y.astype(np.int32), test_size=0.3, random_state=0, stratify=y
    )
    return Data(x_tr, y_tr, x_te, y_te, np.arange(len(x_tr)))


def stdlib_bytes() -> tuple[bytes, bytes]:
    """(train, validation) bytes: the first 90% of each file, and the rest."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, valid = [], []
    for name in STDLIB_FILES:
        text = (root / name).read_bytes()
        cut = int(0.9 * len(text))
        train.append(text[:cut])
        valid.append(text[cut:])
    return b"\n".join(train), b"\n".join(valid)


def _windows(data: bytes, context: int, stride: int) -> tuple[np.ndarray, ...]:
    """Windows of ``context + 1`` bytes every ``stride``: inputs and next bytes."""
    a = np.frombuffer(data, np.uint8)
    starts = np.arange(0, len(a) - context - 1, stride)
    w = a[starts[:, None] + np.arange(context + 1)]
    return w[:, :-1], w[:, 1:]


def stdlib_lm(context: int = 64, eval_windows: int = 128) -> Data:
    """Byte windows: every 16th start of the train bytes for training; a fixed
    sample of ``eval_windows`` disjoint validation windows (8 KiB) for bits per
    byte, and half as many train windows for the train loss."""
    train, valid = stdlib_bytes()
    x_tr, y_tr = _windows(train, context, stride=16)
    x_te, y_te = _windows(valid, context, stride=context)
    pick = np.random.default_rng(0)
    test = np.sort(pick.choice(len(x_te), eval_windows, replace=False))
    train_eval = np.sort(pick.choice(len(x_tr), eval_windows // 2, replace=False))
    return Data(x_tr, y_tr, x_te[test], y_te[test], train_eval)


# --- the suite --------------------------------------------------------------

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="mlp_full",
            title="digits MLP 64-128-128-10, full batch",
            make_model=lambda rngs: MLP((64, 128, 128, 10), rngs=rngs),
            load=lambda: _digits(image=False),
            metric="accuracy",
            target=0.95,
            steps=300,
            eval_every=10,
            sweep_seeds=1,
        ),
        Task(
            name="mlp_minibatch",
            title="digits MLP 64-128-128-10, minibatch 64, 20 epochs",
            make_model=lambda rngs: MLP((64, 128, 128, 10), rngs=rngs),
            load=lambda: _digits(image=False),
            metric="accuracy",
            target=0.95,
            steps=20 * (1257 // 64),
            eval_every=1257 // 64,
            batch_size=64,
        ),
        Task(
            name="cnn_minibatch",
            title="digits CNN (8x8 images), minibatch 64, 10 epochs",
            make_model=lambda rngs: CNN(rngs=rngs),
            load=lambda: _digits(image=True),
            metric="accuracy",
            target=0.95,
            steps=10 * (1257 // 64),
            eval_every=1257 // 64,
            batch_size=64,
            chunk=1,
            sweep_seeds=1,
        ),
        Task(
            name="transformer_lm",
            title="byte-level Transformer LM (2 layers, width 128, context 64), batch 8",
            make_model=lambda rngs: ByteTransformer(rngs=rngs),
            load=stdlib_lm,
            metric="bits_per_byte",
            target=3.5,
            steps=120,
            eval_every=20,
            batch_size=8,
            chunk=10,
            sweep_seeds=1,
            sweep_steps=20,
            timing_rounds=5,
        ),
    )
}
