"""What the study runs: the model's size, the run lengths and the rate grids
(:class:`Settings`), and the instability settings, each a way to make the
AdamW recipe spike (:class:`Trigger`).

The default study fits 30 minutes on the 2-core machine: 9 peers x 6 rates
x 1,000 steps = 54 runs, estimated at ~25 minutes there. Per run, at the
trigger's rate, measured on that machine while shared (load 3-5): the
recipe 13-19 s, ``stabilize(recipe, curvature_every=50)`` 19-36 s,
``lyapunov_adam`` 32-60 s (the guard backtracks most at 100x), ~200 s for
the nine peers at one rate; 6 rates ~20 minutes, the compilation of 18
runners (4-15 s each) ~3 minutes, the interleaved timing ~2 minutes.
Alone on the machine it takes less.

What was cut to fit: the first version ran 8 rates (72 runs, estimated
~35 minutes at the preliminary study's 22 ms per recipe step, on the
machine loaded). ``no_fixes_100x``'s grid went from half-decades (1x, 3x,
10x, 30x, 100x the tuned rate) to decades (1x, 10x, 100x): in the search
the recipe there has no spike from 3x to 30x and degrades smoothly between
its ends, so 3x and 30x only interpolate the sensitivity's curve; 1x (the
recipe's tuned rate, near every peer's best: the sensitivity's reference)
and 100x (the spikes) are kept.
``bad_data_10x`` keeps its three half-decade points (1x, 3x, 10x). The
1,000 steps are kept: in the search ``no_fixes_100x``'s three events
start between steps 147 and 525 (the preliminary 600-step study saw one),
and the last burst ends at step 812.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jax.numpy as jnp
from flax import nnx

from benchmarks import lm_spikes
from benchmarks.lm_instability.model import QKNormTransformer, with_bad_rows
from benchmarks.models import ByteTransformer
from benchmarks.tasks import Task

NAME = "lm_instability"

Bad = tuple[tuple[int, str], ...]  # bad batches: (step, kind), kind "repeat"/"random"


@dataclass(frozen=True)
class Trigger:
    """A setting of the study: the AdamW recipe with some of its fixes removed.

    The recipe (:func:`benchmarks.lm_spikes.adamw_recipe`) is AdamW with b1
    0.9, ``b2``, ``eps``, weight decay 0.1, a linear warmup over the first
    5% of the run (where ``warmup``) then cosine decay to a tenth, and
    ``clip_by_global_norm(1.0)`` where ``clip``. ``lr`` is the rate at which
    the setting spikes, the top of its rate grid, which starts at
    ``grid_from`` and goes up by ``grid_step`` decades; ``bad`` the injected
    bad batches.
    """

    name: str
    lr: float
    grid_from: float = 0.01
    grid_step: float = 0.5
    b2: float = 0.95
    eps: float = 1e-8
    warmup: bool = True
    clip: bool = True
    bad: Bad = ()
    # "bfloat16" / "float16": every LayerNorm computes in that dtype (its
    # parameters stay float32), AdaGC's "norms computed below float32".
    norm_dtype: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Settings:
    """The model, the data, the lengths and the rate grids of the study."""

    layers: int = 2
    width: int = 64
    heads: int = 4
    mlp_ratio: int = 2
    context: int = 64
    batch: int = 16
    steps: int = 1000
    eval_every: int = 100
    eval_windows: int = 64
    # Each trigger's grid of rates (see Trigger): at most ``grid_points`` of
    # them, the top ones.
    grid_points: int = 5
    triggers: tuple[str, ...] = ("no_fixes_100x", "bad_data_10x")
    # None: every peer; the recipe runs first in any case (every setting's
    # measures read against it).
    peers: tuple[str, ...] | None = None
    timing_rounds: int = 3
    seed: int = 0

    def lm(self) -> lm_spikes.Settings:
        """lm_spikes' settings of the same model, data and lengths: all that
        a run's problem and optimizer depend on, besides its trigger."""
        return lm_spikes.Settings(
            layers=self.layers,
            width=self.width,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            context=self.context,
            batch=self.batch,
            steps=self.steps,
            eval_every=self.eval_every,
            eval_windows=self.eval_windows,
        )

    def rates(self, trigger: Trigger) -> tuple[float, ...]:
        """The rate grid: ``grid_step`` decades apart from ``grid_from`` up to
        the trigger's rate (the last), at most ``grid_points`` of them."""
        step = trigger.grid_step
        n = round(math.log10(trigger.lr / trigger.grid_from) / step) + 1
        n = min(n, self.grid_points)
        return tuple(trigger.lr * 10 ** ((k - n + 1) * step) for k in range(n))


def task(
    lm: lm_spikes.Settings,
    qk_norm: bool = False,
    norm_dtype: str | None = None,
    bad: Bad = (),
) -> Task:
    """lm_spikes' task on the model of ``lm``, with qk-layernorm where
    ``qk_norm``, every LayerNorm computing in ``norm_dtype``, and the rows of
    the bad batches ``bad`` appended to the training rows."""
    base = lm.task()

    def make(rngs: nnx.Rngs) -> ByteTransformer:
        model = lm.model(rngs, QKNormTransformer if qk_norm else ByteTransformer)
        if norm_dtype is not None:
            for _, m in nnx.iter_graph(model):
                if isinstance(m, nnx.LayerNorm):
                    m.dtype = jnp.dtype(norm_dtype)
        return model

    return replace(
        base,
        name=NAME,
        make_model=make,
        load=lambda: with_bad_rows(base.load(), bad, lm.batch, lm.context),
    )


# A smoke test of the whole study, well under a minute.
QUICK = Settings(
    layers=1,
    width=16,
    heads=2,
    context=16,
    batch=8,
    steps=60,
    eval_every=20,
    eval_windows=8,
    grid_points=2,
    triggers=("quick",),
    # The recipe, the architectural fix, one optimizer-side fix and lyapopt's
    # recommended configuration: each peer compiles once, and the
    # compilations are most of a quick study.
    peers=(
        "adamw (the setting's recipe)",
        "adamw + qk-norm + z-loss",
        "adagc+adamw",
        "stabilize(recipe, curvature_every=50)",
    ),
    timing_rounds=1,
)


def bursts(*starts: tuple[int, str], length: int = 3) -> Bad:
    """``length`` bad batches in a row (a garbage document over several
    batches) from each ``(step, kind)`` of ``starts``."""
    return tuple((step + i, kind) for step, kind in starts for i in range(length))


# Repeated bytes at 210 and 610, random bytes at 410 and 810: off the
# multiples of 50, the steps where `stabilize(recipe, curvature_every=50)`
# measures the curvature cap it keeps for the next 50 steps (bursts at 200,
# 400, ... had it measure the cap on the garbage batch itself).
BURSTS = bursts((210, "repeat"), (410, "random"), (610, "repeat"), (810, "random"))

TRIGGERS: dict[str, Trigger] = {
    t.name: t
    for t in (
        Trigger(
            "no_fixes_100x",
            1.0,
            grid_step=1.0,
            warmup=False,
            clip=False,
            description="no warmup, no clipping, 100x the recipe's tuned rate "
            "(0.01): 75-87 spike steps in 3 events, seeds 0 and 1 (the search)",
        ),
        Trigger(
            "bad_data_10x",
            0.1,
            bad=BURSTS,
            description="the whole recipe (warmup, clipping) at 10x its tuned "
            "rate, with four bursts of three bad batches",
        ),
        Trigger(
            "quick",
            0.05,
            grid_from=0.005,
            b2=0.999,
            eps=1e-12,
            warmup=False,
            clip=False,
            bad=((40, "repeat"),),
            description="the --quick smoke test",
        ),
    )
}
