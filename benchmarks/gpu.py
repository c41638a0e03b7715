"""Step cost and compiled peak memory on one GPU, against ``optax.adamw``.

    python -m benchmarks.gpu             # 10M, 100M, 300M parameters: one H100, < 5 minutes
    python -m benchmarks.gpu --tiny      # a tiny model: a smoke test on the CPU, < 1 minute
    python -m benchmarks.gpu --out DIR   # gpu.json and gpu.md there (default benchmarks/results/)

On decoder-only byte-level Transformer language models (vocabulary 256,
:class:`benchmarks.models.ScannedTransformer`: :class:`~benchmarks.models.ByteTransformer`'s
network with its layers in one ``lax.scan``) whose parameters, optimizer
states and activations are all ``bfloat16`` (the loss in float32), on
CPython standard-library bytes, it compiles one donated training step per
configuration (:func:`benchmarks.memory.compiled_step`) and reports

- the compiled peak of the step (:func:`benchmarks.memory.peak_bytes`:
  arguments + outputs + temporaries - aliased), as a ratio to
  ``optax.adamw``'s and in parameter-sized buffers more than it;
- the seconds per step, each step timed alone to its end, interleaved over
  rounds (every configuration takes ``per_round`` steps in each round, in an
  order rotated from round to round), after ``warmup`` untimed steps: the
  median (and quartiles) as a ratio to ``optax.adamw``'s median in the same
  run, and the mean ratio, which spreads the every-50 configuration's
  curvature step (one in its 50 timed steps) over the others.

The configurations: ``optax.adamw``; ``lyapopt.lyapunov_adam()`` at its
default rate; ``lyapopt.stabilize(optax.adamw)``; and, from
:mod:`benchmarks.lm_spikes`, its baseline recipe (AdamW, warmup and cosine,
``clip_by_global_norm``) and lyapopt's configuration for language models,
``stabilize(recipe, curvature_every=50)`` with the raw gradient passed.

Time on one H100 (an estimate: it has not run on one yet). A step of
``optax.adamw`` is about ``6 N`` FLOPs a token plus attention: 1.3, 5.5 and
16 TFLOP at 10M, 100M and 300M with the sizes below, so 4-13, 18-55 and
53-160 ms at 100-300 TFLOP/s; a stabilised step (the cap's
forward-over-forward pass and the guard's forward pass) about 3x that.
52 steps of each of the five configurations (about 9x an AdamW step in
all) take 2-6, 9-27 and 26-77 s. The layers being scanned, the size of a
compiled step does not grow with the depth: 15 compilations of 3-15 s,
about 2 minutes. With the start of JAX and the data, 3-4 minutes in all.
``--budget`` (default 270 s) stops the timing rounds, and skips a size
whose configurations have not all compiled, once that many seconds have
gone; the JSON and the table are rewritten after every size, so a run cut
short keeps the sizes it finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lyapopt
from benchmarks.lm_spikes.peers import BASELINE, RECOMMENDED, peers
from benchmarks.machine import machine
from benchmarks.markdown import table
from benchmarks.memory import compiled_step, peak_bytes
from benchmarks.models import ScannedTransformer
from benchmarks.optimizers import LYAPOPT_EXTRAS, OPTIMIZERS, Optimizer
from benchmarks.tasks import stdlib_lm

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
BASE = "optax.adamw"
BATCHES = 8  # distinct batches, used in turn


@dataclass(frozen=True)
class Size:
    """A model and its batch, and how long to time it."""

    name: str
    layers: int
    width: int
    heads: int
    context: int
    batch: int
    warmup: int = 2  # untimed steps after the compilation
    rounds: int = 5
    per_round: int = 10  # timed steps of each configuration in each round
    # XLA's options for its compilations (the tiny size's make them fast).
    compiler_options: tuple[tuple[str, Any], ...] = ()

    def model(self) -> ScannedTransformer:
        return ScannedTransformer(
            layers=self.layers,
            width=self.width,
            heads=self.heads,
            context=self.context,
            dtype=jnp.bfloat16,
        )

    @property
    def steps(self) -> int:
        """Every step a configuration takes: its schedules' length."""
        return self.warmup + self.rounds * self.per_round


# Heads of 64; parameters 11.0M, 100.0M and 303.4M.
SIZES = (
    Size("10M", layers=6, width=384, heads=6, context=512, batch=32),
    Size("100M", layers=14, width=768, heads=12, context=512, batch=16),
    Size("300M", layers=24, width=1024, heads=16, context=512, batch=16),
)
# A smoke test: XLA's backend at its lowest optimisation compiles 2-3x faster
# on the CPU (the buffers, and so the memory, are the same; the times mean
# nothing at this size anyway).
TINY = Size(
    "tiny",
    layers=2,
    width=32,
    heads=2,
    context=32,
    batch=4,
    warmup=1,
    rounds=2,
    per_round=2,
    compiler_options=(("xla_backend_optimization_level", 0),),
)


def configurations() -> dict[str, tuple[Optimizer, float]]:
    """Each configuration, and its learning rate."""
    study = {p.name: p.optimizer for p in peers()}
    adam = OPTIMIZERS["lyapunov_adam"]
    stabilized = Optimizer(
        "stabilize(optax.adamw)",
        lambda lr, n: lyapopt.stabilize(optax.adamw(lr)),
        LYAPOPT_EXTRAS,
    )
    return {
        BASE: (OPTIMIZERS[BASE], 1e-3),
        "lyapunov_adam": (adam, adam.default_lr),
        stabilized.name: (stabilized, 1e-3),
        BASELINE: (study[BASELINE], 1e-3),
        RECOMMENDED: (study[RECOMMENDED], 1e-3),
    }


def _loss(model: ScannedTransformer) -> Callable[..., jax.Array]:
    def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = model.apply(params, x).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def _batches(size: Size) -> list[tuple[jax.Array, jax.Array]]:
    data = stdlib_lm(size.context, eval_windows=8)
    rows = np.random.default_rng(0).choice(len(data.x_train), (BATCHES, size.batch))
    return [
        (
            jnp.asarray(data.x_train[r], jnp.int32),
            jnp.asarray(data.y_train[r], jnp.int32),
        )
        for r in rows
    ]


def _spread(seconds: list[float]) -> dict[str, float]:
    q1, med, q3 = np.percentile(seconds, [25, 50, 75])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "mean": float(np.mean(seconds)),
        "steps": len(seconds),
    }


class OutOfTimeError(Exception):
    """The deadline passed before every configuration of a size compiled."""


def measure(size: Size, deadline: float) -> dict[str, Any]:
    """Every configuration on ``size``: compiled peak, then seconds per step.

    ``deadline`` (a ``time.perf_counter()``) stops the timing rounds after
    the first, and raises :class:`OutOfTimeError` where it passes before every
    configuration has compiled.
    """
    model = size.model()
    loss = _loss(model)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    count = sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))
    param_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(shapes))
    batches = _batches(size)
    spec = jax.ShapeDtypeStruct((size.batch, size.context), jnp.int32)
    init = jax.jit(model.init)

    rows: dict[str, dict[str, Any]] = {}
    steps: dict[str, Any] = {}
    carries: dict[str, tuple[Any, Any]] = {}
    for name, (opt, lr) in configurations().items():
        if time.perf_counter() > deadline:
            raise OutOfTimeError(f"{size.name}: out of time before compiling {name}")
        tx = opt.make(lr, size.steps)
        start = time.perf_counter()
        steps[name] = compiled_step(
            tx,
            shapes,
            loss=loss,
            batch=(spec, spec),
            extras=opt.extras,
            compiler_options=dict(size.compiler_options) or None,
        )
        m = steps[name].memory_analysis()
        rows[name] = {
            "learning_rate": lr,
            "compile_seconds": time.perf_counter() - start,
            "peak_bytes": peak_bytes(steps[name]),
            "argument_bytes": m.argument_size_in_bytes,
            "output_bytes": m.output_size_in_bytes,
            "temp_bytes": m.temp_size_in_bytes,
            "alias_bytes": m.alias_size_in_bytes,
        }
        params = init(jax.random.key(0))
        carries[name] = (params, jax.jit(tx.init)(params))
        print(f"{size.name}: {name} compiled in {rows[name]['compile_seconds']:.1f} s")

    names = list(rows)
    taken = dict.fromkeys(names, 0)
    times: dict[str, list[float]] = {name: [] for name in names}

    def take(name: str, count: int, *, timed: bool) -> float:
        """``count`` steps of ``name``, each to its end; the last loss."""
        params, state = carries[name]
        value = math.nan
        for _ in range(count):
            x, y = batches[taken[name] % BATCHES]
            start = time.perf_counter()
            params, state, value = jax.block_until_ready(
                steps[name](params, state, x, y)
            )
            if timed:
                times[name].append(time.perf_counter() - start)
            taken[name] += 1
        carries[name] = (params, state)
        return float(value)

    for name in names:
        take(name, size.warmup, timed=False)
    losses: dict[str, float] = {}
    for r in range(size.rounds):
        if r and time.perf_counter() > deadline:
            print(f"{size.name}: out of time after {r} rounds")
            break
        for name in names[r % len(names) :] + names[: r % len(names)]:
            losses[name] = take(name, size.per_round, timed=True)
    carries.clear()  # free the device memory before the next size
    steps.clear()

    base = _spread(times[BASE])
    for name, row in rows.items():
        t = _spread(times[name])
        row |= {
            "seconds": t,
            "time_ratio": t["median"] / base["median"],
            "mean_time_ratio": t["mean"] / base["mean"],
            "memory_ratio": row["peak_bytes"] / rows[BASE]["peak_bytes"],
            "extra_buffers": (row["peak_bytes"] - rows[BASE]["peak_bytes"])
            / param_bytes,
            "last_loss": losses[name],
        }
    return {
        "size": asdict(size),
        "params": count,
        "param_bytes": param_bytes,
        "tokens_per_step": size.batch * size.context,
        "rows": rows,
    }


def markdown(results: dict[str, Any]) -> str:
    """The Markdown table of a run, naming the device."""
    meta = results["meta"]
    lines = [
        f"### GPU: step cost and memory on {meta['device']}",
        "",
        f"    {meta['command']}",
        "",
        f"Device: {meta['device']} (`jax.devices()[0].device_kind`), "
        f"{meta['device_count']} visible; jax {meta['machine']['jax']}, "
        f"lyapopt {meta['machine']['lyapopt']}. Started {meta['started']}, "
        f"{meta['wall_seconds']:.0f} s in all"
        + (" (`--tiny`: a smoke test, not results)." if meta["tiny"] else ".")
        + " Parameters, optimizer states and activations in bfloat16; "
        "ratios to `optax.adamw` in the same run.",
        "",
    ]
    if results["skipped"]:
        lines += [f"Skipped for lack of time: {', '.join(results['skipped'])}.", ""]
    lines += table(
        ["model", "parameters", "layers x width", "context x batch", "steps timed"],
        [
            [
                name,
                f"{s['params']:,}",
                f"{s['size']['layers']} x {s['size']['width']}",
                f"{s['size']['context']} x {s['size']['batch']}",
                str(s["rows"][BASE]["seconds"]["steps"]),
            ]
            for name, s in results["sizes"].items()
        ],
    )
    rows = []
    for name, s in results["sizes"].items():
        for opt, r in s["rows"].items():
            t = r["seconds"]
            rows.append(
                [
                    name,
                    f"`{opt}`",
                    f"{1e3 * t['median']:.3g} [{1e3 * t['q1']:.3g}-{1e3 * t['q3']:.3g}]",
                    f"{r['time_ratio']:.2f}",
                    f"{r['mean_time_ratio']:.2f}",
                    f"{r['peak_bytes'] / 2**20:,.1f}",
                    f"{r['memory_ratio']:.2f}",
                    f"{r['extra_buffers']:+.2f}",
                    f"{r['compile_seconds']:.1f}",
                ]
            )
    header = [
        "model",
        "optimizer",
        "ms per step, median [IQR]",
        "x adamw (median)",
        "x adamw (mean)",
        "peak MiB",
        "x adamw",
        "extra parameter-sized buffers",
        "compile s",
    ]
    lines += ["", *table(header, rows, "ll" + "r" * 7)]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=1, allow_nan=True))
    (out / "gpu.md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description="lyapopt's step cost and compiled peak memory against "
        "optax.adamw on bfloat16 Transformer LMs of 10M, 100M and 300M "
        "parameters: meant for one GPU (an H100: under 5 minutes).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for gpu.json and gpu.md (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny model only: a smoke test that runs on the CPU",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run the full sizes without a GPU (hours on a CPU)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=270.0,
        help="seconds after which the timing stops and sizes not begun are "
        "skipped (default 270)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc)
    device = jax.devices()[0]
    if not args.tiny and device.platform != "gpu" and not args.force:
        parser.exit(
            2,
            f"python -m benchmarks.gpu is meant for one GPU (an H100: under "
            f"5 minutes), and JAX sees no GPU here (devices: {device.device_kind}). "
            "Run it with --tiny for a smoke test on this machine, or with "
            "--force to run the full sizes here anyway (hours on a CPU).\n",
        )
    sizes = (TINY,) if args.tiny else SIZES
    words = sys.argv[1:] if argv is None else argv
    results: dict[str, Any] = {
        "meta": {
            "command": shlex.join(["python", "-m", "benchmarks.gpu", *words]),
            "started": started.isoformat(timespec="seconds"),
            "wall_seconds": 0.0,
            "tiny": args.tiny,
            "device": device.device_kind,
            "device_count": jax.device_count(),
            "budget_seconds": args.budget,
            "machine": machine(),
        },
        "sizes": {},
        "skipped": [],
    }
    deadline = start + args.budget
    for size in sizes:
        try:
            if time.perf_counter() > deadline:
                raise OutOfTimeError(f"{size.name}: out of time before it began")
            results["sizes"][size.name] = measure(size, deadline)
        except OutOfTimeError as e:
            print(e)
            results["skipped"].append(size.name)
            continue
        results["meta"]["wall_seconds"] = time.perf_counter() - start
        write(results, args.out)
    results["meta"]["wall_seconds"] = time.perf_counter() - start
    write(results, args.out)
    print(markdown(results))
    print(f"results: {(args.out / 'gpu.json').resolve()}")
    return results


if __name__ == "__main__":
    main()
