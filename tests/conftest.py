"""Shared fixtures: a small simulated shop and an engine logging to an in-memory SQLite log."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

from banditrec.store import DecisionLog
from simulator import Shop
from tests.helpers import SMALL, build_sim_shop, make_engine


@pytest.fixture(scope="session")
def small_shop() -> Shop:
    return Shop(SMALL, seed=123)


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


@pytest.fixture(scope="session")
def sim_shop_dir(tmp_path_factory):
    """A shop directory (read-only: tests that rebuild it copy it first)."""
    return build_sim_shop(tmp_path_factory.mktemp("sim-shop"))
