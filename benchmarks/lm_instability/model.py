"""The study's model and data: lm_spikes' byte-level Transformer with the two
architectural fixes as options, and bad batches injected at fixed steps.

* ``qk_norm``: a LayerNorm on each head's queries and keys before the dot
  product (Wortsman et al. 2023's fix for attention-logit growth; Dehghani
  et al. 2023). The model without it is exactly
  :class:`benchmarks.models.ByteTransformer` (same parameters, same
  initialisation for a seed).
* ``z_loss``: ``z * mean(log Z^2)`` added to the training loss, ``log Z``
  the log-partition of the output logits (PaLM's auxiliary loss, Wortsman's
  fix for output-logit divergence). The validation bits per byte are the
  cross-entropy alone.
* Bad batches: at given steps the batch is replaced by ``batch`` windows of
  one repeated byte (``"repeat"``: a control byte absent from the text, a
  new one for each burst) or of uniformly random bytes (``"random"``).
  Their rows are appended to the training rows, and the shuffled epochs
  draw only from the clean ones.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.models import Block, ByteTransformer
from benchmarks.tasks import Data, Task
from benchmarks.train import Problem

BAD_KINDS = ("repeat", "random")
# Bytes absent from the training text (control characters), one per burst.
REPEATED_BYTES = (0, 1, 2, 3, 4, 5, 6, 7)


class QKNormBlock(Block):
    """:class:`benchmarks.models.Block` with LayerNorms on queries and keys."""

    def __init__(
        self, width: int, heads: int, *, mlp_ratio: int = 4, rngs: nnx.Rngs
    ) -> None:
        super().__init__(width, heads, mlp_ratio=mlp_ratio, rngs=rngs)
        self.q_norm = nnx.LayerNorm(width // heads, rngs=rngs)
        self.k_norm = nnx.LayerNorm(width // heads, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v))
        q, k = self.q_norm(q), self.k_norm(k)
        a = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.reshape(b, t, d))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class QKNormTransformer(ByteTransformer):
    """:class:`benchmarks.models.ByteTransformer` with qk-layernorm."""

    def __init__(
        self,
        *,
        layers: int,
        width: int,
        heads: int,
        context: int,
        mlp_ratio: int,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__(
            layers=layers,
            width=width,
            heads=heads,
            context=context,
            mlp_ratio=mlp_ratio,
            rngs=rngs,
        )
        self.blocks = nnx.List(
            [
                QKNormBlock(width, heads, mlp_ratio=mlp_ratio, rngs=rngs)
                for _ in range(layers)
            ]
        )


def bad_batches(
    bad: tuple[tuple[int, str], ...], batch: int, context: int
) -> list[np.ndarray]:
    """One batch of ``batch`` windows of ``context + 1`` bytes per bad step.

    A burst (consecutive steps of one kind) of ``"repeat"`` repeats one byte,
    the burst's own (:data:`REPEATED_BYTES`, in turn); every ``"random"``
    batch has its own random bytes. Each burst is new data to the model: a
    model that had seen the same garbage before would have learnt it.
    """
    out, burst, last = [], -1, None
    for step, kind in bad:
        if kind not in BAD_KINDS:
            raise ValueError(f"bad batch kind {kind!r}: use one of {BAD_KINDS}")
        if last is None or (step, kind) != (last[0] + 1, last[1]):
            burst += 1
        last = (step, kind)
        if kind == "repeat":
            byte = REPEATED_BYTES[burst % len(REPEATED_BYTES)]
            out.append(np.full((batch, context + 1), byte, np.uint8))
        else:
            rng = np.random.default_rng(7919 + step)
            out.append(rng.integers(0, 256, (batch, context + 1), dtype=np.uint8))
    return out


def with_bad_rows(data: Data, bad: tuple, batch: int, context: int) -> Data:
    """The data with the bad batches appended to the train rows, in order."""
    if not bad:
        return data
    w = np.concatenate(bad_batches(bad, batch, context))
    return replace(
        data,
        x_train=np.concatenate([data.x_train, w[:, :-1]]),
        y_train=np.concatenate([data.y_train, w[:, 1:]]),
    )


class LMProblem(Problem):
    """:class:`benchmarks.train.Problem` with a z-loss and bad batches.

    ``bad`` is a tuple of ``(step, kind)``: the batch of step ``step``
    (0-based) is the bad batch of that kind.
    """

    def __init__(self, task: Task, *, z_loss: float = 0.0, bad: tuple = ()) -> None:
        super().__init__(task)
        size = task.batch_size
        self.num_train -= size * len(bad)  # epochs shuffle clean rows only
        self.z_loss, self.bad = z_loss, tuple(bad)

    def loss(self, params, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = self.logits(params, x).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits, y.astype(jnp.int32)
        ).mean()
        if not self.z_loss:
            return ce
        log_z = jax.nn.logsumexp(logits, axis=-1)
        return ce + self.z_loss * jnp.mean(log_z**2)

    def indices(self, seed: int, steps: int) -> np.ndarray:
        idx = super().indices(seed, steps)
        size = self.task.batch_size
        for i, (step, _) in enumerate(self.bad):
            if step < steps:
                idx[step] = self.num_train + i * size + np.arange(size)
        return idx
