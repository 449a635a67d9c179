"""The study commands (demo, coverage, simulate, abtest, sweep, regret, sensitivity, simulate-ablation,
reorder, brains, rollout).

They join ``banditrec``'s command group through the ``banditrec.commands`` entry points in
``setup.cfg``; each drives the library on a simulated shop.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from banditrec.candidates.generator import SOURCES
from banditrec.cli import usage_errors
from banditrec.policies.base import DEFAULT_FLOOR
from simulator.scenarios import SCENARIOS

from .reorder_eval import REORDER_CONFIG

SCENARIO_NAMES = tuple(SCENARIOS)


@click.command()
@click.option(
    "--days", default=14, show_default=True, help="Days of the simulated shop to serve.", type=click.IntRange(min=2)
)
@click.option("--slots", default=5, show_default=True, help="Carousel slots per decision.", type=click.IntRange(min=1))
@click.option(
    "--candidates", default=30, show_default=True, help="Candidates per decision.", type=click.IntRange(min=1)
)
@click.option("--items", "n_items", default=None, type=click.IntRange(min=50), help="Catalog size (default 2,000).")
@click.option("--customers", default=None, type=click.IntRange(min=100), help="Customers (default 6,000).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--policy", default="linucb:alpha=1.0,epsilon=0.1", show_default=True, help="Logging policy spec.")
@click.option(
    "--target",
    "targets",
    multiple=True,
    default=("uniform", "popularity:epsilon=0.1", "linucb:alpha=0.5,epsilon=0.05"),
    show_default=True,
    help="Policy to evaluate off-policy (repeatable).",
)
@click.option("--out", default="out/demo", show_default=True, type=click.Path(file_okay=False))
@usage_errors
def demo(days, slots, candidates, n_items, customers, seed, policy, targets, out):
    """The simulated shop run as a real one: export its files, build, serve, learn, evaluate."""
    from studies.demo import DEMO_CONFIG, run_shop_demo

    click.echo(f"banditrec demo: the simulated shop through build, serve, learn and evaluate; seed {seed}")
    sizes = {k: v for k, v in (("n_items", n_items), ("n_customers", customers)) if v is not None}
    from threadpoolctl import threadpool_limits

    # one BLAS thread, as the service's workers run: small products only spin more threads
    with threadpool_limits(limits=1, user_api="blas"):
        result = run_shop_demo(
            days=days,
            n_slots=slots,
            n_candidates=candidates,
            seed=seed,
            out=out,
            policy=policy,
            targets=tuple(targets),
            config=DEMO_CONFIG.replace(**sizes),
            echo=click.echo,
        )
    click.echo("")
    click.echo(result.table())
    click.echo("")
    click.echo(
        f"{result.n_decisions:,} decisions, {result.n_events:,} events, {result.n_rewards:,} rewards in "
        f"{result.seconds:.0f} s; logged propensities match recomputed to {result.max_pscore_mismatch:.1e}"
    )
    click.echo(f"report: {result.report}")
    click.echo(f"log:    {result.db}")
    click.echo(f"shop:   {Path(out) / 'shop'}  (try: banditrec recommend --shop {Path(out) / 'shop'} --user u1)")


@click.command()
@click.option("--seeds", default=10, show_default=True, help="Number of seeded runs.", type=click.IntRange(min=1))
@click.option("--first-seed", default=0, show_default=True, help="Seeds run are first-seed .. first-seed+seeds-1.")
@click.option("--decisions", default=20_000, show_default=True, type=click.IntRange(min=1))
@click.option("--slots", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--policy", default="linucb:alpha=1.0,epsilon=0.1", show_default=True, help="Logging policy spec.")
@click.option("--target", "targets", multiple=True, default=("uniform", "popularity:epsilon=0.1"), show_default=True)
@usage_errors
def coverage(seeds, first_seed, decisions, slots, policy, targets):
    """Repeat the demo over many seeds: do the 95% intervals cover the exact truth 95% of the time?"""
    from studies.coverage import coverage_study, coverage_table

    rows = coverage_study(
        seeds=range(first_seed, first_seed + seeds),
        n_decisions=decisions,
        n_slots=slots,
        policy=policy,
        targets=tuple(targets),
        echo=click.echo,
    )
    click.echo("")
    click.echo(coverage_table(rows))


@click.command()
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="TOML sweep file: policies, parameter grids, replicates, simulator settings (docs/dask.md).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Dask scheduler (tcp://host:8786); default a LocalCluster on this machine.",
)
@click.option("--in-process", is_flag=True, help="Run every simulation in this process, without Dask.")
@click.option("--out", default="out/sweep", show_default=True, type=click.Path(file_okay=False))
@usage_errors
def sweep(config_file, scheduler, in_process, out):
    """Run (policy x parameters x seed) simulations as Dask tasks and gather one table and plot."""
    from studies.sweep import load_config, run_sweep, summary_table, write_outputs

    if scheduler and in_process:
        raise click.UsageError("--scheduler and --in-process exclude each other")
    config = load_config(config_file)
    click.echo(
        f"sweep: {len(config.specs)} specs x {config.replicates} replicates = {len(config.runs)} runs "
        f"of {config.days} days"
    )
    start = time.perf_counter()
    if in_process:
        results = run_sweep(config, progress=sys.stderr.isatty())
    else:
        from banditrec.evaluation import dask_client

        with dask_client(scheduler) as client:
            results = run_sweep(config, client=client, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    report = write_outputs(config, results, out)
    click.echo("")
    click.echo(summary_table(config, results))
    click.echo(f"{len(results)} runs in {seconds:.1f} s; report: {report}")


@click.command()
@click.option("--policy", "specs", multiple=True, required=True, help="Policy spec (repeatable).")
@click.option(
    "--scenario",
    default="shop",
    show_default=True,
    type=click.Choice(list(SCENARIO_NAMES)),
    help="The world (docs/simulator.md): today's shop, or one where exploration pays.",
)
@click.option("--seeds", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--first-seed", default=0, show_default=True, type=int)
@click.option("--decisions", default=50_000, show_default=True, type=click.IntRange(min=1))
@click.option("--slots", default=5, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--candidates",
    default=None,
    type=click.IntRange(min=1),
    help="Candidates per request [default: the scenario's, else 30].",
)
@click.option(
    "--batch", default=500, show_default=True, type=click.IntRange(min=1), help="Decisions between learning steps."
)
@click.option(
    "--floor",
    default=DEFAULT_FLOOR,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Exploration floor mixed into every slot (as the engine serves; 0 switches it off).",
)
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes running (policy, seed) pairs side by side.",
)
@click.option("--out", default="out/regret", show_default=True, type=click.Path(file_okay=False))
@usage_errors
def regret(specs, scenario, seeds, first_seed, decisions, slots, candidates, batch, floor, jobs, out):
    """Cumulative regret of each policy against the simulated shop's exact oracle, over seeds."""
    from pathlib import Path

    from studies.regret import regret_plot, regret_study, regret_table

    rows = regret_study(
        list(specs),
        range(first_seed, first_seed + seeds),
        scenario=scenario,
        n_decisions=decisions,
        n_slots=slots,
        n_candidates=candidates,
        batch=batch,
        min_epsilon=floor,
        jobs=jobs,
        echo=click.echo,
    )
    table = regret_table(rows)
    click.echo("")
    click.echo(table)
    plot = regret_plot(rows, Path(out) / "regret.png")
    (Path(out) / "regret.md").write_text(f"# Cumulative regret\n\n```\n{table}\n```\n\n![regret](regret.png)\n")
    click.echo(f"report: {Path(out) / 'regret.md'}")
    click.echo(f"plot:   {plot}")


@click.command()
@click.option(
    "--shop",
    "shop_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="A shop directory: the table is estimated off-policy from its log (--db).",
)
@click.option("--db", default=None, type=click.Path(dir_okay=False), help="With --shop: the shop's decision log.")
@click.option("--policy", "spec", default="linucb:alpha=1.0,epsilon=0.1", show_default=True)
@click.option(
    "--objective",
    default="price",
    show_default=True,
    help="Item column to blend in (maximised). The simulated shop's: price, royalty (paid per sale) or "
    "net (price - royalty); a shop directory's: any of its business columns.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--train",
    "n_train",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Simulated shop only: decisions the policy learns from.",
)
@click.option(
    "--test",
    "n_test",
    default=5_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Simulated shop only: held-out requests ranked.",
)
@click.option("--k", default=5, show_default=True, type=click.IntRange(min=1))
@usage_errors
def sensitivity(shop_dir, db, spec, objective, seed, n_train, n_test, k):
    """Amazon Personalize's objective-sensitivity table (off..high): in the simulated shop, or
    estimated from a shop directory's log (--shop, --db)."""

    if (shop_dir is None) != (db is None):
        raise click.UsageError("--shop and --db go together")
    if shop_dir is not None:
        from banditrec.evaluation import objective_sensitivity
        from banditrec.shop import Shop

        click.echo(objective_sensitivity(Shop(shop_dir), db, spec, objective, seed=seed).table())
        return
    from studies.regret import sensitivity_study, sensitivity_table

    rows = sensitivity_study(spec, objective, seed=seed, n_train=n_train, n_test=n_test, k=k)
    click.echo(sensitivity_table(rows, k, objective))


@click.command()
@click.option("--days", default=90, show_default=True, type=click.IntRange(min=1), help="Days to simulate.")
@click.option(
    "--customers", default=None, type=click.IntRange(min=1), help="Customers (default: the config's, 20,000)."
)
@click.option("--items", default=None, type=click.IntRange(min=1), help="Catalog items (default: the config's, 5,000).")
@click.option("--policy", default="uniform", show_default=True, help="Policy spec serving the carousel.")
@click.option(
    "--db",
    default="out/sim/sim.db",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Decision log to create (every decision and reward of the run).",
)
@click.option("--replace", is_flag=True, help="Delete --db first if it exists.")
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="TOML file of simulator settings (python -c 'import simulator; print(simulator.SimConfig.describe())').",
)
@click.option(
    "--scenario",
    default="shop",
    show_default=True,
    type=click.Choice(list(SCENARIO_NAMES)),
    help="The world (docs/simulator.md), applied over --config: today's shop or one where exploration "
    "pays; it also sets the default --candidates and --learn-kind.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--slots", default=5, show_default=True, type=click.IntRange(min=1), help="Carousel slots.")
@click.option(
    "--candidates",
    default=None,
    type=click.IntRange(min=1),
    help="Candidates per request [default: the scenario's, else 50].",
)
@click.option(
    "--learn-kind",
    default=None,
    type=click.Choice(("click", "purchase", "margin")),
    help="Reward the policy learns from at the end of each day [default: the scenario's, else click].",
)
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1), help="Print every N-th day's KPIs.")
@click.option(
    "--export-shop",
    "export_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Instead of simulating: write the shop's items, interactions (its pre-period) and users files, "
    "and a build config, to this directory -- a shop's own data, for `banditrec build`.",
)
@usage_errors
def simulate(
    days,
    customers,
    items,
    policy,
    db,
    replace,
    config_file,
    scenario,
    seed,
    slots,
    candidates,
    learn_kind,
    every,
    export_dir,
):
    """Run the simulated shop with a policy, logging every decision, and print daily KPIs."""
    from pathlib import Path

    from simulator import SimConfig
    from studies.simulate import simulate as run

    sc = SCENARIOS[scenario]
    candidates = candidates or sc.candidates or 50
    learn_kind = learn_kind or sc.reward
    config = SimConfig.from_toml(config_file) if config_file else SimConfig()
    changes = {k: v for k, v in (("n_customers", customers), ("n_items", items)) if v is not None}
    config = config.replace(**{**sc.sim, **changes})
    if export_dir is not None:
        from simulator.environment import Environment
        from simulator.export import export_shop

        env = Environment(config, seed=seed)
        env.recording = True
        files = export_shop(env, env.warm_up(), export_dir)
        click.echo(
            f"exported {files.n_items:,} items, {files.n_interactions:,} interactions and "
            f"{files.n_users:,} users to {export_dir}; build them with:"
        )
        click.echo(
            f"  banditrec build --items {files.items} --interactions {files.interactions} "
            f"--users {files.users} --config {files.config} --out SHOP_DIR"
        )
        return
    if replace:
        Path(db).unlink(missing_ok=True)
    state = {"n": 0}

    def echo(line):  # header, rule, then one line per day
        state["n"] += 1
        day = state["n"] - 3
        if day < 0 or day % every == 0 or day == days - 1:
            click.echo(line)

    result = run(
        config,
        policy,
        days,
        db=db,
        seed=seed,
        n_slots=slots,
        n_candidates=candidates,
        learn_kind=learn_kind,
        progress=sys.stderr.isatty(),
        echo=echo,
    )
    click.echo("")
    click.echo(
        f"{result.n_decisions:,} decisions and {result.n_rewards:,} rewards logged to {db} in {result.seconds:.0f} s"
    )
    click.echo(
        f"retention {result.retention:.3f}; lifetime value {result.ltv:.2f} per customer "
        f"(discounted margin, first {config.ltv_horizon_days} days)"
    )
    e = result.expected
    click.echo(
        f"exact expected per carousel: {e['click'] / max(result.n_decisions, 1):.4f} clicks, "
        f"{e['purchase'] / max(result.n_decisions, 1):.4f} purchases, "
        f"{e['margin'] / max(result.n_decisions, 1):.3f} margin"
    )


@click.command()
@click.option(
    "--arms",
    default="margin,longterm",
    show_default=True,
    help="Arms, the first is the control: presets (margin, longterm, click, uniform, e.g. "
    "'longterm,lambda=3') or policy specs with name=, learn=click|purchase|margin, lambda=, weight=.",
)
@click.option("--days", default=90, show_default=True, type=click.IntRange(min=1))
@click.option("--customers", default=None, type=click.IntRange(min=2), help="Customers (default: the scenario's).")
@click.option(
    "--seeds",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worlds to run the test on (seeds first-seed, first-seed+1, ...); results pooled.",
)
@click.option("--first-seed", default=0, show_default=True, type=int)
@click.option("--salt", default="ab", show_default=True, help="Assignment salt (a new salt, a new split).")
@click.option(
    "--scenario",
    default="gateway",
    show_default=True,
    type=click.Choice(["gateway", "default", *SCENARIO_NAMES[1:]]),
    help="gateway: the shop of the long-term study (docs/abtest.md); default: SimConfig's defaults; "
    "the others: a world where exploration pays (docs/simulator.md; arms choose what they learn).",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="TOML: simulator fields (as for simulate) and an optional [abtest] table with arms, days, "
    "customers, seeds, first_seed, salt, aa, burn_in; replaces --scenario.",
)
@click.option(
    "--burn-in",
    "burn_in",
    default=None,
    type=click.IntRange(min=0),
    help="Last pre-period days run with the incumbent carousel (uniformly random slates) "
    "[default: the scenario's: gateway 60, default 0; 0 with --config].",
)
@click.option(
    "--aa",
    "aa_tests",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Instead run this many A/A tests of the first arm (own world and salt each) and report the "
    "false-positive rate; --arms may then name one arm.",
)
@click.option("--boot", default=2000, show_default=True, type=click.IntRange(min=0), help="Bootstrap resamples.")
@click.option(
    "--out",
    default="out/abtest",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Report directory (with --db: written only when given).",
)
@click.option(
    "--db",
    default=None,
    type=click.Path(dir_okay=False),
    help="Instead analyse this live decision log's holdout against its control (docs/abtest.md, "
    "'Analysing a live log').",
)
@click.option(
    "--shop",
    "shop_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="With --db and no --pre-days: CUPED on each user's interactions in the shop's build.",
)
@click.option(
    "--metric",
    "--kind",
    "metrics",
    multiple=True,
    help="With --db: a reward kind to analyse (repeatable) [default: every kind in the log, click first].",
)
@click.option(
    "--since",
    default=None,
    help="With --db: the window's start, an ISO date or time (UTC) or epoch seconds "
    "[default: the first decision of a holdout or control user].",
)
@click.option("--until", default=None, help="With --db: the window's end (exclusive) [default: the last decision].")
@click.option(
    "--pre-days",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="With --db: CUPED on each user's reward in this many days before the window.",
)
@click.option(
    "--shares",
    default=None,
    help="With --db: the configured shares, holdout=H,control=C[,salt=S] [default: as the decisions logged them].",
)
@click.option("--vs-main", is_flag=True, help="With --db: also compare the main arm (trained on) with the control.")
@click.option(
    "--alpha",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="With --db: level of the intervals and tests.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="With --db: the bootstrap's seed.")
@click.option("--json", "as_json", is_flag=True, help="With --db: print JSON instead of the tables.")
@usage_errors
def abtest(
    arms,
    days,
    customers,
    seeds,
    first_seed,
    salt,
    scenario,
    config_file,
    burn_in,
    aa_tests,
    boot,
    out,
    db,
    shop_dir,
    metrics,
    since,
    until,
    pre_days,
    shares,
    vs_main,
    alpha,
    seed,
    as_json,
):
    """Simulate an A/B test of carousel policies; print the metric table and write a report.

    With --db, analyse a live log instead: its holdout (served by the policy, never learned
    from) against its control (served by the baseline), users as the unit. Exit status 1 on a
    sample-ratio mismatch.
    """
    import numpy as np

    ctx = click.get_current_context()
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    given = [n for n in flags if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT]
    if db is not None:
        clash = [flags[n] for n in given if n in SIMULATOR_ONLY]
        if clash:
            raise click.UsageError(
                f"{', '.join(clash)} simulate a test; --db analyses a live log: drop one or the other"
            )
        _abtest_log(
            db,
            shop_dir=shop_dir,
            metrics=metrics,
            since=since,
            until=until,
            pre_days=pre_days,
            shares=shares,
            vs_main=vs_main,
            alpha=alpha,
            boot=boot,
            seed=seed,
            as_json=as_json,
            out=out if "out" in given else None,
        )
        return
    stray = [flags[n] for n in given if n in LOG_ONLY]
    if stray:
        raise click.UsageError(f"{', '.join(stray)} need --db (the analysis of a live log)")

    from studies.abtest import (
        SCENARIO_BURN_IN,
        aa_study,
        aa_table,
        analyse,
        load_config,
        metric_table,
        parse_arms,
        pool_seeds,
        pooled_table,
        run_abtest,
        scenario_config,
        write_report,
    )

    command = "banditrec abtest " + " ".join(sys.argv[2:])
    if config_file:
        config, opts = load_config(config_file)
        arms, days, seeds = opts.get("arms", arms), opts.get("days", days), opts.get("seeds", seeds)
        first_seed, salt = opts.get("first_seed", first_seed), opts.get("salt", salt)
        customers, aa_tests = opts.get("customers", customers), opts.get("aa", aa_tests)
        burn_in = opts.get("burn_in", 0) if burn_in is None else burn_in
    else:
        config = scenario_config(scenario)
        burn_in = SCENARIO_BURN_IN[scenario] if burn_in is None else burn_in
    if customers is not None:
        config = config.replace(n_customers=customers)
    arm_list = parse_arms(arms, minimum=1 if aa_tests else 2)
    progress = sys.stderr.isatty()
    if aa_tests:
        study = aa_study(
            aa_tests, arm_list[0], config, days, first_seed=first_seed, progress=progress, burn_in_days=burn_in
        )
        click.echo(aa_table(study))
        path = write_report(out, aa=study, command=command)
    else:
        results, rows = [], []
        for s in range(first_seed, first_seed + seeds):
            r = run_abtest(arm_list, config, days, seed=s, salt=salt, burn_in_days=burn_in, progress=progress)
            results.append(r)
            rows.append(analyse(r, n_boot=boot, rng=np.random.default_rng(s)))
            click.echo(
                f"seed {s}: {', '.join(f'{a.name} {n:,}' for a, n in zip(r.arms, r.sizes))} customers, "
                f"{int(r.n_decisions.sum()):,} decisions in {r.seconds:.0f} s; sample ratio "
                f"p = {r.srm.p_value:.3f}"
            )
        click.echo(metric_table(rows[0]))
        if seeds > 1:
            click.echo("")
            click.echo(pooled_table(pool_seeds(rows)))
        path = write_report(out, results=results, rows_by_seed=rows, command=command)
    click.echo(f"report: {path}")


SIMULATOR_ONLY = (
    *("arms", "days", "customers", "seeds", "first_seed", "salt"),
    *("scenario", "config_file", "burn_in", "aa_tests"),
)
LOG_ONLY = ("shop_dir", "metrics", "since", "until", "pre_days", "shares", "vs_main", "alpha", "seed", "as_json")


def _abtest_log(db, *, shop_dir, metrics, since, until, pre_days, shares, vs_main, alpha, boot, seed, as_json, out):
    """``abtest --db``: wiring of :func:`banditrec.evaluation.abtest_log.analyse_log`."""
    import json
    import sqlite3

    from banditrec.evaluation.abtest_log import Shares, analyse_log, parse_time, shop_interactions
    from banditrec.store import DecisionLog

    if not Path(db).is_file():
        raise click.UsageError(f"no decision log at {db}")
    covariate = None
    if shop_dir is not None:
        if pre_days:
            raise click.UsageError("--shop gives CUPED's covariate when --pre-days is 0; give one of them")
        from banditrec.shop import Shop

        shop = Shop(shop_dir)
        covariate = shop_interactions(shop.user_ids, shop.history)
    try:
        log = DecisionLog(db)
    except sqlite3.DatabaseError as exc:
        raise click.UsageError(f"{db} is not a decision log: {exc}") from None
    try:
        result = analyse_log(
            log,
            kinds=tuple(metrics) or None,
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
            pre_days=pre_days,
            covariate=covariate,
            shares=None if shares is None else Shares.parse(shares),
            treatments=("holdout", "main") if vs_main else ("holdout",),
            alpha=alpha,
            n_boot=boot,
            rng=seed,
        )
    finally:
        log.close()
    text = json.dumps(result.to_dict(), indent=1) if as_json else result.table()
    click.echo(text.rstrip("\n"))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.md").write_text(result.table())
        (Path(out) / "abtest.json").write_text(json.dumps(result.to_dict(), indent=1))
        if not as_json:
            click.echo(f"report: {Path(out) / 'report.md'}")
    if not result.ok:
        sys.exit(1)


@click.command("simulate-ablation")
@click.option("--policy", default="egreedy:epsilon=0.1", show_default=True, help="The policy every arm serves with.")
@click.option("--days", default=14, show_default=True, type=click.IntRange(1))
@click.option("--items", "n_items", default=300, show_default=True, type=click.IntRange(10))
@click.option("--customers", "n_customers", default=1500, show_default=True, type=click.IntRange(10))
@click.option("--history-days", default=60, show_default=True, type=click.IntRange(1))
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(1), help="Worlds (paired runs).")
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Choice(SOURCES),
    help="A source to leave out (repeatable) [default: each one].",
)
@usage_errors
def simulate_ablation(policy, days, n_items, n_customers, history_days, seeds, sources):
    """The simulated shop with every candidate source, then without each: the change in the
    true clicks and margin per carousel and the customers' lifetime value."""
    from simulator.config import SimConfig

    from .ablation import ablation_table, run_ablation

    config = SimConfig(n_items=n_items, n_customers=n_customers, history_days=history_days)
    runs = run_ablation(config, policy, days, sources=sources or SOURCES, seeds=range(seeds))
    click.echo(
        f"{policy}, {days} days, {n_items} items, {n_customers} customers, {seeds} seed(s); "
        "change when the source is left out, paired by seed (95% CI):"
    )
    click.echo(ablation_table(runs))


@click.command()
@click.option("--customers", default=20_000, show_default=True, type=click.IntRange(min=100))
@click.option("--train-days", default=120, show_default=True, type=click.IntRange(min=30))
@click.option(
    "--spread",
    default=REORDER_CONFIG.reorder_customer_spread,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="sd of customers' log reorder cycles around their type's (the simulator's reorder_customer_spread).",
)
@click.option("--seed", default=0, show_default=True, type=int)
def reorder(customers, train_days, spread, seed):
    """Reorder timing on the simulated shop: hit@k of due-to-reorder candidates in the week after
    a cut, against recommending what was last bought."""
    from .reorder_eval import evaluate_reorder

    config = REORDER_CONFIG.replace(n_customers=customers, reorder_customer_spread=spread)
    r = evaluate_reorder(config, seed=seed, train_days=train_days)
    click.echo(
        f"{r.users:,} customers with a consumable bought before day {train_days} and one in the 7 days "
        f"after; {r.consumable_types} consumable types; customer cycle spread {spread}; seed {seed}"
    )
    click.echo("")
    click.echo(r.table())
    click.echo("")
    click.echo(f"standard error of each hit rate at most 0.5 / sqrt({r.users}) = {0.5 / max(r.users, 1) ** 0.5:.3f}")


@click.command()
@click.option(
    "--shop-files",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A shop's files (items.csv|parquet, interactions.csv|parquet, optional build.toml); default: simulate one.",
)
@click.option("--items", "n_items", default=2000, show_default=True, type=click.IntRange(min=50))
@click.option("--customers", default=6000, show_default=True, type=click.IntRange(min=100))
@click.option("--days", default=120, show_default=True, type=click.IntRange(min=2), help="Simulated days.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--test-days", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--val-days", default=None, type=click.FloatRange(min=0, min_open=True), help="Default: --test-days.")
@click.option("--tune/--no-tune", default=True, show_default=True, help="Choose parameters on the validation split.")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(min=1))
def brains(shop_files, n_items, customers, days, seed, test_days, val_days, tune, threads):
    """Compare ALS, BPR, item-item CF, the candidate generator and popularity on a temporal split
    (a markdown table)."""
    from .brains import compare, read_shop, simulated_shop

    if shop_files:
        data = read_shop(shop_files)
    else:
        data = simulated_shop(n_items=n_items, n_customers=customers, days=days, seed=seed)
    res = compare(data, test_days=test_days, val_days=val_days, tune=tune, threads=threads)
    click.echo(
        f"{res.source}: {data.n_items:,} items, {len(data.user):,} interactions; cut after day "
        f"{res.cut_day:.0f}, test = the last {test_days:g} days: {res.users:,} users with "
        f"{res.targets:,} new purchases (validation: {res.validation_users:,} users)\n"
    )
    click.echo(res.table())


@click.command()
@click.option(
    "--apprentice-days", default=4, show_default=True, type=click.IntRange(1), help="Days served in apprentice mode."
)
@click.option("--live-days", default=3, show_default=True, type=click.IntRange(0), help="Days served after the switch.")
@click.option("--items", "n_items", default=1000, show_default=True, type=click.IntRange(50))
@click.option("--customers", "n_customers", default=4000, show_default=True, type=click.IntRange(100))
@click.option("--types", "n_types", default=40, show_default=True, type=click.IntRange(1), help="Product types.")
@click.option(
    "--history-days", default=30, show_default=True, type=click.IntRange(1), help="Days of pre-period history."
)
@click.option("--holdout", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--control", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--policy", default="linucb:alpha=1.0,epsilon=0.1", show_default=True)
@click.option("--force-live", is_flag=True, help="Go live (recorded as forced) when the gate refuses.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", default="out/rollout", show_default=True, type=click.Path(file_okay=False))
@usage_errors
def rollout(
    apprentice_days,
    live_days,
    n_items,
    n_customers,
    n_types,
    history_days,
    holdout,
    control,
    policy,
    force_live,
    seed,
    out,
):
    """The simulated shop switches a bandit on the safe way: apprentice days, the gate, the switch, live days."""
    from simulator import SimConfig
    from studies.rollout import run_rollout

    config = SimConfig(n_items=n_items, n_types=n_types, n_customers=n_customers, history_days=history_days)
    run_rollout(
        apprentice_days=apprentice_days,
        live_days=live_days,
        holdout=holdout,
        control=control,
        policy=policy,
        seed=seed,
        force=force_live,
        out=out,
        config=config,
        echo=click.echo,
    )
