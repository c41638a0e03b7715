"""Flax's Linen ``examples/imagenet`` train step under ``jax.pmap``, on digits.

Run as ``python -m tests.flax_pmap_runs OUT.npz`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (JAX fixes the number
of CPU devices when it starts); tests/test_flax_examples.py does, and checks
what it saves.

Our own code, in the example's structure: a ``TrainState`` subclass with
``batch_stats``, a model whose BatchNorm averages over the devices
(``axis_name="batch"``), a ``loss_fn`` with weight decay that returns
``(loss, (new_model_state, logits))``, gradients ``pmean``'d, metrics
``pmean``'d, ``state.apply_gradients(grads=..., batch_stats=...)``, SGD
with Nesterov momentum on a cosine schedule, ``sync_batch_stats`` before
evaluation. Each device's ``value_fn`` is its own rows' loss (with the
devices' common batch statistics), so the guard is told the mapped axis
(``stabilize(..., axis_name="batch")``): every device then judges the mean
loss and backtracks alike, and the BatchNorm's cross-device mean inside
``value_fn`` never waits for a device that stopped. The lines switched to
lyapopt end in ``# lyapopt``; lines that only record what the test checks
end in ``# test``.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import jax_utils
from flax import linen as nn
from flax.training import common_utils, train_state
from jax import lax

import lyapopt  # lyapopt
from tests.flax_linen_mnist import get_datasets

NUM_CLASSES = 10
learning_rate = 1.0  # ten times the example's: the guard has steps to refuse
momentum = 0.9
batch_size = 32  # 16 per device on 2 devices
num_steps = 100


class CNN(nn.Module):
    """Convolutions with BatchNorm across devices, as the example's ResNet has."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            axis_name="batch",
        )
        x = nn.Conv(16, (3, 3), use_bias=False)(x)
        x = nn.relu(norm()(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(32, (3, 3), use_bias=False)(x)
        x = nn.relu(norm()(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(NUM_CLASSES)(x)


def cross_entropy_loss(logits, labels):
    one_hot_labels = common_utils.onehot(labels, num_classes=NUM_CLASSES)
    xentropy = optax.softmax_cross_entropy(logits=logits, labels=one_hot_labels)
    return jnp.mean(xentropy)


def compute_metrics(logits, labels):
    loss = cross_entropy_loss(logits, labels)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    metrics = {"loss": loss, "accuracy": accuracy}
    metrics = lax.pmean(metrics, axis_name="batch")
    return metrics


def train_step(state, batch, learning_rate_fn):
    """Perform a single training step."""

    def loss_fn(params):
        """loss function used for training."""
        logits, new_model_state = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            mutable=["batch_stats"],
        )
        loss = cross_entropy_loss(logits, batch["label"])
        weight_penalty_params = jax.tree_util.tree_leaves(params)
        weight_decay = 0.0001
        weight_l2 = sum(jnp.sum(x**2) for x in weight_penalty_params if x.ndim > 1)
        weight_penalty = weight_decay * 0.5 * weight_l2
        loss = loss + weight_penalty
        return loss, (new_model_state, logits)

    step = state.step
    lr = learning_rate_fn(step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    aux, grads = grad_fn(state.params)
    # Re-use same axis_name as in the call to `pmap(...train_step...)` below.
    grads = lax.pmean(grads, axis_name="batch")
    new_model_state, logits = aux[1]
    metrics = compute_metrics(logits, batch["label"])
    metrics["learning_rate"] = lr
    metrics["device_loss"] = aux[0]  # test
    new_state = lyapopt.flax.apply_gradients(  # lyapopt
        state,  # lyapopt
        grads=grads,
        batch_stats=new_model_state["batch_stats"],
        value=aux[0],  # lyapopt
        value_fn=lambda params: loss_fn(params)[0],  # lyapopt
    )
    metrics["lyapopt"] = lyapopt.stats(new_state.opt_state)  # test
    return new_state, metrics


def eval_step(state, batch):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = state.apply_fn(variables, batch["image"], train=False, mutable=False)
    return compute_metrics(logits, batch["label"])


class TrainState(train_state.TrainState):
    batch_stats: Any


def sync_batch_stats(state):
    """Sync the batch statistics across replicas."""
    # Each device has its own version of the running average batch statistics and
    # we sync them before evaluation.
    cross_replica_mean = jax.pmap(lambda x: lax.pmean(x, "x"), "x")
    return state.replace(batch_stats=cross_replica_mean(state.batch_stats))


def create_train_state(rng, model, learning_rate_fn):
    """Create initial training state."""
    variables = model.init(rng, jnp.ones((1, 8, 8, 1)), train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd(learning_rate=learning_rate_fn, momentum=momentum, nesterov=True)
    tx = lyapopt.stabilize(tx, axis_name="batch")  # lyapopt
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats
    )


def shard(batch):
    """``(rows, ...)`` arrays as ``(devices, rows / devices, ...)``."""
    return jax.tree.map(
        lambda x: x.reshape((jax.local_device_count(), -1, *x.shape[1:])), batch
    )


def train_and_evaluate() -> dict[str, np.ndarray]:
    """The example's loop; returns the per-device states, metrics and accuracy."""
    train_ds, test_ds = get_datasets()
    model = CNN()
    learning_rate_fn = optax.cosine_decay_schedule(learning_rate, num_steps)
    state = create_train_state(jax.random.key(0), model, learning_rate_fn)
    initial_stats = state.batch_stats
    state = jax_utils.replicate(state)
    p_train_step = jax.pmap(
        functools.partial(train_step, learning_rate_fn=learning_rate_fn),
        axis_name="batch",
    )
    p_eval_step = jax.pmap(eval_step, axis_name="batch")
    order = np.random.default_rng(1).permutation(len(train_ds["label"]))
    history = []
    for idx in np.resize(order, (num_steps, batch_size)):
        batch = shard({k: v[idx] for k, v in train_ds.items()})
        state, metrics = p_train_step(state, batch)
        history.append(jax.device_get(metrics))
    per_device_stats = state.batch_stats  # test: before the sync
    state = sync_batch_stats(state)
    test_batch = {k: v[:296] for k, v in test_ds.items()}  # 148 rows per device
    accuracy = p_eval_step(state, shard(test_batch))["accuracy"]
    out = {"test_accuracy": np.asarray(accuracy)}
    for name, tree in (
        ("batch_stats", per_device_stats),
        ("initial_stats", initial_stats),
        ("params", state.params),
    ):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            out[f"{name}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    for key in ("device_loss", "loss"):
        out[key] = np.stack([m[key] for m in history])
    for key in ("value_before", "value_after", "backtracks", "violations"):
        out[key] = np.stack([m["lyapopt"][key] for m in history])
    return out


def main(out: str) -> None:
    jax.config.update("jax_default_matmul_precision", "highest")  # as conftest.py
    assert jax.local_device_count() == 2, jax.devices()
    np.savez(out, **train_and_evaluate())


if __name__ == "__main__":
    main(sys.argv[1])
