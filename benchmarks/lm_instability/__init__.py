"""``lm_instability``: settings where the AdamW recipe spikes on a byte-level
Transformer, and every loss-spike fix measured there (issue 21).

The study, per setting (a :class:`Trigger`: the recipe with some of its
fixes removed, at a rate where it spikes, and optional bad batches): every
peer of :func:`peers` over a log-spaced rate grid that ends at the
setting's rate, one seed. Per run: the spikes (lm_spikes' rule, a bad
batch's own loss excluded), divergence, the final validation bits per
byte, the steps to recover from each spike, and lyapopt's guard decisions
around each spike and bad batch; per peer, Wortsman et al.'s learning-rate
sensitivity over the grid; the cost per step, interleaved.

Modules: :mod:`.settings` (what runs), :mod:`.model` (qk-layernorm, z-loss,
bad batches), :mod:`.runs` (the peers, the loop, the measures),
:mod:`.report` (goals, Markdown, figures), :mod:`.search` (the search for
settings that spike; its log is ``benchmarks/notes/``).
"""

from benchmarks.lm_instability.report import BEGIN, END, goals, markdown, plot, write
from benchmarks.lm_instability.runs import (
    ARCH,
    RECIPE,
    RECOMMENDED,
    Peer,
    peers,
    run_study,
    sensitivity,
)
from benchmarks.lm_instability.settings import NAME, TRIGGERS, Settings, Trigger

QUICK = Settings().quick()

__all__ = [
    "ARCH",
    "BEGIN",
    "END",
    "NAME",
    "QUICK",
    "RECIPE",
    "RECOMMENDED",
    "TRIGGERS",
    "Peer",
    "Settings",
    "Trigger",
    "goals",
    "markdown",
    "peers",
    "plot",
    "run_study",
    "sensitivity",
    "write",
]
