"""The ``banditrec`` command. Wiring only: every command calls into the packages."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from .policies.base import DEFAULT_FLOOR
from simulator.scenarios import SCENARIOS

SCENARIO_NAMES = tuple(SCENARIOS)


@click.group()
@click.version_option(package_name="banditrec")
def main():
    """Contextual-bandit recommendation carousels.

    \b
    Your own shop (docs/data-formats.md):
      banditrec build --items items.csv --interactions interactions.csv --out shop/
      banditrec serve --shop shop/                # the decision service
      banditrec learn --shop shop/                # learns from its log, publishes snapshots
      banditrec evaluate --shop shop/ --db out/serve/log.db --policy egreedy
      banditrec recommend --shop shop/ --user u42
    \b
    The simulated shop, end to end: banditrec demo
    """


@main.command()
@click.option("--days", default=14, show_default=True, help="Days of the simulated shop to serve.",
              type=click.IntRange(min=2))
@click.option("--slots", default=5, show_default=True, help="Carousel slots per decision.", type=click.IntRange(min=1))
@click.option("--candidates", default=30, show_default=True, help="Candidates per decision.",
              type=click.IntRange(min=1))
@click.option("--items", "n_items", default=None, type=click.IntRange(min=50), help="Catalog size (default 2,000).")
@click.option("--customers", default=None, type=click.IntRange(min=100), help="Customers (default 6,000).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--policy", default="shared-linucb:alpha=1.0,epsilon=0.1", show_default=True, help="Logging policy spec.")
@click.option("--target", "targets", multiple=True,
              default=("uniform", "popularity:epsilon=0.1", "shared-linucb:alpha=0.5,epsilon=0.05"),
              show_default=True, help="Policy to evaluate off-policy (repeatable).")
@click.option("--out", default="out/demo", show_default=True, type=click.Path(file_okay=False))
def demo(days, slots, candidates, n_items, customers, seed, policy, targets, out):
    """The simulated shop run as a real one: export its files, build, serve, learn, evaluate."""
    from .errors import BanditRecError
    from .shopdemo import DEMO_CONFIG, run_shop_demo

    click.echo(f"banditrec demo: the simulated shop through build, serve, learn and evaluate; seed {seed}")
    sizes = {k: v for k, v in (("n_items", n_items), ("n_customers", customers)) if v is not None}
    from threadpoolctl import threadpool_limits

    try:
        # one BLAS thread, as the service's workers run: small products only spin more threads
        with threadpool_limits(limits=1, user_api="blas"):
            result = run_shop_demo(days=days, n_slots=slots, n_candidates=candidates, seed=seed, out=out,
                                   policy=policy, targets=tuple(targets), config=DEMO_CONFIG.replace(**sizes),
                                   echo=click.echo)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo("")
    click.echo(result.table())
    click.echo("")
    click.echo(f"{result.n_decisions:,} decisions, {result.n_events:,} events, {result.n_rewards:,} rewards in "
               f"{result.seconds:.0f} s; logged propensities match recomputed to {result.max_pscore_mismatch:.1e}")
    click.echo(f"report: {result.report}")
    click.echo(f"log:    {result.db}")
    click.echo(f"shop:   {Path(out) / 'shop'}  (try: banditrec recommend --shop {Path(out) / 'shop'} --user u1)")


@main.command()
@click.option("--seeds", default=10, show_default=True, help="Number of seeded runs.", type=click.IntRange(min=1))
@click.option("--first-seed", default=0, show_default=True, help="Seeds run are first-seed .. first-seed+seeds-1.")
@click.option("--decisions", default=20_000, show_default=True, type=click.IntRange(min=1))
@click.option("--slots", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--policy", default="shared-linucb:alpha=1.0,epsilon=0.1", show_default=True, help="Logging policy spec.")
@click.option("--target", "targets", multiple=True, default=("uniform", "popularity:epsilon=0.1"), show_default=True)
def coverage(seeds, first_seed, decisions, slots, policy, targets):
    """Repeat the demo over many seeds: do the 95% intervals cover the exact truth 95% of the time?"""
    from .demo import coverage_study, coverage_table
    from .errors import BanditRecError

    try:
        rows = coverage_study(seeds=range(first_seed, first_seed + seeds), n_decisions=decisions, n_slots=slots,
                              policy=policy, targets=tuple(targets), echo=click.echo)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo("")
    click.echo(coverage_table(rows))


def _token(token_file: str) -> str:
    """The API token: $BANDITREC_API_TOKEN when set, else ``token_file`` (created with a random
    token, mode 0600, when missing). An empty, blank or short token is a usage error: it must
    never start a server with authentication off."""
    import secrets
    from pathlib import Path

    from .errors import BanditRecError
    from .service.config import check_token, read_token_file

    try:
        if os.environ.get("BANDITREC_API_TOKEN") is not None:
            return check_token(os.environ["BANDITREC_API_TOKEN"], "$BANDITREC_API_TOKEN")
        path = Path(token_file)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
        return read_token_file(path)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option("--items", required=True, type=click.Path(dir_okay=False),
              help="Items file (CSV or Parquet): item_id, and optional type, price, title, in_stock, ...")
@click.option("--interactions", required=True, type=click.Path(dir_okay=False),
              help="Interactions file: user_id, item_id, event_type, timestamp (ISO-8601 or epoch seconds).")
@click.option("--users", default=None, type=click.Path(dir_okay=False),
              help="Optional users file: user_id, and segment and other attributes.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="TOML build settings: column roles, event types, features, candidate model.")
@click.option("--map", "pairs", multiple=True, metavar="FIELD=COLUMN",
              help="Read FIELD from COLUMN (repeatable); FILE.FIELD=COLUMN for one file only, e.g. "
                   "items.item_id=sku.")
@click.option("--context-encoding", "encoding", default=None, type=click.Path(dir_okay=False),
              help="The context encoding `banditrec import` wrote: its columns become request context fields, "
                   "so the shop can serve and evaluate on that imported log.")
@click.option("--refit-features", is_flag=True,
              help="Fit new item and context features although the directory has a build (policies restart).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Shop directory to create, or to publish a new build into.")
def build(items, interactions, users, config_file, pairs, encoding, refit_features, out):
    """Build a shop directory from a catalog, interactions and (optionally) users.

    Every file is checked first; a bad cell stops the build with its file, line and column,
    and nothing is published. Rebuilding into the same --out keeps every item's index: new
    items are added, removed ones stop being served, learned policies carry over.
    See docs/data-formats.md.
    """
    from .errors import BanditRecError
    from .shop import BuildConfig, build_shop

    try:
        config = BuildConfig.from_toml(config_file) if config_file else BuildConfig()
        result = build_shop(items, interactions, users, out=out, config=config, mapping=pairs, encoding=encoding,
                            refit_features=refit_features, progress=sys.stderr.isatty())
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(result.summary())


@main.command()
@click.option("--shop", "shop_dir", required=True, type=click.Path(file_okay=False),
              help="Shop directory written by `banditrec build`; a newer build is picked up while serving.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(min=0))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(min=1), help="Threads per worker.")
@click.option("--db", default="out/serve/log.db", show_default=True, type=click.Path(dir_okay=False))
@click.option("--policy", default="shared-linucb:alpha=1.0,epsilon=0.1", show_default=True)
@click.option("--snapshots", default="out/serve/snapshots", show_default=True, type=click.Path(file_okay=False),
              help="Directory `banditrec learn` publishes to; workers reload from it.")
@click.option("--reward-window", default=3600.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds after a decision within which its rewards count (later: flagged late).")
@click.option("--token-file", default="out/serve/token", show_default=True, type=click.Path(dir_okay=False),
              help="Bearer token for reward, events and admin routes, unless $BANDITREC_API_TOKEN is set; "
                   "created with a random token if missing.")
@click.option("--decide-auth", is_flag=True, help="Decide routes need the token too.")
@click.option("--durable", is_flag=True,
              help="Commit the log with synchronous=FULL: an acknowledged decision or reward survives a power "
                   "loss too, not only a crash of the process (docs/service.md; its cost: docs/benchmarks.md).")
@click.option("--access-log", is_flag=True, help="Log every request to stdout.")
def serve(shop_dir, host, port, workers, threads, db, policy, snapshots, reward_window, token_file, decide_auth,
          durable, access_log):
    """Serve a shop directory's carousels (decide, reward, events, models, metrics) under gunicorn."""
    from .errors import BanditRecError
    from .shop import Shop

    try:
        Shop(shop_dir).policy(policy)  # a bad directory or spec fails here, not in every worker
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    token = _token(token_file)
    env = dict(os.environ, BANDITREC_SHOP=shop_dir, BANDITREC_DB=db, BANDITREC_POLICY=policy,
               BANDITREC_SNAPSHOTS=snapshots, BANDITREC_REWARD_WINDOW_S=repr(reward_window),
               BANDITREC_API_TOKEN=token, BANDITREC_DECIDE_AUTH="1" if decide_auth else "0",
               BANDITREC_DURABLE="1" if durable else "0")
    if access_log:
        env["BANDITREC_ACCESSLOG"] = "-"
    conf = os.path.join(os.path.dirname(__file__), "service", "gunicorn_conf.py")
    args = [sys.executable, "-m", "gunicorn", "-c", conf, "--bind", f"{host}:{port}",
            "--workers", str(workers), "--threads", str(threads), "banditrec.service.wsgi:app"]
    shown = token_file if os.environ.get("BANDITREC_API_TOKEN") is None else "$BANDITREC_API_TOKEN"
    click.echo(f"serving {shop_dir} on http://{host}:{port} (log: {db}; snapshots: {snapshots}; token: {shown}); "
               "Ctrl-C stops")
    os.execvpe(sys.executable, args, env)


@main.command()
@click.option("--shop", "shop_dir", required=True, type=click.Path(file_okay=False),
              help="The shop directory the service serves (its item features; rebuilds are followed).")
@click.option("--db", default="out/serve/log.db", show_default=True, type=click.Path(dir_okay=False))
@click.option("--policy", default="shared-linucb:alpha=1.0,epsilon=0.1", show_default=True,
              help="Policy to start from when no snapshot has been published.")
@click.option("--snapshots", default="out/serve/snapshots", show_default=True, type=click.Path(file_okay=False))
@click.option("--reward-window", default=3600.0, show_default=True, type=click.FloatRange(min=0),
              help="Learn from a decision once this many seconds have passed (as `serve --reward-window`).")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between learning steps.")
@click.option("--kind", default="click", show_default=True, help="Reward kind to learn from.")
@click.option("--once", is_flag=True, help="One step, then exit.")
def learn(shop_dir, db, policy, snapshots, reward_window, interval, kind, once):
    """Learn from closed decisions in --db and publish snapshots for `banditrec serve` to reload."""
    from .errors import BanditRecError
    from .learner import Learner
    from .shop import Shop, ShopFollower

    log = _open_log_with_window(db, reward_window)
    try:
        shop = Shop(shop_dir)
        learner = Learner.resume(log, lambda: shop.policy(policy), shop.items.features, snapshots,
                                 shop.policy_env(), kind=kind, item_cold=shop.items.cold)
        learner.refresh = ShopFollower(shop, echo=click.echo)
        click.echo(f"learning from {db} (window {reward_window:g} s) into {snapshots} for shop build {shop.build}; "
                   f"from seq {learner.learned_seq}, model {learner.version or learner.policy.model_version}")
        learner.run(interval_s=interval, steps=1 if once else None, echo=click.echo)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    finally:
        log.close()


def _open_log_with_window(db: str, window: float):
    import sqlite3

    from .store import DecisionLog

    try:
        return DecisionLog(db, reward_window_s=window)
    except sqlite3.DatabaseError as exc:
        raise click.UsageError(f"{db} is not a decision log: {exc}") from None


@main.command()
@click.option("--db", default=None, type=click.Path(dir_okay=False), help="Decision log to evaluate on.")
@click.option("--shop", "shop_dir", default=None, type=click.Path(file_okay=False),
              help="With --db: a shop directory whose item features, types and business columns the candidate "
                   "policies use (default: the log's own items table).")
@click.option("--parquet", default=None, type=click.Path(file_okay=False),
              help="Instead of --db: a day-partitioned Parquet export (export --partition-by day), evaluated on Dask.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="With --parquet: the Dask scheduler (tcp://host:8786); default a LocalCluster on this machine.")
@click.option("--policy", "specs", multiple=True, help="Candidate policy spec (repeatable).")
@click.option("--tune", "tune", multiple=True, metavar="SPEC-GRID",
              help="Choose a policy's settings on the log: a spec whose values list alternatives with '|', "
                   "e.g. shared-linucb:alpha=0.25|0.5|1,epsilon=0.02|0.05 (repeatable; docs/evaluation.md).")
@click.option("--reward-model", default=None, type=click.Choice(["ridge", "logistic", "gbt"]),
              help="Reward model of DM/DR/SNDR/SwitchDR, cross-fitted on the log [default: the library's default].")
@click.option("--estimator", "estimators", multiple=True, default=("IPS", "SNIPS", "DR", "SNDR"), show_default=True,
              help="Estimator to report (repeatable).")
@click.option("--primary", default="DR", show_default=True, help="Estimator whose lower bound decides the verdict.")
@click.option("--kind", default="click", show_default=True, help="Reward kind to evaluate.")
@click.option("--train-frac", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of the log (oldest first) the candidates learn from before evaluation.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", default="out/evaluate", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the report and plot.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def evaluate(db, shop_dir, parquet, scheduler, specs, tune, reward_model, estimators, primary, kind, train_frac, seed,
             out, as_json):
    """Estimate candidate policies' value on a logged period, with a safe-to-deploy verdict."""
    import json

    from .errors import BanditRecError
    from .evaluation import evaluate_log

    if (db is None) == (parquet is None):
        raise click.UsageError("give exactly one of --db and --parquet")
    if scheduler and not parquet:
        raise click.UsageError("--scheduler goes with --parquet")
    if shop_dir and parquet:
        raise click.UsageError("--shop goes with --db")
    try:
        if parquet:
            from .evaluation import dask_client, evaluate_parquet

            with dask_client(scheduler) as client:
                result = evaluate_parquet(parquet, list(specs), estimators=tuple(estimators), primary=primary,
                                          kind=kind, train_frac=train_frac, seed=seed, out=out, client=client,
                                          progress=sys.stderr.isatty(), tune=tuple(tune), reward_model=reward_model)
        else:
            from .shop import Shop

            result = evaluate_log(db, list(specs), estimators=tuple(estimators), primary=primary, kind=kind,
                                  train_frac=train_frac, seed=seed, out=out, tune=tuple(tune),
                                  reward_model=reward_model, shop=Shop(shop_dir) if shop_dir else None)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    click.echo(result.table())
    click.echo(f"report: {result.report}")


# ---- moving logs in and out (banditrec.store.exchange) -----------------------------------------

def _open_log(db: str):
    """The decision log at ``db``; a file that is not one is a usage error, not a traceback."""
    import sqlite3

    from .store import DecisionLog

    try:
        return DecisionLog(db)
    except sqlite3.DatabaseError as exc:
        raise click.UsageError(f"{db} is not a decision log: {exc}") from None


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", required=True, type=click.Choice(("obd", "csv")),
              help="obd: the Open Bandit Dataset's CSV layout; csv: one row per logged slot, columns by --map.")
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="Decision log to import into (created if missing).")
@click.option("--map", "pairs", multiple=True, metavar="FIELD=COLUMN",
              help="Column of a field (repeatable), e.g. position=pos, reward=clicked, context=x_*. "
                   "Defaults: the columns `banditrec export --format csv` writes (obd: the OBD names).")
@click.option("--kind", default="click", show_default=True, help="Reward kind of a column mapped as `reward`.")
@click.option("--position-base", default=0, show_default=True, type=click.IntRange(0, 1),
              help="csv: 1 when positions count from 1 (obd positions always do).")
@click.option("--n-items", default=None, type=click.IntRange(min=1), help="Catalog size when item ids are 0..n-1.")
@click.option("--policy", default=None, help="Logging policy name to record (default: obd or imported).")
@click.option("--event-prefix", default=None, help="Prefix of generated event ids (default: the file's stem).")
@click.option("--start-line", default=None, type=click.IntRange(min=2), help="Resume an import at this line.")
@click.option("--slots", "obd_slots", default=3, show_default=True, type=click.IntRange(min=0),
              help="obd: each row is its own round of a carousel of this many slots, observed at the row's "
                   "position (as Open Bandit Pipeline reads it); 0 groups rows of one impression instead.")
def import_(file, fmt, db, pairs, kind, position_base, n_items, policy, event_prefix, start_line, obd_slots):
    """Import FILE's logged slots into the decision log --db, in batches.

    A bad line stops the import with its line and column; what was imported before it stays in
    the log, and the message says which --start-line resumes.
    """
    import json
    from pathlib import Path

    from .errors import BanditRecError
    from .store.exchange import import_file, parse_mapping

    if fmt == "obd" and position_base != 0:
        raise click.UsageError("--position-base applies to --format csv; OBD positions are always 1-based")
    log = _open_log(db)
    try:
        kw = dict(n_items=n_items, event_prefix=event_prefix, start_line=start_line)
        if policy is not None:
            kw["policy"] = policy
        if fmt == "csv":
            kw.update(kind=kind, position_base=position_base)
        else:
            kw.update(slots=obd_slots or None)
        result = import_file(file, log, fmt, parse_mapping(pairs), **kw)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        log.close()
    encoding = Path(f"{db}.context-{result.encoding_id}.json")
    encoding.write_text(json.dumps(result.encoding(), indent=1) + "\n")
    lines = f"lines {result.first_line}-{result.last_line} of " if result.decisions else ""
    click.echo(f"imported {result.decisions} decisions ({result.slots} slots, {result.rewards} rewards) from "
               f"{lines}{file} into {db}")
    click.echo(f"{len(result.context_names)} context columns, {result.n_items} items; encoding: {encoding}")


@main.command("export")
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False), help="Decision log to export.")
@click.option("--format", "fmt", required=True, type=click.Choice(("csv", "parquet", "vw", "dsjson", "interactions")),
              help="csv/parquet: one row per logged slot with every reward kind; vw: VW text --cb_adf "
                   "examples; dsjson: VW decision-service JSON lines; interactions: the events and positive "
                   "rewards as an interactions file for `banditrec build`.")
@click.option("--out", required=True, type=click.Path(), help="File to write (a directory with --partition-by day).")
@click.option("--partition-by", "partition_by", default=None, type=click.Choice(("day",)),
              help="parquet: one file per UTC day under --out (a directory); re-running writes only changed days.")
@click.option("--kind", default="click", show_default=True, help="vw/dsjson: the reward kind labels carry (cost = -reward).")
@click.option("--default-reward", default=0.0, show_default=True, type=float,
              help="vw/dsjson: reward of a slot that has none of --kind.")
@click.option("--min-probability", default=None, type=click.FloatRange(0, 1, min_open=True),
              help="vw/dsjson: clip smaller logged probabilities up to this (default: refuse ones VW reads as 0).")
@click.option("--candidates", is_flag=True, help="csv/parquet: add each decision's candidate ids and indices.")
def export(db, fmt, out, partition_by, kind, default_reward, min_probability, candidates):
    """Export the decision log --db to --out, one row or example per logged slot."""
    from .errors import BanditRecError
    from .store.exchange import export_log

    if partition_by:
        _export_partitioned(db, fmt, out)
        return
    log = _open_log(db)
    try:
        result = export_log(log, out, fmt, kind=kind, default_reward=default_reward,
                            min_probability=min_probability, candidates=candidates)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        log.close()
    if fmt == "interactions":
        click.echo(f"exported {result.rows} interactions (events and positive rewards) to {out}")
        return
    clipped = f"; {result.clipped} probabilities clipped to {min_probability}" if result.clipped else ""
    click.echo(f"exported {result.rows} logged slots of {result.decisions} decisions to {out} ({fmt}){clipped}")


def _export_partitioned(db: str, fmt: str, out: str) -> None:
    from .errors import BanditRecError
    from .store.partitioned import export_partitioned

    if fmt != "parquet":
        raise click.UsageError("--partition-by day writes Parquet: use --format parquet")
    log = _open_log(db)
    try:
        ds = export_partitioned(log, out)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        log.close()
    click.echo(f"exported {ds.n_rows} logged slots of {ds.n_decisions} decisions to {out} in {len(ds.partitions)} "
               f"day partitions ({len(ds.written)} written, {len(ds.kept)} unchanged)")


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
              help="TOML sweep file: policies, parameter grids, replicates, simulator settings (docs/dask.md).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler (tcp://host:8786); default a LocalCluster on this machine.")
@click.option("--in-process", is_flag=True, help="Run every simulation in this process, without Dask.")
@click.option("--out", default="out/sweep", show_default=True, type=click.Path(file_okay=False))
def sweep(config_file, scheduler, in_process, out):
    """Run (policy x parameters x seed) simulations as Dask tasks and gather one table and plot."""
    from .errors import BanditRecError
    from simulator.sweep import load_config, run_sweep, summary_table, write_outputs

    if scheduler and in_process:
        raise click.UsageError("--scheduler and --in-process exclude each other")
    try:
        config = load_config(config_file)
        click.echo(f"sweep: {len(config.specs)} specs x {config.replicates} replicates = {len(config.runs)} runs "
                   f"of {config.days} days")
        start = time.perf_counter()
        if in_process:
            results = run_sweep(config, progress=sys.stderr.isatty())
        else:
            from .evaluation import dask_client

            with dask_client(scheduler) as client:
                results = run_sweep(config, client=client, progress=sys.stderr.isatty())
        seconds = time.perf_counter() - start
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    report = write_outputs(config, results, out)
    click.echo("")
    click.echo(summary_table(config, results))
    click.echo(f"{len(results)} runs in {seconds:.1f} s; report: {report}")


@main.command()
@click.option("--policy", "specs", multiple=True, required=True, help="Policy spec (repeatable).")
@click.option("--scenario", default="shop", show_default=True, type=click.Choice(list(SCENARIO_NAMES)),
              help="The world (docs/simulator.md): today's shop, or one where exploration pays.")
@click.option("--seeds", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--first-seed", default=0, show_default=True, type=int)
@click.option("--decisions", default=50_000, show_default=True, type=click.IntRange(min=1))
@click.option("--slots", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--candidates", default=None, type=click.IntRange(min=1),
              help="Candidates per request [default: the scenario's, else 30].")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(min=1),
              help="Decisions between learning steps.")
@click.option("--floor", default=DEFAULT_FLOOR, show_default=True, type=click.FloatRange(0, 1),
              help="Exploration floor mixed into every slot (as the engine serves; 0 switches it off).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worker processes running (policy, seed) pairs side by side.")
@click.option("--out", default="out/regret", show_default=True, type=click.Path(file_okay=False))
def regret(specs, scenario, seeds, first_seed, decisions, slots, candidates, batch, floor, jobs, out):
    """Cumulative regret of each policy against the simulated shop's exact oracle, over seeds."""
    from pathlib import Path

    from .errors import BanditRecError
    from .regret import regret_plot, regret_study, regret_table

    try:
        rows = regret_study(list(specs), range(first_seed, first_seed + seeds), scenario=scenario,
                            n_decisions=decisions, n_slots=slots, n_candidates=candidates, batch=batch,
                            min_epsilon=floor, jobs=jobs, echo=click.echo)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    table = regret_table(rows)
    click.echo("")
    click.echo(table)
    plot = regret_plot(rows, Path(out) / "regret.png")
    (Path(out) / "regret.md").write_text(f"# Cumulative regret\n\n```\n{table}\n```\n\n![regret](regret.png)\n")
    click.echo(f"report: {Path(out) / 'regret.md'}")
    click.echo(f"plot:   {plot}")


@main.command()
@click.option("--shop", "shop_dir", default=None, type=click.Path(file_okay=False),
              help="A shop directory: the table is estimated off-policy from its log (--db).")
@click.option("--db", default=None, type=click.Path(dir_okay=False), help="With --shop: the shop's decision log.")
@click.option("--policy", "spec", default="shared-linucb:alpha=1.0,epsilon=0.1", show_default=True)
@click.option("--objective", default="price", show_default=True,
              help="Item column to blend in (maximised). The simulated shop's: price, royalty (paid per sale) or "
                   "net (price - royalty); a shop directory's: any of its business columns.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--train", "n_train", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Simulated shop only: decisions the policy learns from.")
@click.option("--test", "n_test", default=5_000, show_default=True, type=click.IntRange(min=1),
              help="Simulated shop only: held-out requests ranked.")
@click.option("--k", default=5, show_default=True, type=click.IntRange(min=1))
def sensitivity(shop_dir, db, spec, objective, seed, n_train, n_test, k):
    """Amazon Personalize's objective-sensitivity table (off..high): in the simulated shop, or
    estimated from a shop directory's log (--shop, --db)."""
    from .errors import BanditRecError

    if (shop_dir is None) != (db is None):
        raise click.UsageError("--shop and --db go together")
    try:
        if shop_dir is not None:
            from .evaluation import objective_sensitivity
            from .shop import Shop

            click.echo(objective_sensitivity(Shop(shop_dir), db, spec, objective, seed=seed).table())
            return
        from .regret import sensitivity_study, sensitivity_table

        rows = sensitivity_study(spec, objective, seed=seed, n_train=n_train, n_test=n_test, k=k)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(sensitivity_table(rows, k, objective))


@main.command()
@click.option("--days", default=90, show_default=True, type=click.IntRange(min=1), help="Days to simulate.")
@click.option("--customers", default=None, type=click.IntRange(min=1), help="Customers (default: the config's, 20,000).")
@click.option("--items", default=None, type=click.IntRange(min=1), help="Catalog items (default: the config's, 5,000).")
@click.option("--policy", default="uniform", show_default=True, help="Policy spec serving the carousel.")
@click.option("--db", default="out/sim/sim.db", show_default=True, type=click.Path(dir_okay=False),
              help="Decision log to create (every decision and reward of the run).")
@click.option("--replace", is_flag=True, help="Delete --db first if it exists.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="TOML file of simulator settings (python -c 'import simulator; print(simulator.SimConfig.describe())').")
@click.option("--scenario", default="shop", show_default=True, type=click.Choice(list(SCENARIO_NAMES)),
              help="The world (docs/simulator.md), applied over --config: today's shop or one where exploration "
                   "pays; it also sets the default --candidates and --learn-kind.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--slots", default=5, show_default=True, type=click.IntRange(min=1), help="Carousel slots.")
@click.option("--candidates", default=None, type=click.IntRange(min=1),
              help="Candidates per request [default: the scenario's, else 50].")
@click.option("--learn-kind", default=None, type=click.Choice(("click", "purchase", "margin")),
              help="Reward the policy learns from at the end of each day [default: the scenario's, else click].")
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1), help="Print every N-th day's KPIs.")
@click.option("--export-shop", "export_dir", default=None, type=click.Path(file_okay=False),
              help="Instead of simulating: write the shop's items, interactions (its pre-period) and users files, "
                   "and a build config, to this directory -- a shop's own data, for `banditrec build`.")
def simulate(days, customers, items, policy, db, replace, config_file, scenario, seed, slots, candidates, learn_kind,
             every, export_dir):
    """Run the simulated shop with a policy, logging every decision, and print daily KPIs."""
    from pathlib import Path

    from .errors import BanditRecError
    from simulator import SimConfig
    from simulator.run import simulate as run

    sc = SCENARIOS[scenario]
    candidates = candidates or sc.candidates or 50
    learn_kind = learn_kind or sc.reward
    try:
        config = SimConfig.from_toml(config_file) if config_file else SimConfig()
        changes = {k: v for k, v in (("n_customers", customers), ("n_items", items)) if v is not None}
        config = config.replace(**{**sc.sim, **changes})
        if export_dir is not None:
            from simulator.environment import Environment
            from simulator.export import export_shop

            env = Environment(config, seed=seed)
            env.recording = True
            files = export_shop(env, env.warm_up(), export_dir)
            click.echo(f"exported {files.n_items:,} items, {files.n_interactions:,} interactions and "
                       f"{files.n_users:,} users to {export_dir}; build them with:")
            click.echo(f"  banditrec build --items {files.items} --interactions {files.interactions} "
                       f"--users {files.users} --config {files.config} --out SHOP_DIR")
            return
        if replace:
            Path(db).unlink(missing_ok=True)
        state = {"n": 0}

        def echo(line):  # header, rule, then one line per day
            state["n"] += 1
            day = state["n"] - 3
            if day < 0 or day % every == 0 or day == days - 1:
                click.echo(line)

        result = run(config, policy, days, db=db, seed=seed, n_slots=slots, n_candidates=candidates,
                     learn_kind=learn_kind, progress=sys.stderr.isatty(), echo=echo)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo("")
    click.echo(f"{result.n_decisions:,} decisions and {result.n_rewards:,} rewards logged to {db} "
               f"in {result.seconds:.0f} s")
    click.echo(f"retention {result.retention:.3f}; lifetime value {result.ltv:.2f} per customer "
               f"(discounted margin, first {config.ltv_horizon_days} days)")
    e = result.expected
    click.echo(f"exact expected per carousel: {e['click'] / max(result.n_decisions, 1):.4f} clicks, "
               f"{e['purchase'] / max(result.n_decisions, 1):.4f} purchases, "
               f"{e['margin'] / max(result.n_decisions, 1):.3f} margin")


@main.command()
@click.argument("item_id")
@click.option("--shop", "shop_dir", default=None, type=click.Path(file_okay=False),
              help="Shop directory whose candidate model to ask.")
@click.option("--db", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Instead of --shop: a decision log whose items (with a 'type' attribute) and events the model "
                   "learns from.")
@click.option("--kind", default="similar", show_default=True, type=click.Choice(("similar", "complements")),
              help="similar: substitutes (item-item CF; metadata for items without events); "
                   "complements: what is bought after ITEM_ID (directional, co-purchase-only pairs).")
@click.option("-n", "n", default=10, show_default=True, type=click.IntRange(min=1), help="Neighbours to print.")
def similar(item_id, shop_dir, db, kind, n):
    """Print ITEM_ID's neighbours with scores and product types."""
    from .errors import BanditRecError

    if (shop_dir is None) == (db is None):
        raise click.UsageError("give exactly one of --shop and --db")
    try:
        if shop_dir is not None:
            from .shop import Shop

            shop = Shop(shop_dir)
            gen, j = shop.generator, shop.item_id(item_id)
            ids = shop.items.ids

            def describe(k: int) -> str:
                info = shop.info(k)
                return f"type {info.type or '?'}" + (f"  {info.title}" if info.title else "")
        else:
            from .candidates.fromlog import generator_from_log

            log = _open_log(db)
            try:
                gen, ids, attrs = generator_from_log(log)
            finally:
                log.close()
            if item_id not in set(ids):
                raise click.UsageError(f"item {item_id!r} is not in the log's catalog ({len(ids)} items, "
                                       f"e.g. {ids[0]!r})")
            j = ids.index(item_id)

            def describe(k: int) -> str:
                a = attrs[k]
                return f"type {a.get('type', a.get('product_type', '?'))}" + (f"  {a['title']}" if "title" in a else "")
        found, scores = (gen.similar_items if kind == "similar" else gen.complements)([j], n)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    cold = " (no events: metadata neighbours)" if gen.cold[j] and kind == "similar" else ""
    click.echo(f"{item_id}  {describe(j)}{cold}")
    click.echo(f"{kind} ({'substitutes' if kind == 'similar' else 'bought after it'}):")
    shown = 0
    width = max([12] + [len(ids[k]) for k in found[0].tolist() if k >= 0])
    for rank, (k, sc) in enumerate(zip(found[0].tolist(), scores[0].tolist()), start=1):
        if k < 0:
            break
        click.echo(f"{rank:>3}. {ids[k]:<{width}} {sc:8.4f}  {describe(k)}")
        shown += 1
    if shown == 0:
        click.echo("  (none: the item has no neighbours)")


@main.command()
@click.option("--shop", "shop_dir", required=True, type=click.Path(file_okay=False), help="Shop directory.")
@click.option("--user", "user_id", required=True, help="User id (unknown users get popular and new items).")
@click.option("--cart", "cart", multiple=True, metavar="ITEM", help="An item in the cart (repeatable).")
@click.option("--view", "views", multiple=True, metavar="ITEM", help="An item viewed this session (repeatable).")
@click.option("--slots", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--policy", default="shared-linucb:alpha=1.0,epsilon=0.1", show_default=True,
              help="Policy spec (untrained unless --snapshots has a published snapshot).")
@click.option("--snapshots", default=None, type=click.Path(file_okay=False),
              help="Learner snapshot directory: serve its newest snapshot.")
@click.option("--context", "fields", multiple=True, metavar="FIELD=VALUE", help="A request context field, e.g. "
              "device=mobile (repeatable).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the slot sampler.")
def recommend(shop_dir, user_id, cart, views, slots, policy, snapshots, fields, seed):
    """Print the carousel the shop would show USER: ids, titles, types, and why each is there."""
    from .errors import BanditRecError
    from .shop.tables import is_float
    from .shop.tools import recommend as run

    try:
        context = {}
        for pair in fields:
            key, eq, value = pair.partition("=")
            if not eq:
                raise click.UsageError(f"--context takes FIELD=VALUE, got {pair!r}")
            context[key] = float(value) if is_float(value) else value
        rec = run(shop_dir, user_id, cart=list(cart), views=list(views), n_slots=slots, policy=policy,
                  snapshots=snapshots, context=context or None, seed=seed)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(rec.table())


@main.command()
@click.option("--arms", default="margin,longterm", show_default=True,
              help="Arms, the first is the control: presets (margin, longterm, click, uniform, e.g. "
                   "'longterm,lambda=3') or policy specs with name=, learn=click|purchase|margin, lambda=, weight=.")
@click.option("--days", default=90, show_default=True, type=click.IntRange(min=1))
@click.option("--customers", default=None, type=click.IntRange(min=2), help="Customers (default: the scenario's).")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worlds to run the test on (seeds first-seed, first-seed+1, ...); results pooled.")
@click.option("--first-seed", default=0, show_default=True, type=int)
@click.option("--salt", default="ab", show_default=True, help="Assignment salt (a new salt, a new split).")
@click.option("--scenario", default="gateway", show_default=True, type=click.Choice(["gateway", "default",
                                                                                      *SCENARIO_NAMES[1:]]),
              help="gateway: the shop of the long-term study (docs/abtest.md); default: SimConfig's defaults; "
                   "the others: a world where exploration pays (docs/simulator.md; arms choose what they learn).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="TOML: simulator fields (as for simulate) and an optional [abtest] table with arms, days, "
                   "customers, seeds, first_seed, salt, aa, burn_in; replaces --scenario.")
@click.option("--burn-in", "burn_in", default=None, type=click.IntRange(min=0),
              help="Last pre-period days run with the incumbent carousel (uniformly random slates) "
                   "[default: the scenario's: gateway 60, default 0; 0 with --config].")
@click.option("--aa", "aa_tests", default=0, show_default=True, type=click.IntRange(min=0),
              help="Instead run this many A/A tests of the first arm (own world and salt each) and report the "
                   "false-positive rate; --arms may then name one arm.")
@click.option("--boot", default=2000, show_default=True, type=click.IntRange(min=0), help="Bootstrap resamples.")
@click.option("--out", default="out/abtest", show_default=True, type=click.Path(file_okay=False))
def abtest(arms, days, customers, seeds, first_seed, salt, scenario, config_file, burn_in, aa_tests, boot, out):
    """Simulate an A/B test of carousel policies; print the metric table and write a report."""
    import numpy as np

    from .errors import BanditRecError
    from simulator.abtest import (SCENARIO_BURN_IN, aa_study, aa_table, analyse, load_config, metric_table,
                                  parse_arms, pool_seeds, pooled_table, run_abtest, scenario_config, write_report)

    command = "banditrec abtest " + " ".join(sys.argv[2:])
    try:
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
            study = aa_study(aa_tests, arm_list[0], config, days, first_seed=first_seed, progress=progress,
                             burn_in_days=burn_in)
            click.echo(aa_table(study))
            path = write_report(out, aa=study, command=command)
        else:
            results, rows = [], []
            for s in range(first_seed, first_seed + seeds):
                r = run_abtest(arm_list, config, days, seed=s, salt=salt, burn_in_days=burn_in, progress=progress)
                results.append(r)
                rows.append(analyse(r, n_boot=boot, rng=np.random.default_rng(s)))
                click.echo(f"seed {s}: {', '.join(f'{a.name} {n:,}' for a, n in zip(r.arms, r.sizes))} customers, "
                           f"{int(r.n_decisions.sum()):,} decisions in {r.seconds:.0f} s; sample ratio "
                           f"p = {r.srm.p_value:.3f}")
            click.echo(metric_table(rows[0]))
            if seeds > 1:
                click.echo("")
                click.echo(pooled_table(pool_seeds(rows)))
            path = write_report(out, results=results, rows_by_seed=rows, command=command)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"report: {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
