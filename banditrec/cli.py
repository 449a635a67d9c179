"""The ``banditrec`` command. Wiring only: every command calls into the packages.

Commands of other packages (the simulated-shop studies in ``studies``) join the group through the
``banditrec.commands`` entry-point group, so the library never imports them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click

from .errors import BanditRecError

COMMANDS_GROUP = "banditrec.commands"


def usage_errors(command):
    """Report a library error raised by ``command`` as a usage error: one line, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BanditRecError as exc:
            raise click.UsageError(str(exc)) from None

    return wrapper


class BanditRecGroup(click.Group):
    """The library's commands plus those registered under :data:`COMMANDS_GROUP`.

    A plugin command never replaces a library command of the same name.
    """

    def _plugins(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP) if ep.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str):
        command = self.commands.get(cmd_name)
        if command is not None:
            return command
        ep = self._plugins().get(cmd_name)
        return None if ep is None else ep.load()


@click.group(cls=BanditRecGroup)
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
      banditrec compact --shard log-0.db --shard log-1.db --out dataset/   # several nodes (--shard K)
    \b
    The simulated shop, end to end: banditrec demo
    """


def _token(token_file: str) -> str:
    """The API token: $BANDITREC_API_TOKEN when set, else ``token_file`` (created with a random
    token, mode 0600, when missing). An empty, blank or short token is a usage error: it must
    never start a server with authentication off."""
    import secrets

    from .service.config import check_token, read_token_file

    if os.environ.get("BANDITREC_API_TOKEN") is not None:
        return check_token(os.environ["BANDITREC_API_TOKEN"], "$BANDITREC_API_TOKEN")
    path = Path(token_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return read_token_file(path)


@main.command()
@click.option(
    "--items",
    required=True,
    type=click.Path(dir_okay=False),
    help="Items file (CSV or Parquet): item_id, and optional type, price, title, in_stock, ...",
)
@click.option(
    "--interactions",
    required=True,
    type=click.Path(dir_okay=False),
    help="Interactions file: user_id, item_id, event_type, timestamp (ISO-8601 or epoch seconds).",
)
@click.option(
    "--users",
    default=None,
    type=click.Path(dir_okay=False),
    help="Optional users file: user_id, and segment and other attributes.",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="TOML build settings: column roles, event types, features, candidate model.",
)
@click.option(
    "--map",
    "pairs",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Read FIELD from COLUMN (repeatable); FILE.FIELD=COLUMN for one file only, e.g. items.item_id=sku.",
)
@click.option(
    "--context-encoding",
    "encoding",
    default=None,
    type=click.Path(dir_okay=False),
    help="The context encoding `banditrec import` wrote: its columns become request context fields, "
    "so the shop can serve and evaluate on that imported log.",
)
@click.option(
    "--refit-features",
    is_flag=True,
    help="Fit new item and context features although the directory has a build (policies restart).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Shop directory to create, or to publish a new build into.",
)
@usage_errors
def build(items, interactions, users, config_file, pairs, encoding, refit_features, out):
    """Build a shop directory from a catalog, interactions and (optionally) users.

    Every file is checked first; a bad cell stops the build with its file, line and column,
    and nothing is published. Rebuilding into the same --out keeps every item's index: new
    items are added, removed ones stop being served, learned policies carry over.
    See docs/data-formats.md.
    """
    from .shop import BuildConfig, build_shop

    config = BuildConfig.from_toml(config_file) if config_file else BuildConfig()
    result = build_shop(
        items,
        interactions,
        users,
        out=out,
        config=config,
        mapping=pairs,
        encoding=encoding,
        refit_features=refit_features,
        progress=sys.stderr.isatty(),
    )
    click.echo(result.summary())


@main.command()
@click.option(
    "--shop",
    "shop_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Shop directory written by `banditrec build`; a newer build is picked up while serving.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(min=0))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(min=1), help="Threads per worker.")
@click.option("--db", default="out/serve/log.db", show_default=True, type=click.Path(dir_okay=False))
@click.option("--policy", default="linucb:alpha=1.0,epsilon=0.1", show_default=True)
@click.option(
    "--snapshots",
    default="out/serve/snapshots",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory `banditrec learn` publishes to; workers reload from it.",
)
@click.option(
    "--reward-window",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds after a decision within which its rewards count (later: flagged late).",
)
@click.option(
    "--token-file",
    default="out/serve/token",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Bearer token for reward, events and admin routes, unless $BANDITREC_API_TOKEN is set; "
    "created with a random token if missing.",
)
@click.option("--decide-auth", is_flag=True, help="Decide routes need the token too.")
@click.option(
    "--durable",
    is_flag=True,
    help="Commit the log with synchronous=FULL: an acknowledged decision or reward survives a power "
    "loss too, not only a crash of the process (docs/service.md; its cost: docs/benchmarks.md).",
)
@click.option(
    "--eager-marginals",
    is_flag=True,
    help="Compute Monte-Carlo propensities (softmax, Thompson sampling, VW) before answering rather "
    "than in each worker's background thread (docs/policies.md, 'Deferred marginals').",
)
@click.option(
    "--shard",
    default=None,
    type=click.IntRange(min=0, max=0xFFFF),
    help="This node's log shard when several nodes serve behind a load balancer, each with its own --db "
    "(docs/deployment.md); `banditrec compact` joins the shards.",
)
@click.option(
    "--mode",
    default="live",
    show_default=True,
    type=click.Choice(["live", "apprentice"]),
    help="The mode of a log without a recorded switch: apprentice serves each request's baseline and "
    "logs what the policy would have done (docs/production.md; `banditrec mode` switches).",
)
@click.option(
    "--holdout",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of users served by the policy but never learned from (the analysis holdout).",
)
@click.option(
    "--control",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of users served by the request's baseline (the control arm; `banditrec abtest --db`).",
)
@click.option("--salt", default="banditrec-holdout", show_default=True, help="Salt of the users' arm assignment.")
@click.option(
    "--hide-window",
    default=30 * 86400.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a hide event without its own ttl_s suppresses its item for that user (docs/feedback.md).",
)
@click.option(
    "--hide-reward",
    default=None,
    type=float,
    help="Reward recorded for the slot a hide event names (e.g. -1); default: none.",
)
@click.option("--hide-reward-kind", default="click", show_default=True, help="The kind of --hide-reward's rewards.")
@click.option(
    "--monitor-prom",
    default=None,
    type=click.Path(dir_okay=False),
    help="The file `banditrec monitor --prom` writes (e.g. from cron): /metrics serves its gauges too.",
)
@click.option("--access-log", is_flag=True, help="Log every request to stdout.")
@usage_errors
def serve(
    shop_dir,
    host,
    port,
    workers,
    threads,
    db,
    policy,
    snapshots,
    reward_window,
    token_file,
    decide_auth,
    durable,
    eager_marginals,
    shard,
    mode,
    holdout,
    control,
    salt,
    hide_window,
    hide_reward,
    hide_reward_kind,
    monitor_prom,
    access_log,
):
    """Serve a shop directory's carousels (decide, reward, events, models, metrics) under gunicorn."""
    from .service.config import ServiceConfig
    from .shop import Shop

    Shop(shop_dir).policy(policy)  # a bad directory or spec fails here, not in every worker
    from .apprentice import Arms

    Arms(holdout=holdout, control=control, salt=salt)  # and bad shares
    ServiceConfig(hide_window_s=hide_window, hide_reward=hide_reward, hide_reward_kind=hide_reward_kind)
    token = _token(token_file)
    env = dict(
        os.environ,
        BANDITREC_SHOP=shop_dir,
        BANDITREC_DB=db,
        BANDITREC_POLICY=policy,
        BANDITREC_SNAPSHOTS=snapshots,
        BANDITREC_REWARD_WINDOW_S=repr(reward_window),
        BANDITREC_API_TOKEN=token,
        BANDITREC_DECIDE_AUTH="1" if decide_auth else "0",
        BANDITREC_DURABLE="1" if durable else "0",
        BANDITREC_EAGER_MARGINALS="1" if eager_marginals else "0",
        BANDITREC_MODE=mode,
        BANDITREC_HOLDOUT=repr(holdout),
        BANDITREC_CONTROL=repr(control),
        BANDITREC_SALT=salt,
        BANDITREC_HIDE_WINDOW_S=repr(hide_window),
        BANDITREC_HIDE_REWARD="" if hide_reward is None else repr(hide_reward),
        BANDITREC_HIDE_REWARD_KIND=hide_reward_kind,
        BANDITREC_MONITOR_PROM=monitor_prom or "",
    )
    if access_log:
        env["BANDITREC_ACCESSLOG"] = "-"
    if shard is not None:
        env["BANDITREC_SHARD"] = str(shard)
    else:
        env.pop("BANDITREC_SHARD", None)
    conf = os.path.join(os.path.dirname(__file__), "service", "gunicorn_conf.py")
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        conf,
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "banditrec.service.wsgi:app",
    ]
    shown = token_file if os.environ.get("BANDITREC_API_TOKEN") is None else "$BANDITREC_API_TOKEN"
    where = db if shard is None else f"{db}, shard {shard}"
    click.echo(
        f"serving {shop_dir} on http://{host}:{port} (log: {where}; snapshots: {snapshots}; token: {shown}); "
        "Ctrl-C stops"
    )
    os.execvpe(sys.executable, args, env)


@main.command()
@click.option(
    "--shop",
    "shop_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The shop directory the service serves (its item features; rebuilds are followed).",
)
@click.option("--db", default="out/serve/log.db", show_default=True, type=click.Path(dir_okay=False))
@click.option(
    "--policy",
    default="linucb:alpha=1.0,epsilon=0.1",
    show_default=True,
    help="Policy to start from when no snapshot has been published.",
)
@click.option("--snapshots", default="out/serve/snapshots", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--reward-window",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Learn from a decision once this many seconds have passed (as `serve --reward-window`).",
)
@click.option(
    "--interval", default=5.0, show_default=True, type=click.FloatRange(min=0), help="Seconds between learning steps."
)
@click.option("--kind", default="click", show_default=True, help="Reward kind to learn from.")
@click.option("--once", is_flag=True, help="One step, then exit.")
@click.option(
    "--dataset",
    default=None,
    type=click.Path(file_okay=False),
    help="Learn from the dataset `banditrec compact` writes (the closed decisions of every log shard) instead of --db.",
)
@click.option(
    "--scheduler",
    default=None,
    help="With --dataset: read its partitions on this Dask scheduler (tcp://host:8786); default: in this process.",
)
@usage_errors
def learn(shop_dir, db, policy, snapshots, reward_window, interval, kind, once, dataset, scheduler):
    """Learn from closed decisions in --db (or --dataset) and publish snapshots for `banditrec serve` to reload."""
    from .learner import DatasetLearner, Learner
    from .shop import Shop, ShopFollower

    if scheduler and not dataset:
        raise click.UsageError("--scheduler reads a --dataset; a --db log is read in this process")
    with contextlib.ExitStack() as stack:
        shop = Shop(shop_dir)
        common = dict(kind=kind, item_cold=shop.items.cold)
        if dataset:
            client = None
            if scheduler:
                from .evaluation.tasks import dask_client

                client = stack.enter_context(dask_client(scheduler))
            source, where = dataset, f"the compacted dataset {dataset}"
            cls: type[Learner] = DatasetLearner
            common["client"] = client
        else:
            log = _open_log(db, reward_window)
            stack.callback(log.close)
            source, where, cls = log, f"{db} (window {reward_window:g} s)", Learner
        learner = cls.resume(
            source, lambda: shop.policy(policy), shop.items.features, snapshots, shop.policy_env(), **common
        )
        learner.refresh = ShopFollower(shop, echo=click.echo)
        click.echo(
            f"learning from {where} into {snapshots} for shop build {shop.build}; "
            f"from seq {learner.learned_seq}, model {learner.version or learner.policy.model_version}"
        )
        with contextlib.suppress(KeyboardInterrupt):
            learner.run(interval_s=interval, steps=1 if once else None, echo=click.echo)


@main.command()
@click.option(
    "--shard",
    "shards",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="A serving node's log (repeatable: every shard, so that rewards routed between them are joined).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The day-partitioned dataset.")
@click.option(
    "--reward-window",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="As `serve --reward-window`: a decision moves once its window has closed; fixed for the dataset's life.",
)
@click.option(
    "--grace",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds more to wait past the window (clock differences between nodes, rewards in flight).",
)
@click.option(
    "--max-decisions",
    default=None,
    type=click.IntRange(min=1),
    help="Move at most this many decisions per shard in this run (bounds its memory; the next run goes on).",
)
@click.option(
    "--prune",
    is_flag=True,
    help="Then delete from the shards what the dataset holds (compacted decisions, joined routed rewards).",
)
@usage_errors
def compact(shards, out, reward_window, grace, max_decisions, prune):
    """Move closed decisions of the log shards, rewards joined from all of them, into --out.

    Idempotent, and safe to stop: run it on a schedule (docs/deployment.md).
    """
    from .store.compaction import compact as compact_logs

    result = compact_logs(list(shards), out, reward_window_s=reward_window, grace_s=grace, max_decisions=max_decisions)
    click.echo(result.summary())


@main.command()
@click.option("--db", default=None, type=click.Path(dir_okay=False), help="Decision log to evaluate on.")
@click.option(
    "--shop",
    "shop_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="With --db: a shop directory whose item features, types and business columns the candidate "
    "policies use (default: the log's own items table).",
)
@click.option(
    "--parquet",
    default=None,
    type=click.Path(file_okay=False),
    help="Instead of --db: a day-partitioned Parquet export (export --partition-by day), evaluated on Dask.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="With --parquet: the Dask scheduler (tcp://host:8786); default a LocalCluster on this machine.",
)
@click.option("--policy", "specs", multiple=True, help="Candidate policy spec (repeatable).")
@click.option(
    "--tune",
    "tune",
    multiple=True,
    metavar="SPEC-GRID",
    help="Choose a policy's settings on the log: a spec whose values list alternatives with '|', "
    "e.g. linucb:alpha=0.25|0.5|1,epsilon=0.02|0.05 (repeatable; docs/evaluation.md).",
)
@click.option(
    "--reward-model",
    default=None,
    type=click.Choice(["ridge", "logistic", "gbt"]),
    help="Reward model of DM/DR/SNDR/SwitchDR, cross-fitted on the log [default: the library's default].",
)
@click.option(
    "--estimator",
    "estimators",
    multiple=True,
    default=("IPS", "SNIPS", "DR", "SNDR"),
    show_default=True,
    help="Estimator to report (repeatable).",
)
@click.option("--primary", default="DR", show_default=True, help="Estimator whose lower bound decides the verdict.")
@click.option("--kind", default="click", show_default=True, help="Reward kind to evaluate.")
@click.option(
    "--train-frac",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Share of the log (oldest first) the candidates learn from before evaluation.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--out",
    default="out/evaluate",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for the report and plot.",
)
@click.option(
    "--record",
    is_flag=True,
    help="With --db: write each candidate's verdict to the log, where `banditrec mode live` and "
    "POST /v1/mode read it (docs/production.md).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@usage_errors
def evaluate(
    db,
    shop_dir,
    parquet,
    scheduler,
    specs,
    tune,
    reward_model,
    estimators,
    primary,
    kind,
    train_frac,
    seed,
    out,
    record,
    as_json,
):
    """Estimate candidate policies' value on a logged period, with a safe-to-deploy verdict."""
    import json

    from .evaluation import evaluate_log

    if (db is None) == (parquet is None):
        raise click.UsageError("give exactly one of --db and --parquet")
    if scheduler and not parquet:
        raise click.UsageError("--scheduler goes with --parquet")
    if shop_dir and parquet:
        raise click.UsageError("--shop goes with --db")
    if record and not db:
        raise click.UsageError("--record goes with --db")
    if parquet:
        from .evaluation import dask_client, evaluate_parquet

        with dask_client(scheduler) as client:
            result = evaluate_parquet(
                parquet,
                list(specs),
                estimators=tuple(estimators),
                primary=primary,
                kind=kind,
                train_frac=train_frac,
                seed=seed,
                out=out,
                client=client,
                progress=sys.stderr.isatty(),
                tune=tuple(tune),
                reward_model=reward_model,
            )
    else:
        from .shop import Shop

        result = evaluate_log(
            db,
            list(specs),
            estimators=tuple(estimators),
            primary=primary,
            kind=kind,
            train_frac=train_frac,
            seed=seed,
            out=out,
            tune=tuple(tune),
            reward_model=reward_model,
            shop=Shop(shop_dir) if shop_dir else None,
        )
    summary = None
    if db:
        from .evaluation.apprentice import apprentice_summary, verdict_rows
        from .store import DecisionLog

        log = DecisionLog(db)
        summary = apprentice_summary(log, kind)
        if record:
            log.record_verdicts(verdict_rows(result))
        log.close()
    if as_json:
        body = result.as_json()
        if summary is not None:
            body["apprentice"] = summary.as_json()
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(result.table())
    if summary is not None:
        click.echo("")
        click.echo("\n".join(summary.lines()))
        for c in result.candidates:
            name = c.gate or primary  # the estimator the gate decided on
            e = c.estimates[name]
            click.echo(
                f"  estimated lift of switching to {c.spec}: {e.value - result.logging.value:+.4f} per decision "
                f"({name} lower bound {e.lower - result.logging.value:+.4f})"
            )
    if record:
        click.echo(f"recorded {len(result.candidates)} verdict(s) in {db}")
    click.echo(f"report: {result.report}")


@main.command()
@click.argument("mode", required=False, type=click.Choice(["live", "apprentice"]))
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="The serving log.")
@click.option(
    "--policy",
    default=None,
    help="The served policy's spec or name, whose recorded verdict going live needs (required for live).",
)
@click.option("--reason", default=None, help="Why (recorded with the switch; required to switch).")
@click.option("--actor", default=lambda: os.environ.get("USER") or "cli", help="Who (recorded)  [default: $USER]")
@click.option("--force", is_flag=True, help="Go live without a safe recorded verdict (recorded as forced).")
@usage_errors
def mode(mode, db, policy, reason, actor, force):
    """Show the serving mode and its history, or switch every serving process on the log."""
    from .apprentice import switch_mode
    from .policies import parse_spec
    from .store import DecisionLog

    if not os.path.exists(db):
        raise click.UsageError(f"no decision log at {db}")
    log = DecisionLog(db)
    try:
        if mode is not None:
            if not reason:
                raise click.UsageError("a switch needs --reason")
            if mode == "live" and not policy:
                raise click.UsageError("going live needs --policy (the served policy's spec or name)")
            name = parse_spec(policy)[0] if policy else ""
            row = switch_mode(log, mode, policy=name, actor=actor, reason=reason, force=force)
            click.echo(f"switched to {row['mode']} (seq {row['seq']}); serving processes follow within a second")
        history = log.mode_history()
        if not history:
            click.echo("no switch recorded: each process serves its starting mode (banditrec serve --mode)")
        for row in history:
            gate = row["gate"] or {}
            verdict = gate.get("verdict") or {}
            note = ""
            if verdict:
                note = f"; verdict {verdict['spec']}: {'safe' if verdict['safe'] else 'NOT safe'}"
            if gate.get("forced"):
                note += "; FORCED"
            click.echo(f"{row['seq']:>4}  {row['mode']:<10} by {row['actor']}: {row['reason']}{note}")
    finally:
        log.close()


@main.command()
@click.option(
    "--db", required=True, type=click.Path(dir_okay=False), help="Decision log served with candidate sources."
)
@click.option(
    "--shop",
    "shop_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="The shop directory that served the log (its item features); default the log's items table.",
)
@click.option("--policy", default=None, help="Target policy spec [default: the spec that logged most decisions].")
@click.option("--kind", default="click", show_default=True, help="Reward kind.")
@click.option(
    "--train-frac",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of the log (oldest first) the target policy learns from before the ablation.",
)
@click.option("--estimator", default="SNIPS", show_default=True, type=click.Choice(["IPS", "SNIPS"]))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the tables.")
@usage_errors
def ablation(db, shop_dir, policy, kind, train_frac, estimator, as_json):
    """What each candidate source adds: the log's account per source and the off-policy value
    of serving without each one (docs/candidates.md, "Ablation")."""
    import json

    from .evaluation.ablation import ablation_log
    from .shop import Shop

    if not Path(db).is_file():
        raise click.UsageError(f"{db}: no such decision log")
    result = ablation_log(
        db,
        policy=policy,
        shop=Shop(shop_dir) if shop_dir else None,
        kind=kind,
        train_frac=train_frac,
        estimator=estimator,
    )
    click.echo(json.dumps(result.as_json(), indent=2) if as_json else result.table())


@main.command()
@click.option(
    "--shop",
    "shop_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="The shop directory that served the log: names the context and item features, and gives the "
    "item features when the log's items table is empty.",
)
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="Decision log to check.")
@click.option(
    "--since",
    default=None,
    help="Window start: epoch seconds, ISO date/datetime (UTC), or -N[dhms] before "
    "the newest decision [default: the log's first decision].",
)
@click.option("--until", default=None, help="Window end (exclusive), same forms [default: after the newest decision].")
@click.option(
    "--reference",
    default=None,
    metavar="START:END",
    help="Reference window of the drift and reward-drop checks (START..END when the bounds carry colons) "
    "[default: the first half of the window, compared with the second half].",
)
@click.option("--kind", default="click", show_default=True, help="Reward kind of the reward rates.")
@click.option(
    "--thresholds",
    "thresholds_file",
    default=None,
    type=click.Path(dir_okay=False),
    help='TOML file of thresholds (docs/monitor.md, "Thresholds"), top level or under [monitor].',
)
@click.option(
    "--threshold", "pairs", multiple=True, metavar="NAME=VALUE", help="One threshold (repeatable; beats the file)."
)
@click.option(
    "--ignore-feature",
    "ignore",
    multiple=True,
    metavar="NAME",
    help="A feature left out of the drift checks, still reported (repeatable; adds to ignore_features).",
)
@click.option(
    "--arm-shares",
    default=None,
    metavar="holdout=H,control=C",
    help='Configured shares of the served groups [default: policy_params\' "arms"]; main takes the rest.',
)
@click.option(
    "--out",
    default="out/monitor",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for monitor.md and its plots.",
)
@click.option(
    "--prom",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write the gauges to this node_exporter textfile (e.g. /var/lib/node_exporter/banditrec.prom).",
)
@click.option(
    "--target",
    default=None,
    metavar="SPEC",
    help="With --shop: the reference target of the ESS, a policy spec as configured (untrained), e.g. "
    "popularity:epsilon=0.1 [default: uniform over the logged candidates].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the checks table.")
@usage_errors
def monitor(
    shop_dir, db, since, until, reference, kind, thresholds_file, pairs, ignore, arm_shares, out, prom, target, as_json
):
    """Health of a served log: reward rates, feature drift, propensities, sample ratio, join lag.

    Exit status 0 when every check passes (or is skipped), 3 when any alerts; each alert is
    also one line on stderr: ``banditrec.monitor ALERT <check>=<value> threshold=...``.
    See docs/monitor.md.
    """
    import json

    from .monitor import Thresholds, parse_arm_shares, run_monitor
    from .monitor_plots import write_report

    th = Thresholds.from_toml(thresholds_file) if thresholds_file else Thresholds()
    th = Thresholds.from_pairs(pairs, th)
    if ignore:
        th = th.replace({"ignore_features": (*th.ignore_features, *ignore)}, source="--ignore-feature")
    if target and not shop_dir:
        raise click.UsageError("--target needs --shop (the target scores the shop's items)")
    shop, names = None, (None, None)
    if shop_dir:
        from .shop.serving import open_newest_valid

        shop, _ = open_newest_valid(shop_dir)
        names = (list(shop.feature_names.context), list(shop.feature_names.item))
    report = run_monitor(
        db,
        since=since,
        until=until,
        reference=reference,
        thresholds=th,
        kind=kind,
        context_names=names[0],
        item_names=names[1],
        item_features=None if shop is None else shop.items.features,
        arm_shares=parse_arm_shares(arm_shares),
        target=shop.policy(target) if shop is not None and target else None,
        item_cold=None if shop is None else shop.items.cold,
    )
    path = write_report(report, out)
    if prom:
        report.write_prom(prom)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        click.echo(report.checks_table())
        click.echo(f"report: {path}")
    for check in report.alerts:
        click.echo(check.log_line(), err=True)
    if report.exit_code:
        sys.exit(report.exit_code)


# ---- moving logs in and out (banditrec.store.exchange) -----------------------------------------


def _open_log(db: str, window: float | None = None):
    """The decision log at ``db`` (with ``window``: its reward window in seconds); a file that is
    not one is a usage error, not a traceback."""
    import sqlite3

    from .store import DecisionLog

    try:
        return DecisionLog(db) if window is None else DecisionLog(db, reward_window_s=window)
    except sqlite3.DatabaseError as exc:
        raise click.UsageError(f"{db} is not a decision log: {exc}") from None


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(("obd", "csv")),
    help="obd: the Open Bandit Dataset's CSV layout; csv: one row per logged slot, columns by --map.",
)
@click.option(
    "--db", required=True, type=click.Path(dir_okay=False), help="Decision log to import into (created if missing)."
)
@click.option(
    "--map",
    "pairs",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Column of a field (repeatable), e.g. position=pos, reward=clicked, context=x_*. "
    "Defaults: the columns `banditrec export --format csv` writes (obd: the OBD names).",
)
@click.option("--kind", default="click", show_default=True, help="Reward kind of a column mapped as `reward`.")
@click.option(
    "--position-base",
    default=0,
    show_default=True,
    type=click.IntRange(0, 1),
    help="csv: 1 when positions count from 1 (obd positions always do).",
)
@click.option("--n-items", default=None, type=click.IntRange(min=1), help="Catalog size when item ids are 0..n-1.")
@click.option("--policy", default=None, help="Logging policy name to record (default: obd or imported).")
@click.option("--event-prefix", default=None, help="Prefix of generated event ids (default: the file's stem).")
@click.option("--start-line", default=None, type=click.IntRange(min=2), help="Resume an import at this line.")
@click.option(
    "--slots",
    "obd_slots",
    default=3,
    show_default=True,
    type=click.IntRange(min=0),
    help="obd: each row is its own round of a carousel of this many slots, observed at the row's "
    "position (as Open Bandit Pipeline reads it); 0 groups rows of one impression instead.",
)
@usage_errors
def import_(file, fmt, db, pairs, kind, position_base, n_items, policy, event_prefix, start_line, obd_slots):
    """Import FILE's logged slots into the decision log --db, in batches.

    A bad line stops the import with its line and column; what was imported before it stays in
    the log, and the message says which --start-line resumes.
    """
    import json

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
    finally:
        log.close()
    encoding = Path(f"{db}.context-{result.encoding_id}.json")
    encoding.write_text(json.dumps(result.encoding(), indent=1) + "\n")
    lines = f"lines {result.first_line}-{result.last_line} of " if result.decisions else ""
    click.echo(
        f"imported {result.decisions} decisions ({result.slots} slots, {result.rewards} rewards) from "
        f"{lines}{file} into {db}"
    )
    click.echo(f"{len(result.context_names)} context columns, {result.n_items} items; encoding: {encoding}")


@main.command("export")
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False), help="Decision log to export.")
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(("csv", "parquet", "vw", "dsjson", "interactions")),
    help="csv/parquet: one row per logged slot with every reward kind; vw: VW text --cb_adf "
    "examples; dsjson: VW decision-service JSON lines; interactions: the events and positive "
    "rewards as an interactions file for `banditrec build`.",
)
@click.option("--out", required=True, type=click.Path(), help="File to write (a directory with --partition-by day).")
@click.option(
    "--partition-by",
    "partition_by",
    default=None,
    type=click.Choice(("day",)),
    help="parquet: one file per UTC day under --out (a directory); re-running writes only changed days.",
)
@click.option(
    "--kind", default="click", show_default=True, help="vw/dsjson: the reward kind labels carry (cost = -reward)."
)
@click.option(
    "--default-reward",
    default=0.0,
    show_default=True,
    type=float,
    help="vw/dsjson: reward of a slot that has none of --kind.",
)
@click.option(
    "--min-probability",
    default=None,
    type=click.FloatRange(0, 1, min_open=True),
    help="vw/dsjson: clip smaller logged probabilities up to this (default: refuse ones VW reads as 0).",
)
@click.option("--candidates", is_flag=True, help="csv/parquet: add each decision's candidate ids and indices.")
@usage_errors
def export(db, fmt, out, partition_by, kind, default_reward, min_probability, candidates):
    """Export the decision log --db to --out, one row or example per logged slot."""
    from .store.exchange import export_log

    if partition_by:
        _export_partitioned(db, fmt, out)
        return
    log = _open_log(db)
    try:
        result = export_log(
            log,
            out,
            fmt,
            kind=kind,
            default_reward=default_reward,
            min_probability=min_probability,
            candidates=candidates,
        )
    finally:
        log.close()
    if fmt == "interactions":
        click.echo(f"exported {result.rows} interactions (events and positive rewards) to {out}")
        return
    clipped = f"; {result.clipped} probabilities clipped to {min_probability}" if result.clipped else ""
    click.echo(f"exported {result.rows} logged slots of {result.decisions} decisions to {out} ({fmt}){clipped}")


def _export_partitioned(db: str, fmt: str, out: str) -> None:
    from .store.partitioned import export_partitioned

    if fmt != "parquet":
        raise click.UsageError("--partition-by day writes Parquet: use --format parquet")
    log = _open_log(db)
    try:
        ds = export_partitioned(log, out)
    finally:
        log.close()
    click.echo(
        f"exported {ds.n_rows} logged slots of {ds.n_decisions} decisions to {out} in {len(ds.partitions)} "
        f"day partitions ({len(ds.written)} written, {len(ds.kept)} unchanged)"
    )


@main.command()
@click.argument("item_id")
@click.option(
    "--shop",
    "shop_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Shop directory whose candidate model to ask.",
)
@click.option(
    "--db",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Instead of --shop: a decision log whose items (with a 'type' attribute) and events the model learns from.",
)
@click.option(
    "--kind",
    default="similar",
    show_default=True,
    type=click.Choice(("similar", "complements")),
    help="similar: substitutes (item-item CF; metadata for items without events); "
    "complements: what is bought after ITEM_ID (directional, co-purchase-only pairs).",
)
@click.option("-n", "n", default=10, show_default=True, type=click.IntRange(min=1), help="Neighbours to print.")
@usage_errors
def similar(item_id, shop_dir, db, kind, n):
    """Print ITEM_ID's neighbours with scores and product types."""

    if (shop_dir is None) == (db is None):
        raise click.UsageError("give exactly one of --shop and --db")
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
            raise click.UsageError(f"item {item_id!r} is not in the log's catalog ({len(ids)} items, e.g. {ids[0]!r})")
        j = ids.index(item_id)

        def describe(k: int) -> str:
            a = attrs[k]
            return f"type {a.get('type', a.get('product_type', '?'))}" + (f"  {a['title']}" if "title" in a else "")

    found, scores = (gen.similar_items if kind == "similar" else gen.complements)([j], n)
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
@click.argument("item_id", required=False)
@click.option("--shop", "shop_dir", required=True, type=click.Path(file_okay=False), help="Shop directory.")
@click.option(
    "--edge",
    default=None,
    metavar="TYPE",
    help="Only this edge type: complement, substitute, accessory_of, same_brand, same_type, bought_after.",
)
@click.option("--limit", default=10, show_default=True, type=click.IntRange(min=1), help="Edges per type and way.")
@click.option(
    "--direction",
    default="both",
    show_default=True,
    type=click.Choice(("out", "in", "both")),
    help="out: ITEM -> neighbour; in: neighbour -> ITEM; undirected edges are always shown.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--export", "export_to", default=None, type=click.Path(dir_okay=False), help="Write the whole graph.")
@click.option(
    "--format",
    "fmt",
    default=None,
    type=click.Choice(("parquet", "csv", "graphml")),
    help="--export's format (default: from the file's suffix, else parquet).",
)
@usage_errors
def graph(item_id, shop_dir, edge, limit, direction, as_json, export_to, fmt):
    """Print ITEM_ID's product-graph neighbours by edge type, or --export the graph (docs/graph.md)."""
    import json

    import numpy as np

    from .candidates.graph import read_graph
    from .errors import ValidationError
    from .shop.build import catalog_from_table
    from .shop.directory import BuildFiles

    if (item_id is None) == (export_to is None):
        raise click.UsageError("give exactly one of ITEM_ID and --export")
    files = BuildFiles.open(shop_dir)
    catalog = catalog_from_table(files.table("items.parquet"))
    if "graph.parquet" not in files.manifest["files"]:
        raise ValidationError(
            f"build {files.build} of {shop_dir} has no graph.parquet (built before the product graph: "
            "rebuild it with `banditrec build`)",
            "shop",
        )
    ids = catalog.ids
    g = read_graph(files, ids)
    if export_to is not None:
        suffix = Path(export_to).suffix.lstrip(".").lower()
        fmt = fmt or (suffix if suffix in ("csv", "graphml") else "parquet")
        g.export(export_to, fmt)
        click.echo(f"{sum(g.n_edges.values()):,} edge rows -> {export_to} ({fmt})")
        return
    where = {k: i for i, k in enumerate(ids.tolist())}
    if item_id not in where:
        raise ValidationError(
            f"item {item_id!r} is not in the shop's catalog ({len(ids):,} items, e.g. {ids[0]!r})", "item"
        )
    j = where[item_id]
    nb = g.adjacent(j, edge=edge, direction=direction, N=limit)
    kind = catalog.type if catalog.type is not None else np.full(len(ids), "", dtype=object)
    title = catalog.text.get("title", np.full(len(ids), "", dtype=object))
    rows = [
        {"item_id": ids[k], "edge": e, "direction": d, "weight": w, "support": s, "type": kind[k], "title": title[k]}
        for k, e, d, w, s in zip(nb.ids.tolist(), nb.edges, nb.directions, nb.weights.tolist(), nb.support.tolist())
    ]
    if as_json:
        out = {"item_id": item_id, "type": kind[j], "title": title[j], "neighbours": rows}
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{item_id}  type {kind[j] or '?'}" + (f"  {title[j]}" if title[j] else ""))
    if not rows:
        click.echo("  (no edges" + (f" of type {edge}" if edge else "") + ")")
    width = max([9] + [len(r["item_id"]) for r in rows])
    if rows:
        click.echo(f"  {'edge':<12} {'direction':<10} {'neighbour':<{width}} {'weight':>9} {'support':>7}")
    for r in rows:
        click.echo(
            f"  {r['edge']:<12} {r['direction']:<10} {r['item_id']:<{width}} {r['weight']:9.4f} "
            f"{r['support']:>7}  type {r['type'] or '?'}" + (f"  {r['title']}" if r["title"] else "")
        )


@main.command()
@click.option("--shop", "shop_dir", required=True, type=click.Path(file_okay=False), help="Shop directory.")
@click.option("--user", "user_id", required=True, help="User id (unknown users get popular and new items).")
@click.option("--cart", "cart", multiple=True, metavar="ITEM", help="An item in the cart (repeatable).")
@click.option("--view", "views", multiple=True, metavar="ITEM", help="An item viewed this session (repeatable).")
@click.option("--slots", default=5, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--policy",
    default="linucb:alpha=1.0,epsilon=0.1",
    show_default=True,
    help="Policy spec (untrained unless --snapshots has a published snapshot).",
)
@click.option(
    "--snapshots",
    default=None,
    type=click.Path(file_okay=False),
    help="Learner snapshot directory: serve its newest snapshot.",
)
@click.option(
    "--context",
    "fields",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A request context field, e.g. device=mobile (repeatable).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the slot sampler.")
@click.option(
    "--explain",
    is_flag=True,
    help="Also print, per slot, the score's top feature contributions, exploration bonus and total.",
)
@usage_errors
def recommend(shop_dir, user_id, cart, views, slots, policy, snapshots, fields, seed, explain):
    """Print the carousel the shop would show USER: ids, titles, types, and why each is there."""
    from .shop.tables import is_float
    from .shop.tools import recommend as run

    context = {}
    for pair in fields:
        key, eq, value = pair.partition("=")
        if not eq:
            raise click.UsageError(f"--context takes FIELD=VALUE, got {pair!r}")
        context[key] = float(value) if is_float(value) else value
    rec = run(
        shop_dir,
        user_id,
        cart=list(cart),
        views=list(views),
        n_slots=slots,
        policy=policy,
        snapshots=snapshots,
        context=context or None,
        seed=seed,
        explain=explain,
    )
    click.echo(rec.table())


# ---- the global block list (banditrec.store.blocklist; docs/feedback.md) ------------------------


def _utc(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _actor(actor: str | None) -> str:
    import getpass

    if actor:
        return actor
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _catalog_check(log, shop_dir: str | None, item_ids) -> str:
    """Refuse ids the catalog lacks (the shop's when ``--shop`` is given, else the log's items
    table); returns what was checked against, or a note that nothing could be."""
    from .errors import ValidationError

    if shop_dir is not None:
        from .shop import Shop

        known = set(Shop(shop_dir).items.ids)
        where = f"the catalog of {shop_dir}"
    elif log.count("items"):
        known = set(log.item_ids().values())
        where = "the log's items table"
    else:
        return "not checked against a catalog (give --shop DIR)"
    for i, item in enumerate(item_ids):
        if item not in known:
            raise ValidationError(f"ITEM {i + 1}: {item!r} is not in {where}", "item_ids")
    return f"checked against {where}"


@main.command()
@click.argument("item_ids", nargs=-1, metavar="ITEM...")
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="The serving decision log.")
@click.option("--reason", default=None, help="Why (legal, recall, ...); required to block.")
@click.option("--actor", default=None, help="Who asks, for the audit trail [default: cli:$USER].")
@click.option("--shop", "shop_dir", default=None, type=click.Path(file_okay=False), help="Check ids against it.")
@click.option("--list", "show", is_flag=True, help="Print the block list instead.")
@click.option("--audit", "audit", is_flag=True, help="Print the audit trail instead.")
@usage_errors
def block(item_ids, db, reason, actor, shop_dir, show, audit):
    """Block ITEM... for every user (effective in every serving process at once; audited), or --list
    the block list, or print the --audit trail (docs/feedback.md)."""
    import json

    log = _open_log(db)
    try:
        if show or audit:
            if item_ids or reason:
                raise click.UsageError("--list and --audit take no ITEM and no --reason")
            if show:
                rows = log.blocklist()
                click.echo(f"{len(rows)} blocked item(s)")
                for r in rows:
                    click.echo(f"  {r.item_id}  since {_utc(r.ts)}  by {r.actor}: {r.reason}")
            else:
                for a in log.audit_rows():
                    click.echo(f"{a.seq:>5}  {_utc(a.ts)}  {a.actor}  {a.action} {a.subject}  {json.dumps(a.detail)}")
            return
        if not item_ids:
            raise click.UsageError("give the ITEM ids to block, or --list")
        if not reason:
            raise click.UsageError("--reason is required: the audit trail records why")
        note = _catalog_check(log, shop_dir, item_ids)
        statuses = log.block(list(item_ids), reason=reason, actor=_actor(actor))
        for item, status in zip(item_ids, statuses):
            click.echo(f"{item}: {status.replace('_', ' ')}")
        click.echo(f"({note}; {len(log.blocklist())} item(s) on the block list)")
    finally:
        log.close()


@main.command()
@click.argument("item_ids", nargs=-1, required=True, metavar="ITEM...")
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="The serving decision log.")
@click.option("--reason", default="", help="Why the block is lifted (recorded in the audit trail).")
@click.option("--actor", default=None, help="Who asks, for the audit trail [default: cli:$USER].")
@usage_errors
def unblock(item_ids, db, reason, actor):
    """Lift the block of ITEM... (each change audited; an item not blocked is an error)."""
    log = _open_log(db)
    try:
        for item in item_ids:
            entry = log.unblock(item, actor=_actor(actor), reason=reason)
            click.echo(f"{item}: unblocked (blocked since {_utc(entry.ts)} by {entry.actor}: {entry.reason})")
    finally:
        log.close()


if __name__ == "__main__":  # pragma: no cover
    main()
