"""``lm_spikes``' settings: the model, the data, the lengths, the multipliers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from flax import nnx

from benchmarks.models import ByteTransformer
from benchmarks.tasks import Task, stdlib_lm

NAME = "lm_spikes"
# The multipliers of the baseline's tuned rate: exactly 1, 10**0.5, 10 and
# 10**1.5, points of the baseline's half-decade sweep.
MULTIPLIERS = (1.0, 10**0.5, 10.0, 10**1.5)
LABELS = ("1x", "3x", "10x", "30x")
# The rates a rate-free configuration starts from, as multiples of the
# baseline's tuned rate (issue 20: 0.01x to 30x).
STARTS = (0.01, 0.1, 1.0, 10.0, 10**1.5)
START_LABELS = ("0.01x", "0.1x", "1x", "10x", "30x")


@dataclass(frozen=True)
class Settings:
    """The model, the data and the lengths of the study."""

    layers: int = 4
    width: int = 32
    heads: int = 1
    mlp_ratio: int = 2  # the MLP's width over the model's
    context: int = 128
    batch: int = 16
    steps: int = 1000
    eval_every: int = 100
    eval_windows: int = 128
    seeds: int = 3
    sweep_from: float = 10**-2.5  # the baseline's sweep starts here ...
    sweep_points: int = 5  # ... with this many rates, and more if needed
    timing_rounds: int = 5
    workers: int = 2  # processes for the runs (1: all in this one)

    def model(
        self, rngs: nnx.Rngs, cls: type[ByteTransformer] = ByteTransformer
    ) -> ByteTransformer:
        """The model (``cls``: a subclass that takes the same arguments)."""
        return cls(
            layers=self.layers,
            width=self.width,
            heads=self.heads,
            context=self.context,
            mlp_ratio=self.mlp_ratio,
            rngs=rngs,
        )

    def task(self, chunk: int | None = None) -> Task:
        """The task; ``chunk`` steps per jitted call (default: ``eval_every``)."""
        return Task(
            name=NAME,
            title=(
                f"byte-level Transformer LM ({self.layers} layers, width "
                f"{self.width}, {self.heads} head{'s' * (self.heads > 1)}, MLP "
                f"{self.mlp_ratio}x, context {self.context}), batch {self.batch}"
            ),
            make_model=self.model,
            load=lambda: stdlib_lm(self.context, self.eval_windows),
            metric="bits_per_byte",
            target=math.inf,
            steps=self.steps,
            eval_every=self.eval_every,
            batch_size=self.batch,
            chunk=chunk or self.eval_every,
        )


QUICK = Settings(
    layers=1,
    width=16,
    heads=2,
    context=32,
    steps=60,
    eval_every=10,
    eval_windows=16,
    seeds=2,
    sweep_points=2,
    timing_rounds=2,
    workers=1,
)
