"""From the suite's JSON: the targets, the Markdown tables and the PNG plots.

Everything here reads only the JSON, so a report can be rebuilt from a
saved ``results.json`` without training anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.figures import line_styles, pyplot, relative
from benchmarks.markdown import fmt, table

BEGIN = "<!-- BEGIN GENERATED: `python -m benchmarks` rewrites this part -->"
END = "<!-- END GENERATED -->"
BASELINES = ("optax.sgd", "optax.adam")
LYAPOPT_PREFIX = "lyapunov_"
# The cost-per-step targets: (entry, baseline, most allowed).
COST_TARGETS = (
    ("lyapunov_sgd first-order", "optax.sgd", 1.05),
    ("lyapunov_adam", "optax.adam", 2.7),
    ("lyapunov_adam/every10", "optax.adam", 1.5),
    ("lyapunov_adam/rate_free", "optax.adam", 1.5),
)
RATE_FREE = "lyapunov_adam/rate_free"


def _ours(name: str) -> bool:
    return name.startswith(LYAPOPT_PREFIX) and " " not in name


def ratios(task: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each timed entry's median seconds per step over the baselines'."""
    per_step = task["cost"]["per_step"]
    return {
        name: {b: t["median"] / per_step[b]["median"] for b in BASELINES}
        for name, t in per_step.items()
    }


def _metric_gap(task: dict[str, Any], name: str, best: float) -> float:
    """How far ``name`` is behind ``best``: percentage points of accuracy, or
    percent of bits per byte (positive: behind)."""
    mean = task["quality"][name]["final_metric"]["mean"]
    if task["metric"] == "accuracy":
        return 100 * (best - mean)
    return 100 * (mean - best) / best


def best_peer(task: dict[str, Any]) -> tuple[str, float]:
    """The peer with the best mean metric at its tuned rate."""
    peers = {
        name: q["final_metric"]["mean"]
        for name, q in task["quality"].items()
        if not _ours(name) and math.isfinite(q["final_metric"]["mean"])
    }
    pick = max if task["metric"] == "accuracy" else min
    name = pick(peers, key=peers.get)
    return name, peers[name]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue: what was measured, and whether it holds."""
    tasks = results["tasks"]
    out = []
    for entry, base, most in COST_TARGETS:
        seen = {n: ratios(t)[entry][base] for n, t in tasks.items()}
        out.append(
            {
                "target": f"`{entry}` step at most {most}x `{base}`",
                "measured": ", ".join(f"{n} {r:.2f}x" for n, r in seen.items()),
                "holds": all(r <= most for r in seen.values()),
            }
        )
    diverged = [
        f"{n}: {name} lr={run['learning_rate']:g}"
        for n, t in tasks.items()
        for name, runs in t["sweep"].items()
        if _ours(name)
        for run in runs
        if run["diverged"]
    ]
    out.append(
        {
            "target": "no divergence of a lyapopt optimizer at any rate of the sweep",
            "measured": "; ".join(diverged) or "none diverged",
            "holds": not diverged,
        }
    )
    rises = [
        f"{n}: {name} lr={run['learning_rate']:g} ({run['loss_increases']})"
        for n, t in tasks.items()
        if t["settings"]["batch_size"] is None
        for name, runs in t["sweep"].items()
        if _ours(name)
        for run in runs
        if run["loss_increases"] > 0
    ]
    out.append(
        {
            "target": "zero loss increases of a lyapopt optimizer on the full-batch task",
            "measured": "; ".join(rises) or "none at any rate",
            "holds": not rises,
        }
    )
    for n, t in tasks.items():
        peer, best = best_peer(t)
        unit = "pp" if t["metric"] == "accuracy" else "%"
        gaps = {
            name: _metric_gap(t, name, best) for name in t["quality"] if _ours(name)
        }
        out.append(
            {
                "target": f"{n}: each lyapopt optimizer, untuned, within 1{unit} of "
                f"the best tuned peer ({peer})",
                "measured": ", ".join(f"{k} {v:+.2f}{unit}" for k, v in gaps.items()),
                "holds": all(v <= 1.0 for v in gaps.values()),
            }
        )
        if unit == "pp" and RATE_FREE in gaps:
            out.append(
                {
                    "target": f"{n}: `{RATE_FREE}` untuned within 0.5 pp of the best "
                    f"tuned peer ({peer})",
                    "measured": f"{gaps[RATE_FREE]:+.2f} pp",
                    "holds": gaps[RATE_FREE] <= 0.5,
                }
            )
    return out


# --- Markdown ------------------------------------------------------------------


def _cost_tables(name: str, task: dict[str, Any]) -> list[str]:
    per_step, r = task["cost"]["per_step"], ratios(task)
    rows = [
        [
            f"`{entry}`",
            f"{1e3 * t['median']:.3g} [{1e3 * t['q1']:.3g}-{1e3 * t['q3']:.3g}]",
            f"{r[entry]['optax.sgd']:.2f}",
            f"{r[entry]['optax.adam']:.2f}",
        ]
        for entry, t in per_step.items()
    ]
    lines = [f"**{name}** ({task['title']})", ""]
    lines += table(
        ["step", "ms per step, median [IQR]", "x optax.sgd", "x optax.adam"], rows
    )
    d = task["cost"]["derivatives"]
    vg = d["value_and_grad"]["median"]
    rows = [
        [k, f"{1e3 * v['median']:.3g}", f"{v['median'] / vg:.2f}"] for k, v in d.items()
    ]
    fof = d["g.u and u.Hu (forward-over-forward)"]["median"]
    hvp = d["full HVP (forward-over-reverse)"]["median"]
    lines += ["", *table(["one batch", "ms", "x value_and_grad"], rows)]
    lines += ["", f"Forward-over-forward costs {fof / hvp:.2f}x a full HVP.", ""]
    return lines


def _quality_table(task: dict[str, Any]) -> list[str]:
    acc = task["metric"] == "accuracy"
    scale = 100 if acc else 1
    unit = "test accuracy %" if acc else "validation bits/byte"
    n_seeds = task["settings"]["quality_seeds"]
    rows = []
    for name, q in task["quality"].items():
        m = q["final_metric"]
        lr = task["chosen_lr"][name]
        rows.append(
            [
                f"`{name}`",
                f"{lr:g} ({'default' if _ours(name) else 'tuned'})",
                f"{fmt(q['final_train_loss']['mean'])} ± "
                f"{fmt(q['final_train_loss']['std'], '.2g')}",
                f"{fmt(scale * m['mean'], '.2f')} ± {fmt(scale * m['std'], '.2f')} "
                f"[{fmt(scale * m['min'], '.2f')}-{fmt(scale * m['max'], '.2f')}]",
                f"{fmt(q['median_steps_to_target'], '.0f')} "
                f"({q['seeds_reaching_target']}/{n_seeds})",
                fmt(q["seconds_to_target"], ".3g"),
            ]
        )
    target = f"{100 * task['target']:g}%" if acc else f"{task['target']:g} bits/byte"
    return table(
        [
            "optimizer",
            "learning rate",
            "final train loss (mean ± sd)",
            f"{unit} (mean ± sd [min-max])",
            f"steps to {target} (median, seeds)",
            "s to target",
        ],
        rows,
    )


def _sweep_table(task: dict[str, Any], cell: Callable[[list[dict]], str]) -> list[str]:
    lrs = sorted(
        {run["learning_rate"] for runs in task["sweep"].values() for run in runs}
    )
    rows = []
    for name, runs in task["sweep"].items():
        cells = []
        for lr in lrs:
            at = [r for r in runs if r["learning_rate"] == lr]
            cells.append(cell(at) if at else "")
        rows.append([f"`{name}`", *cells])
    return table(["optimizer", *(f"{lr:g}" for lr in lrs)], rows)


def _final_loss_cell(runs: list[dict[str, Any]]) -> str:
    loss = float(np.mean([r["final_train_loss"] for r in runs]))
    bad = sum(r["diverged"] for r in runs)
    text = fmt(loss, ".3g")
    return f"**{text} ✗**" if bad else text


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    """The generated part of RESULTS.md."""
    meta = results["meta"]
    m = meta["machine"]
    lines = [
        BEGIN,
        "",
        "## How this was run",
        "",
        f"    {meta['command']}",
        "",
        f"- Machine: {m['cpu_model']}, `nproc` = {m['nproc']}, {m['platform']}; "
        f"Python {m['python']}, jax {m['jax']}, optax {m['optax']}, flax {m['flax']}, "
        f"lyapopt {m.get('lyapopt', 'not recorded (before 0.2)')}; "
        f"JAX backend: {m['backend']} ({m['devices']}).",
        f"- Started {meta['started']}; the whole suite took "
        f"{meta['wall_seconds'] / 60:.1f} minutes"
        + (" (`--quick`: a smoke test, not results)." if meta["quick"] else "."),
        f"- GPU: {m['gpu']}",
        "",
        "Sizes (chosen so that the whole suite fits in 30 minutes on 2 shared cores):",
        "",
        *table(
            [
                "task",
                "parameters",
                "batch",
                "steps",
                "sweep: steps x seeds x rates",
                "seeds at chosen rate",
                "timing rounds",
                "minutes",
            ],
            [
                [
                    name,
                    f"{s['num_params']:,}",
                    "full" if s["batch_size"] is None else str(s["batch_size"]),
                    str(s["steps"]),
                    f"{s['sweep_steps']} x {s['sweep_seeds']} x {len(meta['learning_rates'])}",
                    str(s["quality_seeds"]),
                    str(s["timing_rounds"]),
                    f"{t['wall_seconds'] / 60:.1f}",
                ]
                for name, t in results["tasks"].items()
                for s in [t["settings"]]
            ],
        ),
        "",
        "## Targets",
        "",
        *table(
            ["target", "measured", "holds"],
            [
                [t["target"], t["measured"], "**yes**" if t["holds"] else "**no**"]
                for t in targets(results)
            ],
            "llr",
        ),
        "",
        "## Cost per step",
        "",
        "Median seconds per step over interleaved rounds (each measurement at",
        "least 10 jitted steps and 40 ms; `lax.scan` of 10-19 steps per call, the",
        "CNN one step per call), after compilation, of one run (no `vmap`):",
        "every optimizer at its chosen rate, the pieces of lyapopt's step at its",
        "defaults. Ratios are to `optax.sgd` (momentum 0.9) and `optax.adam`",
        "timed in the same rounds. IQR: interquartile range over the rounds.",
        "",
        f"![cost per step]({plots['cost']})",
        "",
    ]
    for name, task in results["tasks"].items():
        lines += _cost_tables(name, task)
    lines += [
        "## Quality",
        "",
        "lyapopt's optimizers at their default rates (untuned); each peer at its",
        "best rate of the sweep (tuned on the test split, in its favour).",
        "Seconds to target = median steps to target x the median seconds per",
        "step above (one run, this machine).",
        "",
    ]
    for name, task in results["tasks"].items():
        s = task["settings"]
        lines += [
            f"### {name}: {task['title']}",
            "",
            f"{s['steps']} steps, {s['quality_seeds']} seeds, {s['num_params']:,} "
            f"parameters, {s['train_rows']:,} train rows; evaluated every "
            f"{s['eval_every']} steps.",
            "",
            *_quality_table(task),
            "",
            f"![loss curves]({plots['curves'][name]})",
            "",
        ]
    lines += [
        "## Robustness: the learning-rate sweep",
        "",
        "Final train loss (mean over the sweep's seeds) at each learning rate;",
        "**✗** marks a diverged run (non-finite, or final loss above the initial).",
        "",
    ]
    for name, task in results["tasks"].items():
        s = task["settings"]
        lines += [
            f"### {name}",
            "",
            f"{s['sweep_steps']} steps, {s['sweep_seeds']} seed(s) per rate.",
            "",
            *_sweep_table(task, _final_loss_cell),
            "",
        ]
        if s["batch_size"] is None:
            lines += [
                "Loss increases (steps where the full-batch loss went up):",
                "",
                *_sweep_table(
                    task,
                    lambda runs: str(max(r["loss_increases"] for r in runs)),
                ),
                "",
            ]
        lines += [f"![learning-rate sweep]({plots['sweep'][name]})", ""]
    lines += [END, ""]
    return "\n".join(lines)


# --- plots -------------------------------------------------------------------


def plot_curves(task: dict[str, Any], name: str, path: Path) -> None:
    """Train loss against step at the chosen rates: mean, and min-max band."""
    plt = pyplot()
    style = line_styles(list(task["quality"]), _ours)
    fig, ax = plt.subplots(figsize=(8, 5))
    for opt, q in task["quality"].items():
        runs = q["runs"]
        steps = runs[0]["eval_steps"]
        loss = np.asarray([r["train_loss"] for r in runs], np.float64)
        loss = np.where(np.isfinite(loss), loss, np.nan)
        lr = task["chosen_lr"][opt]
        with np.errstate(all="ignore"):
            ax.plot(
                steps, np.nanmean(loss, 0), label=f"{opt} (lr {lr:g})", **style[opt]
            )
            ax.fill_between(
                steps,
                np.nanmin(loss, 0),
                np.nanmax(loss, 0),
                color=style[opt]["color"],
                alpha=0.15,
            )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("train cross-entropy (nats)")
    ax.set_title(f"{name}: {task['title']}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(task: dict[str, Any], name: str, path: Path) -> None:
    """Final train loss against learning rate, one line per optimizer;
    diverged runs marked with a cross, non-finite ones drawn at the top."""
    plt = pyplot()
    style = line_styles(list(task["sweep"]), _ours)
    finite = [
        r["final_train_loss"]
        for runs in task["sweep"].values()
        for r in runs
        if math.isfinite(r["final_train_loss"])
    ]
    top = 10 * max(finite) if finite else 10.0
    fig, ax = plt.subplots(figsize=(8, 5))
    for opt, runs in task["sweep"].items():
        lrs = sorted({r["learning_rate"] for r in runs})
        loss, bad = [], []
        for lr in lrs:
            at = [r for r in runs if r["learning_rate"] == lr]
            v = float(np.mean([r["final_train_loss"] for r in at]))
            loss.append(v if math.isfinite(v) else top)
            bad.append(any(r["diverged"] for r in at))
        ax.plot(lrs, loss, marker="o", markersize=3, label=opt, **style[opt])
        x = [lr for lr, b in zip(lrs, bad, strict=True) if b]
        y = [v for v, b in zip(loss, bad, strict=True) if b]
        ax.scatter(x, y, marker="x", s=40, color=style[opt]["color"], zorder=3)
    ax.axhline(top, color="gray", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final train loss (x: diverged; top line: non-finite)")
    ax.set_title(f"{name}: learning-rate sweep", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(results: dict[str, Any], path: Path) -> None:
    """Bars: each timed step over optax.sgd's and optax.adam's, per task."""
    plt = pyplot()
    tasks = results["tasks"]
    cols = min(2, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(7 * cols, 5.5 * rows), sharey=True, squeeze=False
    )
    axes = axes.ravel()
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    for ax, (name, task) in zip(axes, tasks.items(), strict=False):
        r = ratios(task)
        entries = list(r)
        y = np.arange(len(entries))
        ax.barh(y - 0.2, [r[e]["optax.sgd"] for e in entries], 0.4, label="x optax.sgd")
        ax.barh(
            y + 0.2, [r[e]["optax.adam"] for e in entries], 0.4, label="x optax.adam"
        )
        for x, c in ((1.0, "black"), (1.05, "gray"), (1.5, "orange"), (2.7, "red")):
            ax.axvline(x, color=c, linewidth=0.8, linestyle=":")
        ax.set_yticks(y, entries, fontsize=7)
        ax.set_xlabel("cost per step (ratio; dotted: 1, 1.05, 1.5, 2.7)")
        ax.set_title(name, fontsize=10)
    axes[0].invert_yaxis()  # once: the y axis is shared
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(results: dict[str, Any], out: Path, rel: Path) -> dict[str, Any]:
    """Writes every PNG into ``out``; returns their paths relative to ``rel``."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"curves": {}, "sweep": {}}
    for name, task in results["tasks"].items():
        for kind, fn in (("curves", plot_curves), ("sweep", plot_sweep)):
            p = out / f"{kind}_{name}.png"
            fn(task, name, p)
            paths[kind][name] = relative(p, rel)
    p = out / "cost_per_step.png"
    plot_cost(results, p)
    paths["cost"] = relative(p, rel)
    return paths
