"""Shared fixtures: a small simulated shop and an engine logging to an in-memory SQLite log."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import settings
import pytest

from studies.coverage import build_engine
from banditrec.store import DecisionLog
from simulator import Shop, ShopConfig

SMALL = ShopConfig(n_items=200, n_types=8, n_customers=400, dim=4, history_purchases=6)


@pytest.fixture(scope="session")
def small_shop() -> Shop:
    return Shop(SMALL, seed=123)


def make_engine(shop: Shop, policy: str = "linucb:alpha=1.0,epsilon=0.1", *, seed=7, db=":memory:",
                n_candidates: int = 20, **kw):
    """A fresh engine on ``shop`` with its own log (in memory unless ``db`` is a path)."""
    t = [0.0]

    def clock():
        t[0] += 1.0
        return t[0]

    return build_engine(shop, policy, DecisionLog(db), seed=seed, n_candidates=n_candidates, clock=clock, **kw)


@pytest.fixture
def engine(small_shop):
    eng = make_engine(small_shop)
    yield eng
    eng.log.close()


@pytest.fixture
def make_log():
    """Open decision logs (``DecisionLog``'s arguments) and close them all after the test."""
    opened: list[DecisionLog] = []

    def make(*args, **kwargs) -> DecisionLog:
        opened.append(DecisionLog(*args, **kwargs))
        return opened[-1]

    yield make
    for log in opened:
        log.close()


@pytest.fixture
def log(make_log) -> DecisionLog:
    """An in-memory decision log, closed after the test."""
    return make_log()


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


# Property tests explore new examples locally; under CI they replay the same examples every run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


SHOP_SIM = None  # the simulator's settings of the small shop directory below (set lazily)


def build_sim_shop(directory, *, n_items: int = 300, n_customers: int = 600, seed: int = 11):
    """A shop directory built from a small simulated retail shop's exported files."""
    from banditrec.shop import BuildConfig, build_shop
    from simulator import SimConfig
    from simulator.environment import Environment
    from simulator.export import export_shop

    env = Environment(SimConfig(n_items=n_items, n_types=20, n_customers=n_customers, history_days=10), seed=seed)
    env.recording = True
    files = export_shop(env, env.warm_up(), directory / "files")
    build_shop(files.items, files.interactions, files.users, out=directory / "shop",
               config=BuildConfig.from_toml(files.config))
    return directory / "shop"


@pytest.fixture(scope="session")
def sim_shop_dir(tmp_path_factory):
    """A shop directory (read-only: tests that rebuild it copy it first)."""
    return build_sim_shop(tmp_path_factory.mktemp("sim-shop"))
