"""The health monitor's report: the markdown text and its plots (matplotlib, Agg).
Details: docs/monitor.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .monitor import ALERT_EXIT, MonitorReport, RateRow, _fmt_ts

PLOTS = ("reward", "drift", "propensity", "lag")
TOP_FEATURES = 20  # features listed and plotted, by PSI


def _rate_lines(rows: list[RateRow], head: str) -> list[str]:
    lines = [f"| {head} | slots | reward | rate | 95% interval |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.key} | {r.slots:,} | {r.reward:,.1f} | {r.rate:.4f} | ({r.lower:.4f}, {r.upper:.4f}) |")
    return lines


def markdown_report(rep: MonitorReport) -> str:
    th = rep.thresholds
    alerts = rep.alerts
    out = [
        "# banditrec monitor",
        "",
        f"Log `{rep.db}`: {rep.n_decisions:,} decisions, {rep.n_slots:,} shown slots in the window "
        f"{_fmt_ts(rep.window[0])} .. {_fmt_ts(rep.window[1])}.",
        f"Reference window {_fmt_ts(rep.reference[0])} .. {_fmt_ts(rep.reference[1])}; "
        f"current window {_fmt_ts(rep.current[0])} .. {_fmt_ts(rep.current[1])}.",
        "",
        f"**{len(alerts)} alert(s)**"
        + (f": {', '.join(c.name for c in alerts)} (exit {ALERT_EXIT})" if alerts else " (exit 0)"),
        "",
        rep.checks_table(),
        "",
        f"## Reward rate ({rep.kind} per shown slot)",
        "",
        "Intervals: Wilson score (95%) when every slot's reward is 0 or 1, else normal (mean +- 1.96 sd/sqrt n).",
        "",
    ]
    for name in ("reference", "current"):
        r = rep.rate_windows[name]
        if r is not None:
            out.append(f"- {name} window: {r.rate:.4f} ({r.lower:.4f}, {r.upper:.4f}) over {r.slots:,} slots")
    out.append("")
    for by, head in (("day", "day (UTC)"), ("position", "slot position"), ("source", "candidate source")):
        out += _rate_lines(rep.rates[by], head) + [""]
    out += ["![reward rate](monitor-reward.png)", "", "## Feature drift (reference vs current)", ""]
    flagged = [s for s in rep.shifts if s.drifted]
    out.append(
        f"Rule: KS p < {th.drift_alpha:g}/m = {rep.drift_p_cut:.3g} (Bonferroni over m = "
        f"{len({(s.group, s.feature) for s in rep.shifts})} features) and PSI >= {th.psi_min:g}; "
        f"{len(flagged)} feature(s) drifted. Top {TOP_FEATURES} by PSI:"
    )
    out += [
        "",
        "| group | feature | PSI | KS | KS p | mean ref | mean cur | drifted |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in sorted(rep.shifts, key=lambda s: -s.psi)[:TOP_FEATURES]:
        out.append(
            f"| {s.group} | {s.feature} | {s.psi:.4f} | {s.ks:.4f} | {s.p_value:.3g} | {s.mean_reference:.4g} | "
            f"{s.mean_current:.4g} | {'**yes**' if s.drifted else ('ignored' if s.ignored else 'no')} |"
        )
    p = rep.propensity
    out += [
        "",
        "![feature drift](monitor-drift.png)",
        "",
        "## Propensity health (policy slots)",
        "",
        f"- slots: {p.slots:,} ({p.pending:,} pending)",
        f"- minimum conditional propensity {p.min_propensity:.4g}, minimum marginal {p.min_marginal:.4g}",
        f"- floor violations (conditional propensity < min_epsilon / (candidates - slots filled before)): "
        f"{p.floor_violations:,} of {p.floor_checked:,} ({p.floor_violation_share:.4%})",
        f"- ESS of the reference target ({p.target}): {p.ess:,.1f} ({p.ess_share:.4f} of the settled slots)",
        "",
        "![propensities](monitor-propensity.png)",
        "",
        "## Sample-ratio mismatch",
        "",
    ]
    srm = next(c for c in rep.checks if c.name == "srm")
    if rep.srm is None:
        out.append(f"Skipped: {srm.detail}.")
    else:
        out += ["| arm | users | configured share | observed share |", "|---|---:|---:|---:|"]
        total = sum(rep.srm.users)
        for a, n, sh in zip(rep.srm.arms, rep.srm.users, rep.srm.shares):
            out.append(f"| {a} | {n:,} | {sh:.4f} | {n / total:.4f} |")
        out.append(f"\nchi2 = {rep.srm.chi2:.3f}, p = {rep.srm.p_value:.3g}")
    q = rep.lag.quantiles
    out += ["", "## Reward join lag", ""]
    if q:
        out.append(
            f"{rep.lag.rewards:,} rewards (all kinds); lag p50 {q['p50']:,.0f} s, p90 {q['p90']:,.0f} s, "
            f"p99 {q['p99']:,.0f} s, max {q['max']:,.0f} s; late {rep.lag.late:,} ({rep.lag.late_share:.4%})."
        )
        out += ["", "![join lag](monitor-lag.png)"]
    else:
        out.append("No rewards in the window.")
    if rep.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in rep.notes]
    return "\n".join(out) + "\n"


def write_report(rep: MonitorReport, out: str | Path) -> Path:
    """``monitor.md`` and the ``monitor-*.png`` plots in ``out``; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep.plots = write_plots(rep, out)
    path = out / "monitor.md"
    path.write_text(markdown_report(rep))
    return path


def write_plots(rep: MonitorReport, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []

    def save(fig, name):
        path = out / f"monitor-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=72)
        plt.close(fig)
        paths.append(path)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), gridspec_kw={"width_ratios": [2, 1, 1]})
    for ax, by in zip(axes, ("day", "position", "source")):
        rows = rep.rates[by]
        x = np.arange(len(rows))
        rate = np.array([r.rate for r in rows])
        err = np.array([[r.rate - r.lower for r in rows], [r.upper - r.rate for r in rows]])
        if by == "day":
            ax.plot(x, rate, marker="o")
            ax.fill_between(x, rate - err[0], rate + err[1], alpha=0.25)
        else:
            ax.bar(x, rate, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(
            x, [r.key[5:] if by == "day" else r.key for r in rows], rotation=45 if by != "position" else 0, fontsize=7
        )
        ax.set_title(f"{rep.kind} rate by {by} (95%)", fontsize=9)
    save(fig, "reward")

    fig, ax = plt.subplots(figsize=(10, 3.6))
    top = sorted(rep.shifts, key=lambda s: -s.psi)[:TOP_FEATURES]
    if top:
        ax.bar(np.arange(len(top)), [s.psi for s in top], color=["tab:red" if s.drifted else "tab:gray" for s in top])
        ax.set_xticks(np.arange(len(top)), [f"{s.group}:{s.feature}" for s in top], rotation=60, ha="right", fontsize=7)
        ax.axhline(rep.thresholds.psi_min, color="k", ls="--", lw=1, label=f"PSI floor {rep.thresholds.psi_min:g}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "drift not tested (see the report's notes)", ha="center", transform=ax.transAxes)
    ax.set_ylabel("PSI")
    ax.set_title("feature shift, reference -> current (red: drifted)", fontsize=9)
    save(fig, "drift")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    p = rep.propensity
    if math.isfinite(p.min_marginal) and rep.rows is not None:
        window = rep.rows
        pol = window.source != "pinned"
        logs = [np.log10(v[np.isfinite(v) & (v > 0)]) for v in (window.propensity[pol], window.marginal[pol])]
        lo, hi = min(x.min(initial=0.0) for x in logs), max(x.max(initial=-1.0) for x in logs)
        bins = np.linspace(lo - 0.1, hi + 0.1, 41)
        for v, label in zip(logs, ("conditional", "marginal")):
            ax.hist(v, bins=bins.tolist(), alpha=0.55, label=label)
        ax.axvline(
            math.log10(max(rep.thresholds.min_propensity, 1e-12)), color="k", ls="--", lw=1, label="min_propensity"
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("log10 propensity")
    ax.set_title(f"propensities; floor violations {p.floor_violations:,}, ESS share {p.ess_share:.3f}", fontsize=9)
    save(fig, "propensity")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    if rep.lag.rewards and rep.rows is not None:
        lag = np.maximum(rep.rows.lag_s, 1e-3)
        lo, hi = math.log10(lag.min()), math.log10(lag.max())
        ax.hist(lag, bins=np.logspace(lo - 0.5, hi + 0.5, 41).tolist(), color="tab:blue", alpha=0.8, label="all")
        late = rep.rows.late
        if late.any():
            ax.hist(lag[late], bins=np.logspace(lo - 0.5, hi + 0.5, 41).tolist(), color="tab:red", label="late")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("reward ts - decision ts (seconds)")
    ax.set_ylabel("rewards")
    ax.set_title(f"join lag; late share {rep.lag.late_share:.3%}", fontsize=9)
    save(fig, "lag")
    return paths
