"""The peers: the setting's recipe, and every loss-spike fix added to it
(the architectural one, the optimizer-side ones, and lyapopt's, with and
without its loss reference against bad data)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optax

import lyapopt
from benchmarks.adagc import adagc
from benchmarks.lm_instability.settings import Trigger
from benchmarks.lm_spikes.peers import recipe_schedule
from benchmarks.optimizers import LYAPOPT_EXTRAS, Optimizer
from benchmarks.spike_peers import skip_on_spike, spam, zclip

Z_LOSS = 1e-4
RECIPE = "adamw (the setting's recipe)"
ARCH = "adamw + qk-norm + z-loss"
RECOMMENDED = "stabilize(recipe, curvature_every=50)"
REFERENCE = "stabilize(recipe, curvature_every=50, spike_factor=1.5)"


def schedule(t: Trigger, lr: Any, steps: int) -> optax.Schedule:
    """lm_spikes' schedule, with the trigger's warmup or none."""
    return recipe_schedule(lr, steps, warmup=t.warmup)


def adamw(t: Trigger, lr: Any, steps: int) -> optax.GradientTransformation:
    """The trigger's AdamW, without its clipping."""
    return optax.adamw(schedule(t, lr, steps), b2=t.b2, eps=t.eps, weight_decay=0.1)


def recipe(t: Trigger, lr: Any, steps: int) -> optax.GradientTransformation:
    """The trigger's AdamW recipe (clipped where the trigger clips)."""
    tx = adamw(t, lr, steps)
    return optax.chain(optax.clip_by_global_norm(1.0), tx) if t.clip else tx


@dataclass(frozen=True)
class Peer:
    """An optimizer of the study, built for a trigger's setting by ``make``;
    ``qk_norm`` and ``z_loss`` change the model and the loss it trains."""

    name: str
    family: str
    make: Callable[[Trigger, Any, int], optax.GradientTransformation]
    extras: tuple[str, ...] = ()
    qk_norm: bool = False
    z_loss: float = 0.0

    def optimizer(self, trigger: Trigger) -> Optimizer:
        """The peer on ``trigger``'s setting, as :class:`benchmarks.train.Runner`
        takes it."""
        return Optimizer(
            self.name, lambda lr, n: self.make(trigger, lr, n), extras=self.extras
        )


def peers() -> tuple[Peer, ...]:
    """The recipe first; every other peer adds one fix to it."""
    opt = "optimizer-side fix"
    # The recipe clips and decays the weights: g.u takes the raw gradient,
    # passed as `grad`.
    stabilized = (*LYAPOPT_EXTRAS, "grad")
    return (
        Peer(RECIPE, "recipe", recipe),
        Peer(ARCH, "architectural fix", recipe, qk_norm=True, z_loss=Z_LOSS),
        Peer(
            "zclip+adamw",
            opt,
            lambda t, lr, n: optax.chain(zclip(), adamw(t, lr, n)),
        ),
        Peer(
            "spam",
            opt,
            lambda t, lr, n: spam(
                schedule(t, lr, n), b2=t.b2, eps=t.eps, weight_decay=0.1
            ),
        ),
        Peer(
            "skip_on_spike(recipe)",
            opt,
            lambda t, lr, n: skip_on_spike(recipe(t, lr, n)),
            extras=("value",),
        ),
        Peer(
            "adagc+adamw",
            opt,
            lambda t, lr, n: optax.chain(adagc(), adamw(t, lr, n)),
        ),
        Peer(
            "lyapunov_adam",
            "lyapopt",
            lambda t, lr, n: lyapopt.lyapunov_adam(lr, b2=t.b2, eps=t.eps),
            extras=LYAPOPT_EXTRAS,
        ),
        Peer(
            RECOMMENDED,
            "lyapopt",
            lambda t, lr, n: lyapopt.stabilize(recipe(t, lr, n), curvature_every=50),
            extras=stabilized,
        ),
        # Goal 3: the guard judges a step on its own batch, so a garbage
        # batch can pass it; lyapopt's loss reference (the median of the last
        # 50 admitted losses, skip_on_spike's and the spike rule's factor)
        # refuses the batch itself, before Adam sees its gradient.
        Peer(
            REFERENCE,
            "lyapopt",
            lambda t, lr, n: lyapopt.stabilize(
                recipe(t, lr, n), curvature_every=50, spike_factor=1.5
            ),
            extras=stabilized,
        ),
    )


PEERS = {p.name: p for p in peers()}
