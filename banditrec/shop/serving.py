"""A published shop build, loaded for serving, learning and evaluation.

:class:`Shop` reads the current build of a shop directory (every file checksummed) and gives
what the other parts need: the :class:`~banditrec.engine.ItemTable`, the candidate generator
with its business rules, the users' histories and segments, the context featurizer, and the
environment a policy is built with (:meth:`Shop.policy_env`). :func:`engine_for_shop` wires
them into an :class:`~banditrec.engine.Engine`; :meth:`Engine.install_shop` swaps a rebuilt
shop in while serving.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..candidates import AlreadyBought, CandidateGenerator, Filters, OutOfStock
from ..engine import Engine, ItemTable, ShopParts
from ..errors import ValidationError
from ..learner import Refresh
from ..policies import Policy, make
from ..policies.terms import FeatureNames
from ..store import DecisionLog
from .build import catalog_from_table
from .directory import BuildFiles, Pointer, list_builds, pointer_signature, read_pointer
from .features import ContextFeaturizer


@dataclass(frozen=True)
class ItemInfo:
    """What a person reading a carousel wants to know about an item."""

    item_id: str
    title: str
    type: str


class Shop:
    """The current build of the shop directory ``directory`` (see the module docstring)."""

    def __init__(self, directory, pointer: Pointer | None = None, *, build: str | None = None):
        self.directory = Path(directory)
        files = BuildFiles.open(directory, pointer, build=build)
        self.files = files
        self.manifest = files.manifest
        self.build = files.build
        items = files.table("items.parquet")
        self.catalog = catalog_from_table(items)
        a = files.arrays("items")
        self.active = np.asarray(a["active"], dtype=bool)
        self.cold = np.asarray(a["cold"], dtype=bool)
        self.new = np.asarray(a["new"], dtype=bool)
        self.types = np.asarray(a["type"], dtype=np.int64)
        self.popularity = np.asarray(a["popularity"], dtype=float)
        self.consumable = np.asarray(a["consumable"], dtype=bool)
        self.items = ItemTable(
            ids=tuple(self.catalog.ids.tolist()),
            features=np.asarray(a["features"], dtype=float),
            cold=self.cold,
            types=self.types,
        )
        users = files.table("users.parquet")
        self.user_ids = users.column("user_id").to_pylist()
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.user_segment = users.column("segment").to_numpy().astype(np.int64)
        h = files.arrays("history")
        n_users, n_items = len(self.user_ids), self.items.n_items
        self.history = sp.csr_matrix(
            (np.asarray(h["data"]), np.asarray(h["indices"]), np.asarray(h["indptr"])), shape=(n_users, n_items)
        )
        self.context = ContextFeaturizer(
            self.manifest["context"], {k: np.asarray(v) for k, v in files.arrays("context").items()}
        )
        self.stock = OutOfStock(self.active & self.catalog.in_stock)
        self.generator = CandidateGenerator.from_arrays(
            files.arrays("candidates"),
            self.manifest["candidates"],
            filters=Filters([self.stock, AlreadyBought(self.types, self.consumable)]),
        )
        self.context.reorder = self.generator.reorder

    @property
    def n_items(self) -> int:
        return self.items.n_items

    @property
    def item_dim(self) -> int:
        return int(self.items.features.shape[1])

    @property
    def context_dim(self) -> int:
        return self.context.dim

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """Numeric item columns a policy may blend in or weigh by (``objective=``, ``value=``)."""
        return {k: self.catalog.numeric[k] for k in self.manifest["columns"]}

    def policy_env(self) -> dict:
        """What :func:`banditrec.policies.make` is told about this shop."""
        return {
            "context_dim": self.context_dim,
            "item_dim": self.item_dim,
            "popularity": self.popularity,
            "n_items": self.n_items,
            "item_types": self.types,
            "item_columns": self.columns,
        }

    def policy(self, spec: str) -> Policy:
        return make(spec, **self.policy_env())

    def parts(self) -> ShopParts:
        """What an :class:`Engine` serves this build with."""
        return ShopParts(
            items=self.items,
            candidate_generator=self.generator,
            user_items=self.history,
            user_index=self.user_index,
            user_segment=self.user_segment,
            context=self.context,
            build=self.build,
            backfill=self.best_sellers,
            feature_names=self.feature_names,
        )

    @property
    def feature_names(self) -> FeatureNames:
        """The context's and the items' column names; item columns past the featurizer's are
        the factor embedding's (``embedding0``, ...), which the build appends (the names
        ``banditrec monitor`` reports drift under)."""
        item = list(self.manifest["item_features"].get("names", ()))
        item += [f"embedding{j}" for j in range(self.item_dim - len(item))]
        return FeatureNames(context=tuple(self.context.names), item=tuple(item))

    @property
    def best_sellers(self) -> np.ndarray:
        """Servable items (active and in stock), most bought first, ties by index."""
        servable = np.flatnonzero(self.stock.available)
        return servable[np.argsort(-self.popularity[servable], kind="stable")]

    def item_id(self, item: str) -> int:
        """The index of item id ``item``; an unknown id is an error that names it."""
        j = self.items.lookup([item])[0]
        if j < 0:
            example = self.items.ids[0] if self.items.ids else "?"
            raise ValidationError(
                f"item {item!r} is not in the shop's catalog ({self.n_items:,} items, e.g. {example!r})", "item"
            )
        return int(j)

    def info(self, j: int) -> ItemInfo:
        text = " ".join(v[j] for v in self.catalog.text.values() if v[j]) if self.catalog.text else ""
        kind = self.catalog.type[j] if self.catalog.type is not None else ""
        return ItemInfo(self.items.ids[j], text, kind)


def open_newest_valid(directory) -> tuple[Shop, str | None]:
    """The pointer's build, or, when the pointer or its build is unusable, the newest build in
    the directory that loads and verifies: ``(shop, why the pointer's was refused or None)``.
    A serving process (re)started meanwhile serves what the running ones serve."""
    try:
        return Shop(directory), None
    except ValidationError as exc:
        error = str(exc)
    for build in reversed(list_builds(directory)):
        try:
            return Shop(directory, build=build), error
        except ValidationError:
            continue
    raise ValidationError(f"{error}; and no build in {directory} verifies", "shop")


def engine_for_shop(
    shop: Shop,
    policy: Policy | str,
    log: DecisionLog,
    *,
    n_candidates: int = 30,
    min_epsilon: float = 0.01,
    seed=None,
    clock=time.time,
    **kw,
) -> Engine:
    """An :class:`Engine` serving ``shop`` (the full candidate generator, the shop's context
    features, each decision logged with the build's id)."""
    if isinstance(policy, str):
        policy = shop.policy(policy)
    return Engine.for_shop(
        shop.parts(),
        policy=policy,
        log=log,
        n_candidates=n_candidates,
        min_epsilon=min_epsilon,
        seed=seed,
        clock=clock,
        **kw,
    )


def rebuild_policy(policy: Policy, shop: Shop) -> Policy:
    """``policy`` for a rebuilt shop: made anew with the shop's environment, its learned state
    restored (items new to the index start cold)."""
    fresh = make(policy.spec, **shop.policy_env())
    arrays, meta = policy.state()
    fresh.set_state(arrays, meta)
    fresh.n_updates = policy.n_updates
    return fresh


class ShopWatcher:
    """Installs a newly published build of ``directory`` into ``engine``: :meth:`check` stats the
    pointer and, when it changed, loads and verifies the build, then swaps it in atomically
    (the policy rebuilt for the new catalog, its state kept). A damaged build is refused and
    the running one kept; ``last_error`` says why."""

    def __init__(self, directory, engine: Engine, shop: Shop, *, on_result=None):
        self.directory = Path(directory)
        self.engine = engine
        self.shop = shop
        self.on_result = on_result or (lambda result: None)
        self.last_error: str | None = None
        self._signature = pointer_signature(directory)
        self._lock = threading.Lock()

    def check(self) -> str:
        """``"unchanged"``, ``"loaded"`` or ``"refused"``."""
        with self._lock:
            sig = pointer_signature(self.directory)
            if sig == self._signature:
                return "unchanged"
            self._signature = sig
            try:
                pointer = read_pointer(self.directory)
                if pointer.build == self.shop.build:
                    return "unchanged"
                shop = Shop(self.directory, pointer)
                if shop.item_dim != self.shop.item_dim or shop.context_dim != self.shop.context_dim:
                    raise ValidationError(
                        f"build {shop.build} has {shop.item_dim} item and {shop.context_dim} context features, the "
                        f"served build {self.shop.item_dim} and {self.shop.context_dim}: the learned policy cannot "
                        "carry over (restart the service to serve it with a fresh policy)",
                        "shop",
                    )
                self.engine.install_shop(shop.parts(), rebuild=lambda policy: rebuild_policy(policy, shop))
            except ValidationError as exc:
                self.last_error = str(exc)
                self.on_result("refused")
                return "refused"
            self.shop = shop
            self.last_error = None
            self.on_result("loaded")
            return "loaded"


class ShopFollower:
    """For the learner (``Learner.refresh``): when the shop directory publishes a new build,
    the policy rebuilt for it (state kept), the build's item features and its items' cold flags."""

    def __init__(self, shop: Shop, *, echo=None):
        self.shop = shop
        self.echo = echo
        self._signature = pointer_signature(shop.directory)

    def __call__(self, policy: Policy):
        sig = pointer_signature(self.shop.directory)
        if sig == self._signature:
            return None
        self._signature = sig
        try:
            shop = Shop(self.shop.directory)
        except ValidationError as exc:
            if self.echo:
                self.echo(f"shop build refused, learning on {self.shop.build}: {exc}")
            return None
        if shop.build == self.shop.build:
            return None
        self.shop = shop
        if self.echo:
            self.echo(f"learning on shop build {shop.build}")
        return Refresh(
            policy=rebuild_policy(policy, shop), item_features=shop.items.features, item_cold=shop.items.cold
        )
