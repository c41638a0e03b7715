"""The benchmark's Flax NNX models: an MLP, a CNN and a byte-level Transformer
(and the same Transformer with its layers scanned, for the GPU benchmark).

The benchmark keeps its own models, so that changing the demo
(:mod:`lyapopt.demo`) never changes what the benchmark measures. The MLP
is the same network as the demo's (ReLU, 64-128-128-10 on the digits), with
the same parameter initialisation for a given seed.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
    """A ReLU perceptron: ``sizes = (64, 128, 128, 10)`` is 64-128-128-10."""

    def __init__(self, sizes: tuple[int, ...], *, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class CNN(nnx.Module):
    """Two 3x3 convolutions (16, 32 channels), 2x2 average pooling, a classifier."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        return self.head(x.reshape(x.shape[0], -1))


class Block(nnx.Module):
    """A pre-norm Transformer block: causal self-attention, then a GELU MLP."""

    def __init__(
        self, width: int, heads: int, *, mlp_ratio: int = 4, rngs: nnx.Rngs
    ) -> None:
        self.heads = heads
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, mlp_ratio * width, rngs=rngs)
        self.down = nnx.Linear(mlp_ratio * width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v))
        a = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.reshape(b, t, d))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class ByteTransformer(nnx.Module):
    """A byte-level causal language model: 256 symbols in, 256 logits out."""

    def __init__(
        self,
        *,
        layers: int = 2,
        width: int = 128,
        heads: int = 4,
        context: int = 64,
        mlp_ratio: int = 4,
        rngs: nnx.Rngs,
    ) -> None:
        self.embed = nnx.Embed(256, width, rngs=rngs)
        self.position = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (context, width))
        )
        self.blocks = nnx.List(
            [Block(width, heads, mlp_ratio=mlp_ratio, rngs=rngs) for _ in range(layers)]
        )
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, 256, rngs=rngs)

    def inputs(self, x: jax.Array) -> jax.Array:
        """The bytes ``x`` embedded, with their positions."""
        return self.embed(x.astype(jnp.int32)) + self.position[: x.shape[1]]

    def outputs(self, h: jax.Array) -> jax.Array:
        """The logits from the last block's output."""
        return self.head(self.norm(h))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.inputs(x)
        for block in self.blocks:
            h = block(h)
        return self.outputs(h)


@dataclass(frozen=True)
class ScannedTransformer:
    """:class:`ByteTransformer`'s network as pure functions of a parameter
    tree, its blocks' parameters stacked on a leading axis and applied by
    one ``lax.scan``, as large JAX language models are trained (MaxText's
    ``scan_layers``): the compiled step's size does not grow with the
    depth, so a 24-layer stabilised step compiles in seconds, not minutes.

    ``init(key)`` returns ``{"outer": ..., "blocks": ...}`` in ``dtype``
    (initialised as :class:`ByteTransformer` and :class:`Block` are, then
    cast); ``apply(params, x)`` the logits, computed in the parameters'
    dtype.
    """

    layers: int
    width: int
    heads: int
    context: int
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    def _outer(self, rngs: nnx.Rngs) -> ByteTransformer:
        return ByteTransformer(
            layers=0,
            width=self.width,
            heads=self.heads,
            context=self.context,
            mlp_ratio=self.mlp_ratio,
            rngs=rngs,
        )

    def _block(self, rngs: nnx.Rngs) -> Block:
        return Block(self.width, self.heads, mlp_ratio=self.mlp_ratio, rngs=rngs)

    @functools.cached_property
    def _graphdefs(self) -> tuple[Any, Any]:
        return (
            nnx.split(nnx.eval_shape(lambda: self._outer(nnx.Rngs(0))), nnx.Param)[0],
            nnx.split(nnx.eval_shape(lambda: self._block(nnx.Rngs(0))), nnx.Param)[0],
        )

    def init(self, key: jax.Array) -> dict[str, Any]:
        outer_key, blocks_key = jax.random.split(key)
        outer = nnx.split(self._outer(nnx.Rngs(outer_key)), nnx.Param)[1]
        blocks = jax.vmap(lambda k: nnx.split(self._block(nnx.Rngs(k)), nnx.Param)[1])(
            jax.random.split(blocks_key, self.layers)
        )
        params = {"outer": outer, "blocks": blocks}
        return jax.tree.map(lambda a: a.astype(self.dtype), params)

    def apply(self, params: dict[str, Any], x: jax.Array) -> jax.Array:
        outer_def, block_def = self._graphdefs
        outer = nnx.merge(outer_def, params["outer"])

        def layer(h: jax.Array, block: Any) -> tuple[jax.Array, None]:
            return nnx.merge(block_def, block)(h), None

        h, _ = jax.lax.scan(layer, outer.inputs(x), params["blocks"])
        return outer.outputs(h)
