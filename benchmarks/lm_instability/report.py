"""The report, from the JSON alone: the goals of issue 21 as measured, the
Markdown section, the figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.figures import line_styles, loss_limits, pyplot, save
from benchmarks.lm_instability.peers import ARCH, RECIPE
from benchmarks.lm_instability.settings import NAME
from benchmarks.markdown import fmt, table
from benchmarks.study import Goal

BEGIN = f"<!-- BEGIN GENERATED: `python -m benchmarks --tasks {NAME}` -->"
END = f"<!-- END GENERATED: {NAME} -->"
HOLDS = {True: "yes", False: "**no**", None: "measured"}


def _f(x: float | None, spec: str = ".3f") -> str:
    return fmt(x, spec)


def _at_rate(t: dict[str, Any], name: str) -> dict[str, Any]:
    """A peer's run at the trigger's own rate (the last of the grid)."""
    return t["runs"][name][-1]


def clean_curve(run: dict[str, Any], bad: list) -> np.ndarray:
    """A run's batch losses with the bad batches' own losses as NaN."""
    loss = np.asarray(run["batch_loss"], np.float64).copy()
    for step, _ in bad:
        if step < len(loss):
            loss[step] = np.nan
    return loss


def above_initial(run: dict[str, Any], bad: list) -> int:
    """Steps (after the first 10) whose batch loss is above the first step's
    or not finite, the bad batches' own excepted: blow-ups that the spike
    rule misses in its first 50 steps, or once its median has caught up."""
    loss = np.asarray(run["batch_loss"], np.float64)
    skip = {s for s, _ in bad}
    return int(
        sum(
            1
            for t in range(10, len(loss))
            if t not in skip and not (loss[t] <= loss[0])
        )
    )


def burst_starts(bad: list) -> set[int]:
    """The first step of each run of consecutive bad steps."""
    steps = {s for s, _ in bad}
    return {s for s in steps if s - 1 not in steps}


def unstable(t: dict[str, Any]) -> bool:
    """Whether the recipe spikes (>= 5) or diverges at the trigger's rate."""
    r = _at_rate(t, RECIPE)
    return r["spikes"] >= 5 or r["diverged"]


def goals(study: dict[str, Any]) -> list[Goal]:
    """Issue 21's four goals: what was measured, and whether each holds."""
    fam = study["families"]
    ours = [n for n, f in fam.items() if f == "lyapopt"]
    opt_side = [n for n, f in fam.items() if f == "optimizer-side fix"]
    trig = study["triggers"]
    bad = [k for k, t in trig.items() if unstable(t)]
    calm = {
        n: [
            (_at_rate(trig[k], n)["spikes"], _at_rate(trig[k], n)["diverged"])
            for k in bad
        ]
        for n in ours
    }
    # A study of a part of the peers (``python -m benchmarks.lm_instability
    # --peers``) may have no lyapopt peer: then no goal of lyapopt's holds.
    # Goal 1 holds where one lyapopt configuration is calm in every such
    # setting (the evidence lists each one).
    g1 = any(all(s == 0 and not d for s, d in v) for v in calm.values())
    g1 = g1 and bool(bad) and bool(ours)
    sens_rows, g2 = [], bool(ours)
    for k, t in trig.items():
        s = t["sensitivity"]
        best_ours = min((s[n] for n in ours), default=math.inf)
        others = [s[n] for n in opt_side]
        ok = best_ours <= min(others, default=math.inf) and best_ours <= s.get(
            ARCH, math.inf
        )
        g2 &= ok
        sens_rows.append(f"{k}: " + ", ".join(f"{n} {v:.3f}" for n, v in s.items()))
    bad_rows = []
    for k, t in trig.items():
        starts = burst_starts(t["trigger"]["bad"])
        for n in (RECIPE, *ours):
            for b in _at_rate(t, n)["bad_batches"]:
                if b["step"] not in starts:
                    continue
                cell = f"{k}/{n} step {b['step']} ({b['kind']}): next-5 x{b['next_5_max_ratio']:.2f}"
                if "guard_scale" in b:
                    cell += f", guard scale {b['guard_scale']:g}"
                if "skipped" in b:
                    cell += ", skipped" if b["skipped"] else ", not skipped"
                bad_rows.append(cell)
    cost = study.get("cost", {})
    ratio = {
        f"{k}/{n}": c[n]["median"] / c[RECIPE]["median"]
        for k, c in cost.items()
        for n in ours
        if n in c and RECIPE in c and n != "lyapunov_adam"
    }
    return [
        Goal(
            "1. lyapopt: 0 spikes, 0 divergences where the recipe spikes or diverges",
            f"settings where the recipe spikes: {bad or 'none'}; "
            + ", ".join(f"{n}: {v}" for n, v in calm.items()),
            g1,
        ),
        Goal(
            "2. lyapopt: lowest rate sensitivity of the optimizer-side fixes, "
            "<= the architectural fix",
            "; ".join(sens_rows),
            g2,
        ),
        Goal(
            "3. bad data: what the guard does at a bad batch (measured, no threshold)",
            "; ".join(bad_rows) or "no bad batches in these settings",
            None,
        ),
        Goal(
            "4. the recommended configurations' step <= 1.5x the recipe's",
            ", ".join(f"{k}: {v:.2f}x" for k, v in ratio.items()) or "not timed",
            bool(ratio) and all(v <= 1.5 for v in ratio.values()),
        ),
    ]


def markdown(study: dict[str, Any], plots: dict[str, str]) -> str:
    """The generated section of RESULTS.md."""
    st = study["settings"]
    meta = study["meta"]
    lines = [
        BEGIN,
        "",
        f"## Loss spikes provoked (`{NAME}`)",
        "",
        f"    {meta['command']}",
        "",
        f"{study['title']}: {study['num_params']:,} parameters, {st['steps']} steps, "
        f"seed {st['seed']}; the study took {meta['wall_seconds'] / 60:.1f} minutes"
        + (" (`--quick`: a smoke test, not results)." if meta.get("quick") else ".")
        + f" Machine: {meta['machine']['cpu_model']}, `nproc` = "
        f"{meta['machine']['nproc']}.",
        "",
        "Spike: a step whose batch loss exceeds 1.5x the median of the previous "
        "50 (lm_spikes' rule), a bad batch's own loss excluded. Diverged: the "
        "parameters turned non-finite, or the final train loss is above the "
        "initial. Recovery: steps until the median of 10 batch losses is back at "
        "the pre-spike median. Steps above the initial loss: blow-ups that the "
        "spike rule misses (it needs 50 steps of history, and its median "
        "follows a long blow-up). Sensitivity (Wortsman et al. 2023): the mean over "
        "the rate grid of the final bits/byte (a diverged run at the initial) "
        "minus the best.",
        "",
    ]
    for k, t in study["triggers"].items():
        tr = t["trigger"]
        warmup = "5%" if tr["warmup"] else "none"
        lines += [
            f"### `{k}`: {tr['description']}",
            "",
            f"AdamW b2 {tr['b2']}, eps {tr['eps']:g}, warmup {warmup}, "
            f"{'clip 1.0' if tr['clip'] else 'no clipping'}, rate {tr['lr']:g}"
            + (f"; bad batches {tr['bad']}" if tr["bad"] else "")
            + ". Rate grid: "
            + ", ".join(f"{r:.3g}" for r in t["rates"])
            + ".",
            "",
        ]
        rows = []
        for n, runs in t["runs"].items():
            r = runs[-1]
            rec = [x for x in r["recovery"] if x is not None]
            guard = (
                f"{r['rejections']} / {r['backtracks']}" if "rejections" in r else ""
            )
            rows.append(
                [
                    f"`{n}`",
                    f"{r['spikes']} ({len(r['events'])})",
                    str(above_initial(r, tr["bad"])),
                    "yes" if r["diverged"] else "no",
                    _f(r["final_bpb"]),
                    (f"{np.median(rec):.0f}" if rec else "—")
                    + f" ({len(rec)}/{len(r['events'])})",
                    guard,
                    " ".join(_f(x["final_bpb"], ".2f") for x in runs),
                    f"{t['sensitivity'][n]:.3f}",
                ]
            )
        lines += table(
            [
                "peer",
                "spikes (events)",
                "steps above the initial loss",
                "diverged",
                "final bits/byte",
                "recovery, median steps (recovered)",
                "guard rejections / backtracks",
                "final bits/byte over the grid",
                "sensitivity",
            ],
            rows,
            "lrrrrrrrr",
        )
        lines.append("")
    lines += ["**Goals**", ""]
    lines += table(
        ["goal", "measured", "holds"],
        [[g.goal, g.measured, HOLDS[g.holds]] for g in goals(study)],
        "lll",
    )
    lines.append("")
    for k in study["triggers"]:
        lines += [f"![{k}: batch loss]({plots[f'curves_{k}']})", ""]
    lines += [f"![final bits/byte against the rate]({plots['rates']})", "", END]
    return "\n".join(lines) + "\n"


def plot(study: dict[str, Any], out: Path, rel: Path) -> dict[str, str]:
    """Each setting's batch-loss curves at its rate; final loss against rate."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    names = list(study["families"])
    style = line_styles(
        names, lambda n: study["families"][n] == "lyapopt", widths=(1.4, 0.8)
    )
    paths: dict[str, str] = {}
    trig = study["triggers"]
    for k, t in trig.items():
        fig, ax = plt.subplots(figsize=(9, 5))
        finite = []
        bad = t["trigger"]["bad"]
        for n in names:
            loss = clean_curve(t["runs"][n][-1], bad)
            finite += list(loss[np.isfinite(loss)])
            ax.plot(np.arange(len(loss)), loss, label=n, **style[n])
            ev = t["runs"][n][-1]["spike_steps"]
            ax.scatter(ev, loss[ev], s=8, color=style[n]["color"])
        for s in burst_starts(bad):
            if s < study["settings"]["steps"]:
                ax.axvline(s, color="gray", linewidth=0.5, linestyle=":")
        loss_limits(ax, finite)
        ax.set_xlabel("step (dotted: bad batches, whose own losses are left out)")
        ax.set_ylabel("batch loss (nats; dots: spikes)")
        ax.set_title(
            f"{NAME} / {k}: every peer at rate {t['trigger']['lr']:g}", fontsize=10
        )
        ax.legend(fontsize=7, ncol=2)
        paths[f"curves_{k}"] = save(fig, out / f"{NAME}_{k}_curves.png", rel, dpi=100)
    fig, axes = plt.subplots(1, len(trig), figsize=(6 * len(trig), 4.5), squeeze=False)
    for ax, (k, t) in zip(axes[0], trig.items(), strict=True):
        init = t["runs"][RECIPE][0]["initial_bpb"]
        for n in names:
            runs = t["runs"][n]
            y = [
                r["final_bpb"]
                if math.isfinite(r["final_bpb"]) and not r["diverged"]
                else init
                for r in runs
            ]
            ax.plot(t["rates"], y, marker="o", markersize=3, label=n, **style[n])
        ax.axhline(init, color="black", linewidth=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation bits/byte (diverged: at the initial)")
        ax.set_title(k, fontsize=10)
    axes[0][0].legend(fontsize=7)
    paths["rates"] = save(fig, out / f"{NAME}_rates.png", rel, dpi=100)
    return paths
