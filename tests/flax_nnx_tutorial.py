"""The Flax NNX MNIST tutorial (``docs_nnx/mnist_tutorial``), ported to digits.

Our own code, in the tutorial's structure: a CNN with Dropout and
BatchNorm, ``nnx.Optimizer`` over ``optax.adamw(learning_rate, momentum)``,
an ``nnx.MultiMetric``, a ``loss_fn`` that returns ``(loss, logits)``,
dropout RNGs passed into the train step, and ``nnx.view`` train and eval
modes. The lines switched to lyapopt end in ``# lyapopt``;
tests/test_flax_examples.py counts them and runs :func:`train`. Lines that
only record what the test checks end in ``# test``.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import optax
from flax import nnx

import lyapopt  # lyapopt
from tests.flax_linen_mnist import get_datasets

train_steps = 150
eval_every = 50
batch_size = 32
learning_rate = 0.005
momentum = 0.9


def datasets() -> tuple[list[dict], dict]:
    """``train_steps`` shuffled batches of the training digits; the test set."""
    train, test = get_datasets()
    order = np.random.default_rng(1).permutation(len(train["label"]))
    batches = [
        {k: v[idx] for k, v in train.items()}
        for idx in np.resize(order, (train_steps, batch_size))
    ]
    return batches, test


class CNN(nnx.Module):
    """A simple CNN model (8x8 digits: fewer channels than the tutorial's 28x28)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(128, 64, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = self.avg_pool(
            nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs)))
        )
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        return self.linear2(x)


def loss_fn(model: CNN, rngs: nnx.Rngs | None, batch):
    logits = model(batch["image"], rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits=logits, labels=batch["label"]
    ).mean()
    return loss, logits


@nnx.jit
def train_step(
    model: CNN,
    optimizer: nnx.Optimizer,
    metrics: nnx.MultiMetric,
    rngs: nnx.Rngs,
    batch,
):
    """Train for a single step."""
    value_fn = lyapopt.flax.nnx_value_fn(model, loss_fn, rngs, batch, has_aux=True)  # lyapopt # fmt: skip
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, rngs, batch)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])  # In-place updates.
    optimizer.update(model, grads, value=loss, value_fn=value_fn)  # lyapopt
    return loss  # test


@nnx.jit
def eval_step(model: CNN, metrics: nnx.MultiMetric, batch):
    loss, logits = loss_fn(model, None, batch)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])  # In-place updates.


def train() -> dict:
    """The tutorial's loop; returns its history, the stats and the batch statistics."""
    train_ds, test_batch = datasets()
    model = CNN(rngs=nnx.Rngs(0))
    tx = lyapopt.stabilize(optax.adamw(learning_rate, momentum))  # lyapopt
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)  # lyapopt
    metrics = nnx.MultiMetric(
        accuracy=nnx.metrics.Accuracy(),
        loss=nnx.metrics.Average("loss"),
    )
    rngs = nnx.Rngs(0)
    train_model = nnx.view(model, deterministic=False, use_running_average=False)
    eval_model = nnx.view(model, deterministic=True, use_running_average=True)
    stats_before = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    history = {"train_loss": [], "stats": [], "test_accuracy": []}
    for step, batch in enumerate(train_ds):
        loss = train_step(train_model, optimizer, metrics, rngs, batch)
        history["train_loss"].append(float(loss))  # test
        history["stats"].append(lyapopt.stats(optimizer.opt_state))  # test
        if step > 0 and (step % eval_every == 0 or step == train_steps - 1):
            metrics.reset()
            eval_step(eval_model, metrics, test_batch)
            history["test_accuracy"].append(float(metrics.compute()["accuracy"]))
            metrics.reset()
    history["batch_stats"] = (
        stats_before,
        nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
    )
    return history
