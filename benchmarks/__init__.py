"""lyapopt against the optax optimizers a user would pick instead.

One entry point, ``python -m benchmarks`` (``--quick`` for a smoke test of
under two minutes). On four tasks (a digits MLP full batch and minibatch, a
digits CNN, a byte-level Transformer language model on CPython's own
standard library) it measures the cost per step, the quality reached and
the robustness to the learning rate, writes ``results.json`` and PNG plots,
and rewrites the generated part of ``benchmarks/RESULTS.md``.
"""
