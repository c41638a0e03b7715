"""The digits data set and a small MLP in plain JAX, shared by the ecosystem tests.

``sklearn.datasets.load_digits`` ships with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

Batch = tuple[jax.Array, jax.Array]


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int32)


def batch(rows: int = 256, start: int = 0) -> Batch:
    """``rows`` images (64 pixels in [0, 1]) and their labels, from row ``start``."""
    x, y = _digits()
    return jnp.asarray(x[start : start + rows]), jnp.asarray(y[start : start + rows])


def init(key: jax.Array, hidden: int = 32) -> dict[str, jax.Array]:
    """A 64-hidden-10 MLP, scaled so that a step of 1 overshoots."""
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (64, hidden)) / 8.0,
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, 10)) / jnp.sqrt(hidden),
        "b2": jnp.zeros(10),
    }


def loss_fn(params: dict[str, jax.Array], batch: Batch) -> jax.Array:
    """Mean softmax cross-entropy of the MLP (tanh hidden layer) on ``batch``."""
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
