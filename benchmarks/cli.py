"""The command line: run the suite, write the JSON, the plots and RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flax
import jax
import optax

import lyapopt
from benchmarks import lm_spikes, report
from benchmarks.suite import Settings, run_task
from benchmarks.tasks import TASKS, Task

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
DEFAULT_MD = HERE / "RESULTS.md"
QUICK_OUT = Path("benchmarks-quick")

# --quick: the full-batch task only, short, one seed for the sweep, two at
# the chosen rates, few timing rounds. Every optimizer and every rate still
# runs, so the JSON has the structure of the full suite.
QUICK = {
    "mlp_full": {"steps": 30, "sweep_seeds": 1, "quality_seeds": 2, "timing_rounds": 3}
}


def cpu_model() -> str:
    """``lscpu``'s model name, else /proc/cpuinfo's, else platform's."""
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    devices = jax.devices()
    gpus = [d for d in devices if d.platform == "gpu"]
    return {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "lyapopt": lyapopt.__version__,
        "backend": jax.default_backend(),
        "devices": ", ".join(d.device_kind for d in devices),
        "gpu": ", ".join(d.device_kind for d in gpus)
        if gpus
        else "none available in this session, so there is no GPU table.",
    }


def select_tasks(names: list[str], quick: bool) -> tuple[Task, ...]:
    names = [n for n in names if n in TASKS]
    if quick:
        return tuple(TASKS[n].shrunk(**QUICK[n]) for n in QUICK if n in names)
    return tuple(TASKS[n] for n in names)


def run(
    args: argparse.Namespace, tasks: tuple[Task, ...], argv: list[str] | None
) -> dict[str, Any]:
    """Runs the suite; returns the results with their metadata and targets."""
    started = datetime.datetime.now(datetime.timezone.utc)
    start = time.perf_counter()
    settings = Settings(tasks=tasks)
    results: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        results["tasks"][task.name] = run_task(task, settings)
    words = sys.argv[1:] if argv is None else argv
    results["meta"] = {
        "command": shlex.join(["python", "-m", "benchmarks", *words]),
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - start,
        "quick": args.quick,
        "learning_rates": list(settings.learning_rates),
        "machine": machine(),
    }
    results["targets"] = report.targets(results)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="lyapopt against optax peers: cost, quality, robustness.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test (a few minutes): the full-batch task and a tiny "
        f"{lm_spikes.NAME}, short runs",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=[*TASKS, lm_spikes.NAME],
        default=[*TASKS, lm_spikes.NAME],
        metavar="TASK",
        help=f"the suite's tasks ({', '.join(TASKS)}) and the study "
        f"{lm_spikes.NAME} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for results.json and the PNGs (default {DEFAULT_OUT}, "
        f"or ./{QUICK_OUT} with --quick)",
    )
    parser.add_argument(
        "--results-md",
        type=Path,
        default=None,
        help=f"the Markdown report to (re)write (default {DEFAULT_MD}, "
        "or OUT/RESULTS.md with --quick)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="rebuild the plots and the report from a saved results.json, no training",
    )
    args = parser.parse_args(argv)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    md = args.results_md or (out / "RESULTS.md" if args.quick else DEFAULT_MD)
    tasks = select_tasks(args.tasks, args.quick)
    study = lm_spikes.NAME in args.tasks
    if not tasks and not study:
        parser.error(f"--quick runs only {', '.join([*QUICK, lm_spikes.NAME])}")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if tasks:
        results = run_suite(args, tasks, argv, out, md)
    if study:
        results[lm_spikes.NAME] = run_study(args, argv, out, md)
        if results[lm_spikes.NAME] is None:
            del results[lm_spikes.NAME]
    print(f"results: {out.resolve()}\nreport: {md.resolve()}")
    return results


def run_study(
    args: argparse.Namespace, argv: list[str] | None, out: Path, md: Path
) -> dict[str, Any] | None:
    """The lm_spikes study: run (or read back), plot, write its section."""
    path = out / f"{lm_spikes.NAME}.json"
    if args.from_json is not None:
        saved = args.from_json.parent / path.name
        if not saved.exists():
            print(f"{lm_spikes.NAME}: no {saved} to rebuild from; skipped")
            return None
        study = json.loads(saved.read_text())
    else:
        settings = lm_spikes.QUICK if args.quick else lm_spikes.Settings()
        start = time.perf_counter()
        study = lm_spikes.run_study(settings)
        words = sys.argv[1:] if argv is None else argv
        study["meta"] = {
            "command": shlex.join(["python", "-m", "benchmarks", *words]),
            "wall_seconds": time.perf_counter() - start,
            "quick": args.quick,
            "machine": machine(),
        }
        path.write_text(json.dumps(study, allow_nan=True))  # ~100 curves: compact
    plots = lm_spikes.plot(study, out, md.parent)
    lm_spikes.write(md, lm_spikes.markdown(study, study["meta"], plots))
    for g in lm_spikes.goals(study):
        print(f"[{'holds' if g['holds'] else 'MISSED'}] {g['goal']}: {g['measured']}")
    return study


def run_suite(
    args: argparse.Namespace,
    tasks: tuple[Task, ...],
    argv: list[str] | None,
    out: Path,
    md: Path,
) -> dict[str, Any]:
    """The suite's tasks: run (or read back), plot, write the report."""
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        results["targets"] = report.targets(results)
    else:
        results = run(args, tasks, argv)
    if (
        args.from_json is None
        or args.from_json.resolve() != (out / "results.json").resolve()
    ):
        (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=True))
    plots = report.plot_all(results, out, md.parent)
    report.write_markdown(md, report.markdown(results, plots), "lyapopt benchmarks")
    for t in results["targets"]:
        print(f"[{'holds' if t['holds'] else 'MISSED'}] {t['target']}: {t['measured']}")
    return results
