"""``lm_spikes``' report, from its JSON alone: the summary the goals are
judged on, the goals, the Markdown section and the two plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.figures import line_styles, loss_limits, pyplot, save
from benchmarks.lm_spikes.peers import BASELINE, GEN, RATE_FREE, UNTUNED
from benchmarks.lm_spikes.runs import RATE_FREE_PHASES, SPIKE_FACTOR, SPIKE_WINDOW
from benchmarks.lm_spikes.settings import (
    LABELS,
    MULTIPLIERS,
    NAME,
    START_LABELS,
    STARTS,
)
from benchmarks.markdown import fmt, table
from benchmarks.study import Goal

TARGET_SLACK = 0.02  # 2% above the tuned baseline's final bits per byte
# The share of a run during which the rate-free configuration measures.
LEVEL_SHARE = 0.1


def label(multiplier: float | None) -> str:
    """``1x``, ``0.01x``, ...; ``untuned`` for ``None``."""
    for ms, labels in ((MULTIPLIERS, LABELS), (STARTS, START_LABELS)):
        for m, lab in zip(ms, labels, strict=True):
            if multiplier is not None and math.isclose(m, multiplier, rel_tol=1e-9):
                return lab
    return "untuned" if multiplier is None else f"{multiplier:g}x"


def _first_at(run: dict[str, Any], target: float) -> int | None:
    """The first evaluated step at which a run's bits/byte reach ``target``."""
    return next(
        (s for s, v in zip(run["eval_steps"], run["bpb"], strict=True) if v <= target),
        None,
    )


BEGIN = f"<!-- BEGIN GENERATED: `python -m benchmarks --tasks {NAME}` -->"
END = f"<!-- END GENERATED: {NAME} -->"


def _mean_bpb(runs: list[dict[str, Any]]) -> float:
    values = [r["final_bpb"] for r in runs]
    if any(r["diverged"] for r in runs) or not all(map(math.isfinite, values)):
        return math.nan
    return float(np.mean(values))


def summary(study: dict[str, Any]) -> dict[str, Any]:
    """The numbers the goals are judged on."""
    base = _mean_bpb(study["seeds"][BASELINE])
    target = base * (1 + TARGET_SLACK)
    step_s = {n: t["median"] for n, t in study["per_step"].items()}
    measuring, held = (step_s[k] for k in RATE_FREE_PHASES)
    # The rate-free configuration's step over a run: it measures in the
    # first tenth.
    step_s[RATE_FREE] = LEVEL_SHARE * measuring + (1 - LEVEL_SHARE) * held
    out: dict[str, Any] = {
        "baseline_bpb": base,
        "target_bpb": target,
        "peers": {},
        "untuned": {},
        "phase_cost_ratio": {k: step_s[k] / step_s[BASELINE] for k in RATE_FREE_PHASES},
    }
    for name, runs in study["runs"].items():
        seeds = study["seeds"][name]
        reached = [_first_at(r, target) for r in seeds]
        hit = [s for s in reached if s is not None]
        out["peers"][name] = {
            "spikes": [r["spikes"] for r in runs],
            "diverged": [r["diverged"] for r in runs],
            "gap_percent": [100 * (r["final_bpb"] - base) / base for r in runs],
            "seeds_bpb": [r["final_bpb"] for r in seeds],
            "seeds_mean": _mean_bpb(seeds),
            "best_multiplier": seeds[0]["multiplier"],
            "cost_ratio": step_s[name] / step_s[BASELINE],
            "seconds_to_target": (
                float(np.median(hit)) * step_s[name] if len(hit) == len(seeds) else None
            ),
        }
    for name, untuned in study["untuned"].items():
        out["untuned"][name] = {
            "learning_rate": untuned[0]["learning_rate"],
            "bpb": [r["final_bpb"] for r in untuned],
            "mean": _mean_bpb(untuned),
            "gap_percent": 100 * (_mean_bpb(untuned) - base) / base,
            "spikes": [r["spikes"] for r in untuned],
        }
    # Time to the tuned recipe's quality, tuning included: the baseline's
    # first `sweep_points` sweep runs (each a whole run; the tuned quality
    # is the end of the best), against one untuned run of the rate-free
    # configuration (seed 0) until it first reaches that quality (within
    # 0%, 1%, 2%).
    steps = study["settings"]["steps"]
    sweep = study["settings"]["sweep_points"] * steps * step_s[BASELINE]
    ours = study["untuned"][RATE_FREE][0]
    out["time_to_quality"] = {
        "sweep_seconds": sweep,
        "rate_free_seconds": {
            slack: (
                None
                if (s := _first_at(ours, base * (1 + slack / 100))) is None
                else s * step_s[RATE_FREE]
            )
            for slack in (0, 1, 2)
        },
    }
    return out


def goals(study: dict[str, Any]) -> list[Goal]:
    """The goals of the spike study, then the rate-free issue's: what was
    measured, and whether each holds."""
    s = summary(study)
    ours = [
        n
        for n, f in study["families"].items()
        if f == "lyapopt" and study["runs"][n][0]["multiplier"] in MULTIPLIERS
    ]
    peers_ = s["peers"]
    calm = {
        n: sum(peers_[n]["spikes"]) == 0 and not any(peers_[n]["diverged"])
        for n in ours
    }
    worst = {n: max(peers_[n]["gap_percent"]) for n in ours}
    return [
        Goal(
            "1. no spike, no divergence for lyapopt at 1x-30x",
            ", ".join(f"{n}: spikes {peers_[n]['spikes']}" for n in ours),
            all(calm.values()),
        ),
        Goal(
            "2. lyapopt within 1% of the tuned baseline at every multiplier",
            ", ".join(f"{n}: worst {w:+.1f}%" for n, w in worst.items()),
            any(w <= 1.0 for w in worst.values()),
        ),
        Goal(
            "3. lyapunov_adam() untuned within 1% of the tuned baseline",
            f"{s['untuned']['lyapunov_adam']['gap_percent']:+.2f}% "
            f"({s['untuned']['lyapunov_adam']['mean']:.4f} vs "
            f"{s['baseline_bpb']:.4f} bits/byte)",
            s["untuned"]["lyapunov_adam"]["gap_percent"] <= 1.0,
        ),
        Goal(
            "4. step cost at most 1.5x the baseline's",
            ", ".join(f"{n}: {peers_[n]['cost_ratio']:.2f}x" for n in ours),
            any(peers_[n]["cost_ratio"] <= 1.5 for n in ours),
        ),
        *rate_free_goals(study, s),
    ]


def rate_free_goals(study: dict[str, Any], s: dict[str, Any]) -> list[Goal]:
    """The rate-free issue's goals on this study (its digits half is the
    suite's)."""
    free = s["untuned"][RATE_FREE]
    gaps = s["peers"][RATE_FREE]["gap_percent"]
    starts = study["runs"][RATE_FREE]
    cost = s["peers"][RATE_FREE]["cost_ratio"]
    phases = ", ".join(f"{k} {v:.2f}x" for k, v in s["phase_cost_ratio"].items())
    t = s["time_to_quality"]
    times = t["rate_free_seconds"]
    ratio = {k: None if v is None else v / t["sweep_seconds"] for k, v in times.items()}
    return [
        Goal(
            "R1. rate-free untuned within 1% of the tuned recipe's 3-seed mean",
            f"{free['gap_percent']:+.2f}% ({free['mean']:.4f} vs "
            f"{s['baseline_bpb']:.4f}; started at {free['learning_rate']:g})",
            free["gap_percent"] <= 1.0,
        ),
        Goal(
            "R2. rate-free within 2% of the tuned recipe from every start, 0.01x-30x",
            ", ".join(
                f"{label(r['multiplier'])} {g:+.1f}%"
                for r, g in zip(starts, gaps, strict=True)
            )
            + f"; {GEN}: "
            + ", ".join(
                f"{label(r['multiplier'])} {g:+.1f}%"
                for r, g in zip(
                    study["runs"][GEN], s["peers"][GEN]["gap_percent"], strict=True
                )
            ),
            max(gaps) <= 2.0,
        ),
        Goal(
            "R3. rate-free step at most 1.3x the recipe's",
            f"{cost:.2f}x over a run ({phases}, weighted "
            f"{LEVEL_SHARE:g} / {1 - LEVEL_SHARE:g})",
            cost <= 1.3,
        ),
        Goal(
            "R4. time to the tuned quality, tuning included, at most 0.3x the "
            "recipe's 5-point sweep",
            f"sweep {t['sweep_seconds']:.0f} s; one untuned rate-free run to "
            + ", ".join(
                f"+{k}%: " + ("never" if v is None else f"{times[k]:.0f} s ({v:.2f}x)")
                for k, v in ratio.items()
            ),
            ratio[0] is not None and ratio[0] <= 0.3,
        ),
    ]


def _f(x: float | None, spec: str = ".3f") -> str:
    return fmt(x, spec)


def markdown(study: dict[str, Any], plots: dict[str, str]) -> str:
    """The generated section of RESULTS.md."""
    meta = study["meta"]
    s = summary(study)
    st = study["settings"]
    lines = [
        BEGIN,
        "",
        f"## Loss spikes on a language model (`{NAME}`)",
        "",
        f"    {meta['command']}",
        "",
        f"{study['title']}: {st['num_params']:,} parameters, {st['steps']} steps, "
        f"validation bits per byte on {st['eval_windows']} held-out windows every "
        f"{st['eval_every']} steps. The whole study took "
        f"{study['wall_seconds'] / 60:.1f} minutes"
        + (" (`--quick`: a smoke test, not results)." if meta.get("quick") else ".")
        + f" Machine: {meta['machine']['cpu_model']}, `nproc` = "
        f"{meta['machine']['nproc']}.",
        "",
        f"- Baseline (`{BASELINE}`): AdamW (b2 0.95), warmup over 5% of the steps "
        "then cosine decay to a tenth, weight decay 0.1, `clip_by_global_norm(1.0)`. "
        f"Its sweep (seed 0): "
        + ", ".join(
            f"{r['learning_rate']:.3g} → {_f(r['final_bpb'])}" for r in study["sweep"]
        )
        + f"; best rate (1x) = {study['best_lr']:.3g}.",
        f"- Spike: a step whose batch loss exceeds {SPIKE_FACTOR}x the median of "
        f"the previous {SPIKE_WINDOW} steps' batch losses (a non-finite loss "
        "counts). Diverged: a non-finite final loss, or one above the initial.",
        "- Learning-rate-free peers run once, at their authors' default rate "
        "(untuned): the baseline's multiplier means nothing to them, and their "
        "one run stands in every column. Every other peer runs at the "
        "multiplier times the baseline's best rate.",
        "",
        "**Final validation bits/byte (seed 0) and spikes, at each multiplier**",
        "",
    ]
    rows, started = [], []
    for name, runs in study["runs"].items():
        if runs[0]["multiplier"] in STARTS and len(runs) == len(STARTS):
            started.append(
                [
                    f"`{name}`",
                    study["families"][name],
                    *(
                        f"{_f(r['final_bpb'])}{' (div.)' if r['diverged'] else ''}"
                        f" / {r['spikes']}"
                        for r in runs
                    ),
                ]
            )
            continue
        cells = [
            f"{_f(r['final_bpb'])}{' (div.)' if r['diverged'] else ''} / {r['spikes']}"
            for r in runs
        ]
        if len(runs) == 1:  # learning-rate-free: one run, at its default
            cells += ["(rate-free: the 1x run)"] * (len(MULTIPLIERS) - 1)
        rows.append([f"`{name}`", study["families"][name], *cells])
    lines += table(
        ["peer", "family", *(f"{m}: bits/byte / spikes" for m in LABELS)],
        rows,
        "ll" + "r" * 4,
    )
    lines += [
        "",
        "**The rate set by measurement, from each starting rate** (seed 0; the "
        "start as a multiple of the baseline's best rate; final bits/byte / "
        "spikes)",
        "",
    ]
    lines += table(
        ["peer", "family", *(f"from {m}" for m in START_LABELS)],
        started,
        "ll" + "r" * len(STARTS),
    )
    lines += [
        "",
        f"**At each peer's best multiplier, {st['seeds']} seeds; cost at 1x** "
        f"(target for the time: {_f(s['target_bpb'])} bits/byte, the baseline's "
        f"mean + {100 * TARGET_SLACK:g}%)",
        "",
    ]
    rows = []
    for name, p in s["peers"].items():
        b = p["seeds_bpb"]
        free = len(study["runs"][name]) == 1
        rows.append(
            [
                f"`{name}`",
                "default" if free else label(p["best_multiplier"]),
                f"{_f(p['seeds_mean'])} [{_f(min(b))}-{_f(max(b))}]",
                f"{100 * (p['seeds_mean'] - s['baseline_bpb']) / s['baseline_bpb']:+.2f}%",
                f"{p['cost_ratio']:.2f}",
                _f(p["seconds_to_target"], ".3g"),
            ]
        )
    for name, u in s["untuned"].items():
        rows.append(
            [
                f"`{UNTUNED}`" if name == "lyapunov_adam" else f"`{name}` untuned",
                f"lr {u['learning_rate']:g}",
                f"{_f(u['mean'])} [{_f(min(u['bpb']))}-{_f(max(u['bpb']))}]",
                f"{u['gap_percent']:+.2f}%",
                "",
                "",
            ]
        )
    lines += table(
        [
            "peer",
            "best at",
            "bits/byte, mean [min-max]",
            "vs baseline",
            "step cost x baseline",
            "seconds to target",
        ],
        rows,
    )
    lines += ["", "**Goals**", ""]
    lines += table(
        ["goal", "measured", "holds"],
        [[g.goal, g.measured, "yes" if g.holds else "**no**"] for g in goals(study)],
        "lll",
    )
    lines += [
        "",
        f"![batch loss at 10x, every peer]({plots['curves']})",
        "",
        f"![final bits/byte against the multiplier]({plots['rates']})",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def _columns(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per multiplier: a learning-rate-free peer's one run stands in
    every column."""
    return runs * len(MULTIPLIERS) if len(runs) == 1 else runs


def _at(runs: list[dict[str, Any]], multiplier: float) -> dict[str, Any]:
    """A peer's run at ``multiplier`` (a learning-rate-free peer's one run)."""
    if len(runs) == 1:
        return runs[0]
    return next(r for r in runs if math.isclose(r["multiplier"], multiplier))


def plot(study: dict[str, Any], out: Path, rel: Path) -> dict[str, str]:
    """The two figures: batch loss at 10x, and bits/byte against the multiplier."""
    plt = pyplot()
    names = list(study["runs"])
    style = line_styles(
        names, lambda n: study["families"][n] == "lyapopt", widths=(1.6, 0.8)
    )
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    finite = []
    for name in names:
        run = _at(study["runs"][name], 10.0)
        loss = np.asarray(run["batch_loss"], np.float64)
        finite += list(loss[np.isfinite(loss)])
        ax.plot(np.arange(len(loss)), loss, label=name, **style[name])
    loss_limits(ax, finite)
    ax.set_xlabel("step")
    ax.set_ylabel("batch cross-entropy (nats)")
    ax.set_title(f"{NAME}: every peer at 10x (spikes are the peaks)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    curves = save(fig, out / f"{NAME}_curves_10x.png", rel)

    fig, ax = plt.subplots(figsize=(8, 5))

    def ok(r: dict[str, Any]) -> bool:
        return not r["diverged"] and math.isfinite(r["final_bpb"])

    kept = [r["final_bpb"] for n in names for r in study["runs"][n] if ok(r)]
    top = 1.05 * max(kept, default=1.0)  # diverged runs are drawn here, as x
    for name in names:
        runs = _columns(study["runs"][name])  # rate-free: level across the axis
        xs = (
            MULTIPLIERS
            if len(study["runs"][name]) == 1
            else [r["multiplier"] for r in runs]
        )
        y = [r["final_bpb"] if ok(r) else top for r in runs]
        ax.plot(xs, y, marker="o", markersize=3, label=name, **style[name])
        bad = [(m, top) for m, r in zip(xs, runs, strict=True) if not ok(r)]
        if bad:
            ax.scatter(
                *zip(*bad, strict=True), marker="x", s=40, color=style[name]["color"]
            )
    base = summary(study)["baseline_bpb"]
    ax.axhline(base, color="black", linewidth=0.6)
    ax.axhline(1.01 * base, color="gray", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ticks = sorted({*MULTIPLIERS, *STARTS})
    ax.set_xticks(ticks, [label(m) for m in ticks])
    ax.set_xlabel("learning-rate multiplier")
    ax.set_ylabel("final validation bits/byte (x at the top: diverged)")
    ax.set_title(
        f"{NAME}: quality against rate (lines: tuned baseline, +1%)", fontsize=10
    )
    ax.legend(fontsize=7, ncol=2)
    rates = save(fig, out / f"{NAME}_rates.png", rel)
    return {"curves": curves, "rates": rates}
