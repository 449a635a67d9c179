"""Latent factors (ALS, BPR) beside item-item CF and popularity on a temporal split of a shop's
interactions: hit@k, NDCG@k and catalogue coverage@k on each user's purchases after the cut.

Details: docs/factors.md, "Comparison (`studies/brains.py`)".
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from banditrec.candidates.factors import LatentFactors
from banditrec.candidates.generator import CandidateGenerator
from banditrec.candidates.itemknn import ItemItemCF, top_n_columns
from banditrec.candidates.rules import UserState
from banditrec.candidates.signals import DAY_S, Interactions
from banditrec.errors import ValidationError
from banditrec.shop.config import BuildConfig
from banditrec.shop.inputs import read_catalog, read_events

KS = (10, 20)
KIND_WEIGHTS = np.array([1.0, 2.0, 4.0])  # view, cart, purchase: a user's interest in an item
PURCHASE = 2

# recommend(users (m,), N) -> ids (m, N), -1 padded; the users' histories are the training events
Recommender = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class ShopData:
    """A shop's interactions as indices: ``user, item, kind (0 view, 1 cart, 2 purchase), ts``,
    ``session`` (or None) and each item's product type code ``types (n_items,)``."""

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray
    ts: np.ndarray
    n_users: int
    n_items: int
    source: str
    session: np.ndarray | None = None
    types: np.ndarray | None = None


def _one_of(directory: Path, stem: str) -> Path:
    found = [directory / f"{stem}.{ext}" for ext in ("csv", "parquet") if (directory / f"{stem}.{ext}").exists()]
    if len(found) != 1:
        raise ValidationError(f"{directory} must hold one of {stem}.csv or {stem}.parquet, found {len(found)}", stem)
    return found[0]


def read_shop(directory) -> ShopData:
    """The items and interactions files of ``directory`` (``items.csv|parquet``,
    ``interactions.csv|parquet``, and ``build.toml`` if present), read as ``banditrec build``
    reads them."""
    d = Path(directory)
    toml = d / "build.toml"
    config = BuildConfig.from_toml(toml) if toml.exists() else BuildConfig()
    catalog = read_catalog(_one_of(d, "items"), config, {})
    events = read_events(_one_of(d, "interactions"), config, {}, catalog.ids, None)
    types = np.zeros(catalog.n_items, dtype=np.int64)
    if catalog.type is not None:
        types = np.unique(catalog.type, return_inverse=True)[1].astype(np.int64)
    return ShopData(
        events.user,
        events.item,
        events.kind.astype(np.int64),
        events.ts,
        len(events.user_ids),
        catalog.n_items,
        str(d),
        events.session,
        types,
    )


def simulated_shop(*, n_items: int, n_customers: int, days: int, seed: int) -> ShopData:
    """The simulator's pre-period of ``days`` days, exported as a shop's files
    (:func:`simulator.export.export_shop`) and read back by :func:`read_shop`."""
    from simulator.config import SimConfig
    from simulator.environment import Environment
    from simulator.export import export_shop

    env = Environment(SimConfig(n_items=n_items, n_customers=n_customers).replace(history_days=days), seed=seed)
    history = env.warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        export_shop(env, history, tmp)
        data = read_shop(tmp)
    src = f"simulator: {n_items:,} items, {n_customers:,} customers, {days} days, seed {seed}"
    return ShopData(data.user, data.item, data.kind, data.ts, data.n_users, data.n_items, src, data.session, data.types)


@dataclass(frozen=True)
class Split:
    """``train (n_users, n_items)``: kind-weighted interactions before the cut; ``targets``:
    each user's purchases in ``[cut, end)`` of items they had not touched before the cut;
    ``users``: the rows with at least one target; ``before``: the events before the cut."""

    train: sp.csr_matrix
    targets: sp.csr_matrix
    users: np.ndarray
    before: np.ndarray


def temporal_split(data: ShopData, cut: float, end: float = np.inf) -> Split:
    before = data.ts < cut
    shape = (data.n_users, data.n_items)
    train = sp.csr_matrix((KIND_WEIGHTS[data.kind[before]], (data.user[before], data.item[before])), shape=shape)
    after = (data.ts >= cut) & (data.ts < end) & (data.kind == PURCHASE)
    bought = sp.csr_matrix((np.ones(int(after.sum())), (data.user[after], data.item[after])), shape=shape)
    bought.data[:] = 1.0
    seen = train.copy()
    seen.data[:] = 1.0
    targets = (bought - bought.multiply(seen)).tocsr()
    targets.eliminate_zeros()
    users = np.flatnonzero(np.diff(targets.indptr) > 0)
    return Split(train, targets, users, before)


def metrics(ids: np.ndarray, targets: sp.csr_matrix, n_items: int, ks=KS) -> dict:
    """For lists ``ids (m, >= max(ks))`` and binary ``targets (m, n_items)``: ``hit@k`` (share of
    rows with a target in the first k), ``ndcg@k`` (binary gains, ideal = min(targets, k)
    hits first) and ``coverage@k`` (distinct items in the first k of all lists / n_items)."""
    m = ids.shape[0]
    rel = np.zeros(ids.shape)
    ok = ids >= 0
    rows = np.repeat(np.arange(m), ids.shape[1]).reshape(ids.shape)
    if ok.any():
        rel[ok] = np.asarray(targets[rows[ok], ids[ok]]).ravel() > 0
    n_t = np.diff(targets.indptr)
    discount = 1.0 / np.log2(np.arange(ids.shape[1]) + 2.0)
    out = {}
    for k in ks:
        ideal = np.cumsum(discount[:k])[np.minimum(n_t, k) - 1]
        out[f"hit@{k}"] = float((rel[:, :k].sum(axis=1) > 0).mean())
        out[f"ndcg@{k}"] = float(((rel[:, :k] @ discount[:k]) / ideal).mean())
        top = ids[:, :k]
        out[f"coverage@{k}"] = len(np.unique(top[top >= 0])) / n_items
    return out


# ---- the brains ---------------------------------------------------------------------------------
Fit = Callable[[ShopData, Split, dict, int], Recommender]


def popularity(data: ShopData, split: Split, params: dict, threads: int) -> Recommender:
    """The most interacted-with items (kind-weighted) a user has not touched, ties by lower index."""
    pop = np.asarray(split.train.sum(axis=0)).ravel()

    def rec(users, N):
        H = split.train[users]
        S = np.broadcast_to(pop, H.shape).copy()
        S[np.repeat(np.arange(H.shape[0]), np.diff(H.indptr)), H.indices] = -np.inf
        return top_n_columns(S, N)

    return rec


def item_cf(data: ShopData, split: Split, params: dict, threads: int) -> Recommender:
    cf = ItemItemCF(**params).fit(split.train, num_threads=threads)
    return lambda users, N: cf.candidates_batch(split.train[users], N)[0]


def factors(model: str) -> Fit:
    def fit(data, split, params, threads):
        lf = LatentFactors(model, **params, random_state=0, num_threads=threads).fit(split.train)
        return lambda users, N: lf.recommend_batch(split.train[users], N)[0]

    return fit


def generator(data: ShopData, split: Split, params: dict, threads: int) -> Recommender:
    """The full :class:`CandidateGenerator` (complements, substitutes, popular) fitted on the
    events before the cut; each user's state is their whole history before it (newest first).
    Items the user touched are dropped from its list afterwards (it may propose them; they
    cannot be targets), from ``N + 50`` candidates asked for."""
    b = split.before
    session = None if data.session is None else data.session[b]
    events = Interactions.from_arrays(
        data.user[b],
        data.item[b],
        data.ts[b],
        data.kind[b],
        session=session,
        n_users=data.n_users,
        n_items=data.n_items,
    )
    types = np.zeros(data.n_items, dtype=np.int64) if data.types is None else data.types
    gen = CandidateGenerator(**params).fit(events, types, num_threads=threads)
    order = np.lexsort((-data.ts[b], data.user[b]))
    u, it, k = data.user[b][order], data.item[b][order], data.kind[b][order]
    starts = np.searchsorted(u, np.arange(data.n_users + 1))

    def rec(users, N):
        states = []
        for x in users.tolist():
            items, kinds = it[starts[x] : starts[x + 1]], k[starts[x] : starts[x + 1]]
            states.append(UserState(cart=items[kinds == 1], purchased=items[kinds == 2], viewed=items[kinds == 0]))
        ids = gen.candidates_batch(states, N + 50)[0]
        H = split.train[users]
        seen = np.zeros(ids.shape, dtype=bool)
        ok = ids >= 0
        rows = np.broadcast_to(np.arange(len(users))[:, None], ids.shape)
        if ok.any():
            seen[ok] = np.asarray(H[rows[ok], ids[ok]]).ravel() > 0
        keep = ok & ~seen
        out = np.full((len(users), N), -1, dtype=np.int64)
        place = np.cumsum(keep, axis=1) - 1
        sel = keep & (place < N)
        out[rows[sel], place[sel]] = ids[sel]
        return out

    return rec


@dataclass(frozen=True)
class Brain:
    name: str
    fit: Fit
    grid: tuple[dict, ...]  # candidate parameters; the first is the default


def _grid(**axes) -> tuple[dict, ...]:
    keys = list(axes)
    combos = np.array(np.meshgrid(*[np.arange(len(axes[k])) for k in keys], indexing="ij")).reshape(len(keys), -1).T
    return tuple({k: axes[k][i] for k, i in zip(keys, row.tolist())} for row in combos)


BRAINS = (
    Brain("popularity", popularity, ({},)),
    Brain("CandidateGenerator (defaults)", generator, ({},)),
    Brain("item-item CF (ItemItemCF)", item_cf, _grid(n_neighbors=[50, 20, 200], weighting=["cosine", "bm25"])),
    Brain("ALS (implicit)", factors("als"), _grid(factors=[32, 64], regularization=[1.0, 0.1], alpha=[10.0, 2.0])),
    Brain(
        "BPR (implicit)",
        factors("bpr"),
        _grid(factors=[32, 64], learning_rate=[0.05, 0.1], regularization=[0.01, 0.001]),
    ),
)


def evaluate(rec: Recommender, split: Split, n_items: int) -> dict:
    return metrics(rec(split.users, max(KS)), split.targets[split.users], n_items)


@dataclass
class BrainsResult:
    source: str
    cut_day: float
    users: int
    targets: int
    validation_users: int
    rows: dict = field(default_factory=dict)  # name -> metrics
    chosen: dict = field(default_factory=dict)  # name -> params
    seconds: dict = field(default_factory=dict)  # name -> fit + recommend on the test split

    def table(self) -> str:
        cols = [f"{m}@{k}" for k in KS for m in ("hit", "ndcg")] + [f"coverage@{k}" for k in KS]
        lines = [
            "| method | " + " | ".join(cols) + " | seconds | parameters (chosen on validation) |",
            "|---|" + "---:|" * (len(cols) + 1) + "---|",
        ]
        for name, r in self.rows.items():
            params = ", ".join(f"{k}={v}" for k, v in self.chosen[name].items()) or "-"
            lines.append(
                f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + f" | {self.seconds[name]:.1f} | {params} |"
            )
        return "\n".join(lines)


def compare(
    data: ShopData, *, test_days: float = 30.0, val_days: float | None = None, tune: bool = True, threads: int = 2
) -> BrainsResult:
    """Each brain on the last ``test_days`` of ``data`` after training on everything before.
    Parameters are chosen by NDCG@10 on a validation split that ends at the test cut (train
    before ``cut - val_days``, targets in the ``val_days`` before the cut), then the chosen
    ones are refitted on all events before the cut."""
    end = float(data.ts.max())
    cut = end - test_days * DAY_S
    val_cut = cut - (test_days if val_days is None else val_days) * DAY_S
    test = temporal_split(data, cut)
    val = temporal_split(data, val_cut, end=cut)
    if len(test.users) == 0:
        raise ValidationError(f"no user bought a new item in the last {test_days} days", "test_days")
    res = BrainsResult(
        data.source, (cut - float(data.ts.min())) / DAY_S, len(test.users), test.targets.nnz, len(val.users)
    )
    for brain in BRAINS:
        params = brain.grid[0]
        if tune and len(brain.grid) > 1 and len(val.users):
            scores = [evaluate(brain.fit(data, val, p, threads), val, data.n_items)["ndcg@10"] for p in brain.grid]
            params = brain.grid[int(np.argmax(scores))]
        t0 = time.perf_counter()
        res.rows[brain.name] = evaluate(brain.fit(data, test, params, threads), test, data.n_items)
        res.seconds[brain.name] = time.perf_counter() - t0
        res.chosen[brain.name] = params
    return res
