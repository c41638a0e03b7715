"""AdaGC: per-tensor adaptive gradient clipping, as an optax transformation.

Written from the paper (Wang et al. 2025, "AdaGC: Improving Training
Stability for Large Language Model Pretraining", arXiv 2502.11034), its
Algorithm 1, as far as it is known here: no official code was read.
:func:`adagc` is the clipping alone; chain it before the optimizer
(``optax.chain(adagc(), optax.adamw(...))``), which is where the paper puts
it: the clipped gradient feeds both of AdamW's moments.

Where the paper leaves a choice open, or where it is not known here, this
module chooses as follows.

* *Per tensor* is per leaf of the gradient tree: each weight matrix, bias,
  embedding and norm scale has its own threshold.
* Defaults are the paper's as reported: ``beta = 0.98`` (the EMA's decay),
  ``lambda_rel = 1.05`` (a tensor is clipped once its norm passes 1.05
  times its EMA), ``lambda_abs = 1.0`` and ``warmup_steps = 100``.
* Warm-up: during the first ``warmup_steps`` steps the whole gradient is
  clipped to the global norm ``lambda_abs`` (``clip_by_global_norm``), and
  each tensor's ``gamma`` is the *minimum* of its clipped norms so far
  (the paper's initialisation, as we read it: a low start, which the EMA
  then raises). Afterwards, per tensor,
  ``h = min(1, lambda_rel * gamma / ||g||)``, ``g <- h g``,
  ``gamma <- beta gamma + (1 - beta) ||h g||``: the EMA takes the *clipped*
  norm, so a spike cannot raise its own threshold.
* ``gamma`` starts at ``+inf``, and zero norms do not enter the warm-up's
  minimum: a tensor with no gradient yet (an unused embedding) would
  otherwise get ``gamma = 0`` and be frozen for good. A tensor with no
  nonzero gradient in the whole warm-up keeps ``gamma = inf`` and is never
  clipped.
* A non-finite norm (a NaN or an Inf in the tensor) leaves that tensor's
  gradient and ``gamma`` as they are; pair with ``optax.apply_if_finite``
  to drop such steps (as for :func:`benchmarks.spike_peers.zclip`).
* At least one warm-up step is required: ``gamma`` needs a first norm.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from benchmarks.spike_peers import check_count, check_decay, check_positive


class AdaGCState(NamedTuple):
    """State of :func:`adagc`.

    Attributes:
      count: int32, steps taken (it stops growing at ``warmup_steps``).
      gamma: a float32 scalar per leaf, the EMA of its clipped norm.
      clipped: int32, tensor-steps clipped per-tensor so far (after warm-up).
    """

    count: jax.Array
    gamma: Any
    clipped: jax.Array


def adagc(
    beta: float = 0.98,
    lambda_rel: float = 1.05,
    lambda_abs: float = 1.0,
    warmup_steps: int = 100,
) -> optax.GradientTransformation:
    r"""Clips each tensor's gradient against a moving average of its norm (AdaGC).

    After ``warmup_steps`` steps of global clipping at ``lambda_abs``, each
    tensor :math:`i` is clipped as

    .. math::
        h_{t,i} = \min\Big(1, \frac{\lambda_{rel}\, \gamma_{t-1,i}}
                  {\lVert g_{t,i} \rVert}\Big), \qquad
        \hat g_{t,i} = h_{t,i}\, g_{t,i}, \qquad
        \gamma_{t,i} = \beta \gamma_{t-1,i} + (1 - \beta) \lVert \hat g_{t,i}
                       \rVert .

    During warm-up :math:`\gamma_{t,i}` is the minimum of the tensor's
    (globally clipped) norms so far. See the module's docstring for the
    choices made where the paper is not known here.

    Args:
      beta: the EMA's decay, in [0, 1).
      lambda_rel: the relative threshold (> 0).
      lambda_abs: the global-norm threshold of the warm-up (> 0).
      warmup_steps: steps of global clipping before the per-tensor rule.

    Returns:
      An ``optax.GradientTransformation`` whose state is an
      :class:`AdaGCState`.

    References:
      Wang et al., `AdaGC: Improving Training Stability for Large Language
      Model Pretraining <https://arxiv.org/abs/2502.11034>`_, 2025
    """
    check_decay("beta", beta, "adagc")
    check_positive("lambda_rel", lambda_rel, "adagc")
    check_positive("lambda_abs", lambda_abs, "adagc")
    check_count("warmup_steps", warmup_steps, "adagc", 1)

    def init_fn(params: Any) -> AdaGCState:
        return AdaGCState(
            count=jnp.zeros([], jnp.int32),
            gamma=jax.tree.map(lambda _: jnp.full([], jnp.inf, jnp.float32), params),
            clipped=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: Any, state: AdaGCState, params: Any = None
    ) -> tuple[Any, AdaGCState]:
        del params
        warming = state.count < warmup_steps
        norms = jax.tree.map(
            lambda g: jnp.linalg.norm(g.astype(jnp.float32).ravel()), updates
        )
        total = jnp.sqrt(sum(n**2 for n in jax.tree.leaves(norms)))
        global_scale = jnp.where(
            warming & (total > lambda_abs), lambda_abs / total, 1.0
        )

        def one(g: jax.Array, norm: jax.Array, gamma: jax.Array) -> tuple:
            finite = jnp.isfinite(norm)
            limit = lambda_rel * gamma
            clip = ~warming & finite & (norm > limit)
            h = jnp.where(clip, limit / jnp.where(clip, norm, 1.0), 1.0)
            h = jnp.where(warming, global_scale, h)
            clipped_norm = h * norm
            warm_gamma = jnp.where(
                clipped_norm > 0, jnp.minimum(gamma, clipped_norm), gamma
            )
            ema_gamma = beta * gamma + (1 - beta) * clipped_norm
            new_gamma = jnp.where(warming, warm_gamma, ema_gamma)
            new_gamma = jnp.where(finite, new_gamma, gamma)
            return g * h.astype(g.dtype), new_gamma.astype(jnp.float32), clip

        out = jax.tree.map(one, updates, norms, state.gamma)
        treedef = jax.tree.structure(updates)
        new_updates, gamma, clips = (
            jax.tree.unflatten(treedef, [o[k] for o in treedef.flatten_up_to(out)])
            for k in range(3)
        )
        n_clipped = sum(c.astype(jnp.int32) for c in jax.tree.leaves(clips))
        return new_updates, AdaGCState(
            count=jnp.where(warming, state.count + 1, state.count).astype(jnp.int32),
            gamma=gamma,
            clipped=state.clipped + n_clipped,
        )

    return optax.GradientTransformation(init_fn, update_fn)
