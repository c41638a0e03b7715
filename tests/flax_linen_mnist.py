"""Flax's Linen ``examples/mnist`` (``train.py``), ported to digits.

Our own code, in the example's structure: gradients, loss and accuracy in
one jitted function (``apply_model``), the update in another
(``update_model``) that, in Flax's version, never sees the batch; SGD with
momentum. lyapopt's ``value_fn`` needs the batch, so ``update_model`` is
given it and builds ``value_fn`` from ``apply_model``'s loss (XLA drops the
gradient that ``value_fn`` does not use). The lines switched to lyapopt end
in ``# lyapopt``; tests/test_flax_examples.py counts them and runs
:func:`train_and_evaluate`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

import lyapopt  # lyapopt
from tests import digits

learning_rate = 0.1
momentum = 0.9
batch_size = 32
num_epochs = 6


class CNN(nn.Module):
    """A simple CNN model (8x8 digits: fewer features than the example's)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(features=16, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(features=32, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(features=64)(x)
        x = nn.relu(x)
        x = nn.Dense(features=10)(x)
        return x


@jax.jit
def apply_model(state, images, labels):
    """Computes gradients, loss and accuracy for a single batch."""

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, images)
        one_hot = jax.nn.one_hot(labels, 10)
        loss = jnp.mean(optax.softmax_cross_entropy(logits=logits, labels=one_hot))
        return loss, logits

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return grads, loss, accuracy


@jax.jit
def update_model(state, grads, images, labels):  # lyapopt
    def loss(params):  # lyapopt
        return apply_model(state.replace(params=params), images, labels)[1]  # lyapopt

    return lyapopt.flax.apply_gradients(state, grads=grads, value_fn=loss)  # lyapopt


def train_epoch(state, train_ds, batch_size, rng):
    """Train for a single epoch."""
    train_ds_size = len(train_ds["image"])
    steps_per_epoch = train_ds_size // batch_size

    perms = jax.random.permutation(rng, len(train_ds["image"]))
    perms = perms[: steps_per_epoch * batch_size]  # skip incomplete batch
    perms = perms.reshape((steps_per_epoch, batch_size))

    epoch_loss = []
    epoch_accuracy = []

    for perm in perms:
        batch_images = train_ds["image"][perm, ...]
        batch_labels = train_ds["label"][perm, ...]
        grads, loss, accuracy = apply_model(state, batch_images, batch_labels)
        state = update_model(state, grads, batch_images, batch_labels)  # lyapopt
        epoch_loss.append(loss)
        epoch_accuracy.append(accuracy)
    train_loss = np.mean(epoch_loss)
    train_accuracy = np.mean(epoch_accuracy)
    return state, train_loss, train_accuracy


def get_datasets():
    """1,500 digits for training and the other 297 for testing, drawn at random.

    A fixed permutation (seed 0): the data set is ordered by writer, and its
    last rows come from writers the first rows do not show.
    """
    x, y = digits.batch(1797)
    order = np.random.default_rng(0).permutation(1797)
    x = np.asarray(x).reshape(-1, 8, 8, 1)[order]
    y = np.asarray(y)[order]
    return (
        {"image": x[:1500], "label": y[:1500]},
        {"image": x[1500:], "label": y[1500:]},
    )


def create_train_state(rng):
    """Creates initial `TrainState`."""
    cnn = CNN()
    params = cnn.init(rng, jnp.ones([1, 8, 8, 1]))["params"]
    tx = lyapopt.stabilize(optax.sgd(learning_rate, momentum))  # lyapopt
    return train_state.TrainState.create(apply_fn=cnn.apply, params=params, tx=tx)


def train_and_evaluate() -> tuple[train_state.TrainState, list[float]]:
    """The example's loop; returns the state and the test accuracy of each epoch."""
    train_ds, test_ds = get_datasets()
    rng = jax.random.key(0)
    rng, init_rng = jax.random.split(rng)
    state = create_train_state(init_rng)
    test_accuracies = []
    for _ in range(num_epochs):
        rng, input_rng = jax.random.split(rng)
        state, _, _ = train_epoch(state, train_ds, batch_size, input_rng)
        _, _, test_accuracy = apply_model(state, test_ds["image"], test_ds["label"])
        test_accuracies.append(float(test_accuracy))
    return state, test_accuracies
