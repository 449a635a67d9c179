"""Helpers the tests share: the small simulated shop, a fresh engine, a built shop directory."""

from __future__ import annotations

from pathlib import Path

from banditrec.store import DecisionLog
from simulator import Shop, ShopConfig
from studies.coverage import build_engine

ROOT_DIR = Path(__file__).resolve().parent.parent  # the repository
SMALL = ShopConfig(n_items=200, n_types=8, n_customers=400, dim=4, history_purchases=6)


def make_engine(
    shop: Shop, policy: str = "linucb:alpha=1.0,epsilon=0.1", *, seed=7, db=":memory:", n_candidates: int = 20, **kw
):
    """A fresh engine on ``shop`` with its own log (in memory unless ``db`` is a path)."""
    t = [0.0]

    def clock():
        t[0] += 1.0
        return t[0]

    return build_engine(shop, policy, DecisionLog(db), seed=seed, n_candidates=n_candidates, clock=clock, **kw)


def build_sim_shop(directory, *, n_items: int = 300, n_customers: int = 600, seed: int = 11):
    """A shop directory built from a small simulated retail shop's exported files."""
    from banditrec.shop import BuildConfig, build_shop
    from simulator import SimConfig
    from simulator.environment import Environment
    from simulator.export import export_shop

    env = Environment(SimConfig(n_items=n_items, n_types=20, n_customers=n_customers, history_days=10), seed=seed)
    env.recording = True
    files = export_shop(env, env.warm_up(), directory / "files")
    build_shop(
        files.items, files.interactions, files.users, out=directory / "shop", config=BuildConfig.from_toml(files.config)
    )
    return directory / "shop"
