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

The modules, one idea each: :mod:`.settings` (what runs, and how long the
study takes), :mod:`.model` (qk-layernorm, z-loss, bad batches),
:mod:`.peers` (the optimizers), :mod:`.runs` (the runs and what is measured
on them, as JSON), :mod:`.report` (goals, Markdown and figures from the
JSON), :mod:`.search` (the search for settings that spike; its log is in
``benchmarks/notes/``). :data:`STUDY` is the study as ``python -m benchmarks
--tasks lm_instability`` runs it; ``python -m benchmarks.lm_instability``
runs a part of it (some settings, peers, steps or rates).
"""

from __future__ import annotations

from benchmarks.lm_instability import report
from benchmarks.lm_instability.peers import (
    ARCH,
    PEERS,
    RECIPE,
    RECOMMENDED,
    REFERENCE,
    Peer,
    peers,
)
from benchmarks.lm_instability.report import BEGIN, END, goals, markdown, plot
from benchmarks.lm_instability.runs import run, sensitivity
from benchmarks.lm_instability.settings import (
    BURSTS,
    NAME,
    QUICK,
    TRIGGERS,
    Settings,
    Trigger,
    bursts,
)
from benchmarks.study import package

STUDY = package(NAME, run, Settings, QUICK, report)

__all__ = [
    "ARCH",
    "BEGIN",
    "BURSTS",
    "END",
    "NAME",
    "PEERS",
    "QUICK",
    "RECIPE",
    "RECOMMENDED",
    "REFERENCE",
    "STUDY",
    "TRIGGERS",
    "Peer",
    "Settings",
    "Trigger",
    "bursts",
    "goals",
    "markdown",
    "peers",
    "plot",
    "run",
    "sensitivity",
]
