"""``lm_spikes``: loss spikes on a byte-level Transformer LM, 1x to 30x the tuned rate.

The study, in this order:

1. **baseline sweep**: the usual recipe (AdamW with b2 = 0.95, linear warmup
   over the first 5% of the steps then cosine decay to a tenth, weight decay
   0.1, ``clip_by_global_norm(1.0)``) at learning rates on a half-decade grid
   (``10**(k/2)``), seed 0; its best rate (lowest final validation bits per
   byte) is ``1x``;
2. **multipliers**: every peer that takes a learning rate at ``1x, 3x, 10x,
   30x`` the baseline's best (exactly ``1, 10**0.5, 10, 10**1.5``, so that
   every multiplier of the baseline is a point of its sweep), seed 0. The
   learning-rate-free optimizers take no rate of the baseline's: they run
   once, at their authors' default, untuned, and that one run stands in
   every multiplier's column. The configurations that set the rate by
   measurement (lyapopt's rate-free configuration, GeN) start from
   ``0.01x, 0.1x, 1x, 10x, 30x`` instead (``STARTS``);
3. **seeds**: every peer at its best multiplier (the learning-rate-free
   ones at their default), seeds 1 and 2;
4. **untuned**: ``lyapunov_adam()`` at its default rate, and the two
   measured-rate configurations from AdamW's usual 1e-3, three seeds each;
5. **cost**: the seconds per step of every peer at ``1x``, interleaved in one
   timing run (:func:`benchmarks.train.time_steps`), and the rate-free
   configuration's two phases (measuring, held), whose mean weighted by
   their steps is its cost over a run.

Per run: the spikes (a step whose batch loss exceeds ``SPIKE_FACTOR`` times
the median of the previous ``SPIKE_WINDOW`` steps' batch losses; a non-finite
loss counts), divergence (a non-finite final loss, or one above the
initial), the final validation bits per byte, the batch-loss curve, and the
step at which the validation bits per byte first reach the target (the tuned
baseline's mean final value plus ``TARGET_SLACK``).

The modules, one idea each: :mod:`~benchmarks.lm_spikes.settings` (the model,
the data, the lengths), :mod:`~benchmarks.lm_spikes.peers` (the optimizers),
:mod:`~benchmarks.lm_spikes.runs` (the runs and the spike rule, as JSON),
:mod:`~benchmarks.lm_spikes.report` (goals, Markdown and plots from the
JSON), :mod:`~benchmarks.lm_spikes.cost` (where the stabilised step's cost
goes: ``python -m benchmarks.lm_spikes``). :data:`STUDY` is the study as
``python -m benchmarks --tasks lm_spikes`` runs it.
"""

from __future__ import annotations

from benchmarks.lm_spikes import report
from benchmarks.lm_spikes.cost import COST_PARTS, SUITE_COST, cost_breakdown, suite_cost
from benchmarks.lm_spikes.peers import (
    BASELINE,
    GEN,
    RATE_FREE,
    RECOMMENDED,
    UNTUNED,
    UNTUNED_RATE,
    Peer,
    adamw_recipe,
    peers,
    rate_free,
    recipe_direction,
    recipe_schedule,
    recipe_shape,
)
from benchmarks.lm_spikes.report import (
    BEGIN,
    END,
    TARGET_SLACK,
    goals,
    markdown,
    plot,
    summary,
)
from benchmarks.lm_spikes.runs import (
    RATE_FREE_PHASES,
    SPIKE_FACTOR,
    SPIKE_WINDOW,
    record,
    run,
    spikes,
)
from benchmarks.lm_spikes.settings import (
    LABELS,
    MULTIPLIERS,
    NAME,
    QUICK,
    START_LABELS,
    STARTS,
    Settings,
)
from benchmarks.study import package

STUDY = package(NAME, run, Settings, QUICK, report)

__all__ = [
    "BASELINE",
    "BEGIN",
    "COST_PARTS",
    "END",
    "GEN",
    "LABELS",
    "MULTIPLIERS",
    "NAME",
    "QUICK",
    "RATE_FREE",
    "RATE_FREE_PHASES",
    "RECOMMENDED",
    "SPIKE_FACTOR",
    "SPIKE_WINDOW",
    "STARTS",
    "START_LABELS",
    "STUDY",
    "SUITE_COST",
    "TARGET_SLACK",
    "UNTUNED",
    "UNTUNED_RATE",
    "Peer",
    "Settings",
    "adamw_recipe",
    "cost_breakdown",
    "goals",
    "markdown",
    "peers",
    "plot",
    "rate_free",
    "recipe_direction",
    "recipe_schedule",
    "recipe_shape",
    "record",
    "run",
    "spikes",
    "suite_cost",
    "summary",
]
