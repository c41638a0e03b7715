"""What the study runs: the model's size and the run lengths (:class:`Settings`),
and the instability settings, each a way to make the AdamW recipe spike
(:class:`Trigger`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax.numpy as jnp
from flax import nnx

from benchmarks.lm_instability.model import QKNormTransformer, with_bad_rows
from benchmarks.models import ByteTransformer
from benchmarks.tasks import Task, _stdlib_lm

NAME = "lm_instability"


@dataclass(frozen=True)
class Trigger:
    """A setting of the study: the AdamW recipe with some of its fixes removed.

    The recipe (:func:`benchmarks.lm_spikes.adamw_recipe`) is AdamW with b1
    0.9, ``b2``, ``eps``, weight decay 0.1, a linear warmup over ``warmup``
    (a fraction of the run; 0: none) then cosine decay to a tenth, and
    ``clip_by_global_norm(1.0)`` where ``clip``. ``lr`` is the rate at which
    the setting spikes, the top of its rate grid, which starts at
    ``grid_from`` and goes up by half-decades; ``bad`` the injected bad
    batches, ``(step, kind)``.
    """

    name: str
    lr: float
    grid_from: float = 0.01
    b2: float = 0.95
    eps: float = 1e-8
    warmup: float = 0.05
    clip: bool = True
    bad: tuple[tuple[int, str], ...] = ()
    # "bfloat16" / "float16": every LayerNorm computes in that dtype (its
    # parameters stay float32), AdaGC's "norms computed below float32".
    norm_dtype: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Settings:
    """The model, the data, the lengths and the rate grid of the study."""

    layers: int = 2
    width: int = 64
    heads: int = 4
    mlp_ratio: int = 2
    context: int = 64
    batch: int = 16
    steps: int = 1000
    eval_every: int = 100
    eval_windows: int = 64
    # The grid of Wortsman's sensitivity: each trigger's (see Trigger); at
    # most ``grid_points`` rates of it, the top ones.
    grid_points: int = 5
    triggers: tuple[str, ...] = ("no_fixes_100x", "bad_data_10x")
    peers: tuple[str, ...] | None = None  # None: every peer
    timing_rounds: int = 3
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def task(
        self, qk_norm: bool = False, norm_dtype: str | None = None, bad: tuple = ()
    ) -> Task:
        def make(rngs: nnx.Rngs) -> ByteTransformer:
            cls = QKNormTransformer if qk_norm else ByteTransformer
            model = cls(
                layers=self.layers,
                width=self.width,
                heads=self.heads,
                context=self.context,
                mlp_ratio=self.mlp_ratio,
                rngs=rngs,
            )
            if norm_dtype is not None:
                for _, m in nnx.iter_graph(model):
                    if isinstance(m, nnx.LayerNorm):
                        m.dtype = jnp.dtype(norm_dtype)
            return model

        return Task(
            name=NAME,
            title=(
                f"byte-level Transformer LM ({self.layers} layers, width "
                f"{self.width}, {self.heads} heads, MLP {self.mlp_ratio}x, "
                f"context {self.context}), batch {self.batch}"
            ),
            make_model=make,
            load=lambda: with_bad_rows(
                _stdlib_lm(self.context, self.eval_windows),
                bad,
                self.batch,
                self.context,
            ),
            metric="bits_per_byte",
            target=math.inf,
            steps=self.steps,
            eval_every=self.eval_every,
            batch_size=self.batch,
            chunk=self.eval_every,
        )

    def quick(self) -> Settings:
        """A smoke test of the whole study, well under a minute."""
        return Settings(
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
            # The recipe, the architectural fix, one optimizer-side fix and
            # lyapopt's recommended configuration: each peer compiles once,
            # and the compilations are most of a quick study.
            peers=(
                "adamw (the setting's recipe)",
                "adamw + qk-norm + z-loss",
                "adagc+adamw",
                "stabilize(recipe, curvature_every=50)",
            ),
            timing_rounds=1,
        )

    def rates(self, trigger: Trigger) -> tuple[float, ...]:
        """The rate grid: half-decades from ``grid_from`` up to the trigger's
        rate (the last), at most ``grid_points`` of them."""
        n = round(2 * math.log10(trigger.lr / trigger.grid_from)) + 1
        n = min(n, self.grid_points)
        return tuple(trigger.lr * 10 ** ((k - n + 1) / 2) for k in range(n))


# Three bad batches in a row (a garbage document), four times: repeated
# bytes at 200 and 600, random bytes at 400 and 800.
BURSTS = tuple(
    (start + i, kind)
    for start, kind in (
        (200, "repeat"),
        (400, "random"),
        (600, "repeat"),
        (800, "random"),
    )
    for i in range(3)
)

TRIGGERS: dict[str, Trigger] = {
    t.name: t
    for t in (
        Trigger(
            "no_fixes_100x",
            1.0,
            warmup=0.0,
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
            warmup=0.0,
            clip=False,
            bad=((40, "repeat"),),
            description="the --quick smoke test",
        ),
    )
}
