"""lyapopt against the optax optimizers a user would pick instead.

One entry point, ``python -m benchmarks`` (``--quick`` for a smoke test of
a few minutes), runs the studies registered in :data:`benchmarks.cli.STUDIES`
through one pipeline (:mod:`benchmarks.study`, which says how to add one):

- the suite (:mod:`benchmarks.suite`, :mod:`benchmarks.report`): on four
  tasks (a digits MLP full batch and minibatch, a digits CNN, a byte-level
  Transformer language model on CPython's own standard library), the cost
  per step, the quality reached and the robustness to the learning rate;
- ``lm_spikes`` (:mod:`benchmarks.lm_spikes`): loss spikes on a language
  model at 1x to 30x the tuned rate;
- ``lm_instability`` (:mod:`benchmarks.lm_instability`): settings where the
  AdamW recipe spikes (its fixes removed, bad batches), and every loss-spike
  fix measured there.

Each writes its JSON and PNG plots and rewrites its generated section of
``benchmarks/RESULTS.md``. Apart: ``python -m benchmarks.memory`` (compiled
peak memory of a step) and ``python -m benchmarks.gpu`` (step cost and
memory on one GPU).
"""
