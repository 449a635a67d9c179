"""The ``banditrec`` command. Wiring only: every command calls into the packages."""

from __future__ import annotations

import os
import sys
import time

import click


@click.group()
@click.version_option(package_name="banditrec")
def main():
    """Contextual-bandit recommendation carousels."""


@main.command()
@click.option("--decisions", default=20_000, show_default=True, help="Decisions to serve.", type=click.IntRange(min=1))
@click.option("--slots", default=5, show_default=True, help="Carousel slots per decision.", type=click.IntRange(min=1))
@click.option("--candidates", default=30, show_default=True, help="CF candidates per decision.", type=click.IntRange(min=1))
@click.option("--batch", default=500, show_default=True, help="Decisions between learning steps.", type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--policy", default="linucb:alpha=1.0,epsilon=0.1", show_default=True, help="Logging policy spec.")
@click.option("--target", "targets", multiple=True, default=("uniform", "popularity:epsilon=0.1"),
              show_default=True, help="Policy to evaluate off-policy (repeatable).")
@click.option("--out", default="out/demo", show_default=True, type=click.Path(file_okay=False))
def demo(decisions, slots, candidates, batch, seed, policy, targets, out):
    """Run the whole loop on a simulated shop and print off-policy estimates beside the truth."""
    from .demo import run_demo
    from .errors import BanditRecError

    click.echo(f"banditrec demo: {decisions} decisions, {slots} slots, seed {seed}")
    try:
        result = run_demo(n_decisions=decisions, n_slots=slots, n_candidates=candidates, batch=batch,
                          seed=seed, out=out, policy=policy, targets=tuple(targets), echo=click.echo)
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo("")
    click.echo(result.table())
    click.echo("")
    click.echo(f"{result.n_decisions} decisions, {result.n_rewards} rewards in {result.seconds:.1f} s; "
               f"logged propensities match recomputed to {result.max_pscore_mismatch:.1e}")
    click.echo(f"report: {result.report}")
    click.echo(f"log:    {result.db}")


@main.command()
@click.option("--seeds", default=10, show_default=True, help="Number of seeded runs.", type=click.IntRange(min=1))
@click.option("--first-seed", default=0, show_default=True, help="Seeds run are first-seed .. first-seed+seeds-1.")
@click.option("--decisions", default=20_000, show_default=True, type=click.IntRange(min=1))
@click.option("--slots", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--policy", default="linucb:alpha=1.0,epsilon=0.1", show_default=True, help="Logging policy spec.")
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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--db", default="out/serve/log.db", show_default=True, type=click.Path(dir_okay=False))
@click.option("--policy", default="linucb:alpha=1.0,epsilon=0.1", show_default=True)
@click.option("--shop-seed", default=0, show_default=True, type=int, help="Seed of the simulated demo shop.")
def serve(host, port, workers, db, policy, shop_seed):
    """Serve the decision endpoint for the simulated demo shop under gunicorn."""
    from .policies import make  # validate the spec before starting workers
    from .errors import BanditRecError

    try:
        make(policy, context_dim=1, item_dim=1, popularity=[1.0])
    except BanditRecError as exc:
        raise click.UsageError(str(exc)) from None
    env = dict(os.environ, BANDITREC_DB=db, BANDITREC_POLICY=policy, BANDITREC_SHOP_SEED=str(shop_seed))
    conf = os.path.join(os.path.dirname(__file__), "service", "gunicorn_conf.py")
    args = [sys.executable, "-m", "gunicorn", "-c", conf, "--bind", f"{host}:{port}",
            "--workers", str(workers), "banditrec.service.wsgi:app"]
    click.echo(f"serving on http://{host}:{port} (log: {db}); Ctrl-C stops")
    os.execvpe(sys.executable, args, env)


if __name__ == "__main__":  # pragma: no cover
    main()
