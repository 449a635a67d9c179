"""Simulation sweeps: (policy x parameters x seed) runs of the simulated shop, in-process or as
Dask tasks, gathered into one table: ``banditrec sweep --config FILE [--scheduler ADDRESS]``.

Details: docs/dask.md, "The sweep file and its seeds".
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from banditrec.errors import ValidationError
from simulator.config import read_toml

_TOP_KEYS = {"seed", "replicates", "days", "slots", "candidates", "common_random_numbers", "simulator", "policy"}
_POLICY_KEYS = {"name", "params", "grid"}


@dataclass(frozen=True)
class SweepRun:
    """One simulator run of a sweep."""

    index: int
    spec: str
    replicate: int
    seed: np.random.SeedSequence


@dataclass(frozen=True)
class SweepConfig:
    runs: tuple[SweepRun, ...]
    simulator: object  # SimConfig
    days: int
    slots: int
    candidates: int
    seed: int
    replicates: int
    common_random_numbers: bool
    specs: tuple[str, ...]


@dataclass(frozen=True)
class RunResult:
    """A run's figures (``seconds`` is wall time: not part of the comparable table)."""

    spec: str
    replicate: int
    n_decisions: int
    ltv: float
    retention: float
    margin: float
    clicks_per_carousel: float
    purchases_per_carousel: float
    seconds: float

    def row(self) -> tuple:
        return (
            self.spec,
            self.replicate,
            self.n_decisions,
            self.ltv,
            self.retention,
            self.margin,
            self.clicks_per_carousel,
            self.purchases_per_carousel,
        )


TABLE_COLUMNS = (
    "spec",
    "replicate",
    "n_decisions",
    "ltv",
    "retention",
    "margin",
    "clicks_per_carousel",
    "purchases_per_carousel",
)


def _int(data: dict, key: str, default: int, low: int, source: str) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValidationError(f"{source}: {key} must be an integer >= {low}, got {v!r}", key)
    return v


def _spec(name: str, params: dict) -> str:
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={v}" for k, v in params.items())


def parse_config(data: dict, source: str = "sweep config") -> SweepConfig:
    """A sweep from the TOML file's contents (keys: docs/dask.md, "The sweep file and its seeds")."""
    from banditrec.policies import make
    from simulator.config import SimConfig

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ValidationError(
            f"{source}: unknown key {unknown[0]!r}; known: {', '.join(sorted(_TOP_KEYS))}", unknown[0]
        )
    seed = _int(data, "seed", 0, 0, source)
    replicates = _int(data, "replicates", 1, 1, source)
    days = _int(data, "days", 5, 1, source)
    slots = _int(data, "slots", 3, 1, source)
    candidates = _int(data, "candidates", 20, 1, source)
    crn = data.get("common_random_numbers", True)
    if not isinstance(crn, bool):
        raise ValidationError(
            f"{source}: common_random_numbers must be true or false, got {crn!r}", "common_random_numbers"
        )
    sim = data.get("simulator", {})
    if not isinstance(sim, dict):
        raise ValidationError(f"{source}: [simulator] must be a table of SimConfig fields", "simulator")
    config = SimConfig.from_dict(sim, source=f"{source} [simulator]")
    policies = data.get("policy")
    if not isinstance(policies, list) or not policies:
        raise ValidationError(f"{source}: give at least one [[policy]] table with a name", "policy")
    specs: list[str] = []
    for i, entry in enumerate(policies):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValidationError(f"{source}: policy {i} needs a name", "policy")
        bad = sorted(set(entry) - _POLICY_KEYS)
        if bad:
            raise ValidationError(
                f"{source}: policy {entry['name']!r} has unknown key {bad[0]!r}; known: "
                f"{', '.join(sorted(_POLICY_KEYS))}",
                bad[0],
            )
        params, grid = entry.get("params", {}), entry.get("grid", {})
        if not isinstance(params, dict) or not isinstance(grid, dict):
            raise ValidationError(f"{source}: policy {entry['name']!r}: params and grid must be tables", "policy")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValidationError(
                    f"{source}: policy {entry['name']!r}: grid.{key} must be a non-empty list, got {values!r}", key
                )
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            spec = _spec(entry["name"], {**params, **dict(zip(keys, combo))})
            make(spec, context_dim=1, item_dim=1, popularity=[1.0])  # a bad spec fails here, not on a worker
            if spec in specs:
                raise ValidationError(f"{source}: policy spec {spec!r} appears twice", "policy")
            specs.append(spec)
    root = np.random.SeedSequence(seed)
    pairs = [(spec, r) for r in range(replicates) for spec in specs]
    streams = root.spawn(replicates) if crn else root.spawn(len(pairs))
    runs = tuple(SweepRun(i, spec, r, streams[r] if crn else streams[i]) for i, (spec, r) in enumerate(pairs))
    return SweepConfig(runs, config, days, slots, candidates, seed, replicates, crn, tuple(specs))


def load_config(path) -> SweepConfig:
    return parse_config(read_toml(path, "sweep config"), source=str(path))


def run_one(run: SweepRun, shared: dict) -> RunResult:
    """One simulator run (a Dask task, or called in-process)."""
    from studies.simulate import simulate

    r = simulate(
        shared["simulator"],
        run.spec,
        shared["days"],
        seed=run.seed,
        n_slots=shared["slots"],
        n_candidates=shared["candidates"],
    )
    per = max(r.n_decisions, 1)
    return RunResult(
        spec=run.spec,
        replicate=run.replicate,
        n_decisions=r.n_decisions,
        ltv=r.ltv,
        retention=r.retention,
        margin=float(sum(k.margin for k in r.kpis)),
        clicks_per_carousel=r.expected["click"] / per,
        purchases_per_carousel=r.expected["purchase"] / per,
        seconds=r.seconds,
    )


def run_sweep(config: SweepConfig, *, client=None, progress: bool = False) -> list[RunResult]:
    """Every run of the sweep, in the config's order (in-process, or on ``client``)."""
    from banditrec.evaluation.tasks import run_tasks

    shared = {
        "simulator": config.simulator,
        "days": config.days,
        "slots": config.slots,
        "candidates": config.candidates,
    }
    return run_tasks(run_one, list(config.runs), client=client, shared=shared, progress=progress, desc="simulating")


def summary(config: SweepConfig, results: list[RunResult]) -> list[dict]:
    """Per spec: runs, mean and standard error over replicates of LTV and clicks per carousel,
    mean retention; and LTV minus the first spec's, paired by replicate."""
    by = {(r.spec, r.replicate): r for r in results}
    out = []
    base = config.specs[0]
    for spec in config.specs:
        rs = [r for r in results if r.spec == spec]
        ltv = np.array([r.ltv for r in rs])
        clicks = np.array([r.clicks_per_carousel for r in rs])
        diff = np.array(
            [by[(spec, r.replicate)].ltv - by[(base, r.replicate)].ltv for r in rs if (base, r.replicate) in by]
        )
        se = lambda x: float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")  # noqa: E731
        out.append(
            {
                "spec": spec,
                "runs": len(rs),
                "ltv": float(ltv.mean()),
                "ltv_se": se(ltv),
                "retention": float(np.mean([r.retention for r in rs])),
                "clicks": float(clicks.mean()),
                "clicks_se": se(clicks),
                "ltv_vs_first": float(diff.mean()),
                "ltv_vs_first_se": se(diff),
            }
        )
    return out


def summary_table(config: SweepConfig, results: list[RunResult]) -> str:
    rows = summary(config, results)
    w = max(len("spec"), *(len(r["spec"]) for r in rows))
    paired = "paired" if config.common_random_numbers else "unpaired"
    head = (
        f"{'spec':<{w}} {'runs':>4} {'LTV':>9} {'± se':>7} {'Δ LTV vs first':>15} {'± se':>7} "
        f"{'retention':>9} {'clicks/car.':>11} {'± se':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['spec']:<{w}} {r['runs']:>4} {r['ltv']:>9.3f} {r['ltv_se']:>7.3f} {r['ltv_vs_first']:>15.3f} "
            f"{r['ltv_vs_first_se']:>7.3f} {r['retention']:>9.3f} {r['clicks']:>11.4f} {r['clicks_se']:>7.4f}"
        )
    lines.append(f"({config.replicates} replicates of {config.days} days; Δ is {paired} by replicate)")
    return "\n".join(lines)


def write_outputs(config: SweepConfig, results: list[RunResult], out) -> Path:
    """``runs.csv`` (every run), ``sweep.md`` (the summary) and ``sweep.png`` (LTV per spec)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "runs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(TABLE_COLUMNS + ("seconds",))
        for r in results:
            writer.writerow([repr(v) if isinstance(v, float) else v for v in r.row()] + [f"{r.seconds:.3f}"])
    rows = summary(config, results)
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.errorbar([r["ltv"] for r in rows], y, xerr=[1.96 * np.nan_to_num(r["ltv_se"]) for r in rows], fmt="o", capsize=3)
    ax.set_yticks(y, [r["spec"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("lifetime value per customer (mean over replicates, 95% interval)")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    plt.close(fig)
    report = out / "sweep.md"
    report.write_text(
        f"# Simulation sweep\n\n{len(results)} runs.\n\n```\n{summary_table(config, results)}\n```\n\n"
        "![LTV per spec](sweep.png)\n\nEvery run: `runs.csv`.\n"
    )
    return report


__all__ = [
    "RunResult",
    "SweepConfig",
    "SweepRun",
    "load_config",
    "parse_config",
    "run_sweep",
    "summary",
    "summary_table",
    "write_outputs",
]
