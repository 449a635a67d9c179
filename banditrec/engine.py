"""The decision path: candidates -> policy -> sampled slate with propensities -> decision log.

The engine holds no HTTP and no estimator code. A service wraps :meth:`Engine.decide` and
:meth:`Engine.reward`; a learner calls :meth:`Engine.learn` on joined log rows.
"""

from __future__ import annotations

import operator
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

import numpy as np
import scipy.sparse as sp

from .apprentice import Arms, ServingMode, baseline_slate, greedy_flags
from .candidates import CandidateSource
from .errors import ValidationError
from .explain import explain_slate
from .offline import learn_from_log
from .policies import Policy, Request
from .policies.base import DEFAULT_FLOOR
from .policies.sampling import SequentialSlate
from .policies.slate import SlateDistribution, SlateSample, sample_slates
from .policies.terms import FeatureNames
from .store import DecisionLog, DecisionRecord
from .store.codecs import LoggedParams
from .store.shards import with_shard
from .store.writer import Completion
from .suppression import Suppressor, drop_pinned
from .types import Decision, Explanation, Reward, Slot
from .validation import as_seed_sequence, check_positive_int

SOURCE_REQUEST = "request"
SOURCE_BASELINE = "baseline"  # a baseline item the candidates did not hold
SOURCE_PROMOTED = "promoted"  # an item the request promoted into the candidates
SESSION_WEIGHTS = {"cart": 3, "purchase": 2, "view": 1}  # how many times a session item counts as a seed


@dataclass(frozen=True)
class Session:
    """What a user did recently (the log's ``events`` table, shared by every serving process):
    catalog indices of the items carted, bought and viewed within the session window, newest
    first. Candidate generation sees it, so a cart add changes the very next decision."""

    cart: np.ndarray
    purchased: np.ndarray
    viewed: np.ndarray
    newest_ts: float | None = None  # when the newest event happened

    @property
    def items(self) -> np.ndarray:
        return np.concatenate([self.cart, self.purchased, self.viewed])

    def seeds(self, weights: dict[str, int] = SESSION_WEIGHTS) -> np.ndarray:
        """Seed items for item-to-item CF, each repeated by its kind's weight (so that the
        neighbours of the cart -- its complements -- rank first)."""
        return np.concatenate(
            [
                np.repeat(self.cart, weights["cart"]),
                np.repeat(self.purchased, weights["purchase"]),
                np.repeat(self.viewed, weights["view"]),
            ]
        )


EMPTY_SESSION = Session(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
_NO_ITEMS = np.empty(0, dtype=np.int64)
_NO_ITEMS.setflags(write=False)


class _Inputs(NamedTuple):
    """One request, checked, with its candidates (what :meth:`Engine._inputs` returns)."""

    parts: ShopParts  # what served it (one build, even if another is installed meanwhile)
    user_id: str
    n_policy: int  # slots the policy fills (after the pinned ones)
    context: np.ndarray
    pin_idx: np.ndarray
    pin_ids: list
    cand_idx: np.ndarray
    cand_ids: tuple
    source: np.ndarray | str  # each candidate's source, or one source for all (request candidates)
    surface: str
    arm: str = "main"  # the user's analysis group (apprentice.Arms)
    baseline: np.ndarray | None = None  # catalog indices of the baseline slate served instead


class _Draw(NamedTuple):
    """A sampled slate stamped for logging (what :meth:`Engine._stamp` returns, under the lock)."""

    sample: SlateSample | None  # None: every slot pinned, the policy picked nothing
    model_version: str
    policy_name: str
    params: LoggedParams  # the policy's params and the serving floor, serialised once per config
    event_id: str
    dist: SlateDistribution | None = None  # what completes a pending sample


class _Pending(NamedTuple):
    """A logged decision whose Monte-Carlo propensities are still to compute."""

    event_id: str
    first: int  # position of its first policy slot (after the pinned ones)
    dist: SlateDistribution
    sample: SlateSample


class _LoggedParamsOf(NamedTuple):
    """The params logged with a policy's decisions, for that policy object and config."""

    policy: Policy
    config: object
    logged: LoggedParams


def _backfill(idx: np.ndarray, source: np.ndarray, backfill: np.ndarray, excluded: np.ndarray, n: int):
    """``idx`` completed to ``n`` items from ``backfill`` (in its order), leaving out ``excluded``
    and what ``idx`` holds; the added items' source is ``"popular"``."""
    need = n - len(idx)
    pool = backfill[: len(idx) + len(excluded) + need]
    extra = pool[~np.isin(pool, idx) & ~np.isin(pool, excluded)][:need]
    if len(extra) < need:  # a short prefix was not enough: look through all of it
        extra = backfill[~np.isin(backfill, idx) & ~np.isin(backfill, excluded)][:need]
    return np.r_[idx, extra].astype(np.int64), np.r_[
        np.asarray(source, dtype=object), np.full(len(extra), "popular", dtype=object)
    ]


def _extend(idx: np.ndarray, source, extra: np.ndarray, name: str):
    """``idx`` with the items of ``extra`` it lacks appended, their source ``name``."""
    extra = extra[~np.isin(extra, idx)]
    if not len(extra):
        return idx, source
    if isinstance(source, str):
        source = np.full(len(idx), source, dtype=object)
    return np.r_[idx, extra].astype(np.int64), np.r_[source, np.full(len(extra), name, dtype=object)]


def _flags(flags: np.ndarray | None) -> tuple[bool, ...] | None:
    return None if flags is None else tuple(flags.tolist())


def _checked_sources(sources, n: int) -> np.ndarray:
    """The request's candidate sources as an object array, one non-empty string per candidate."""
    if isinstance(sources, str) or not isinstance(sources, (list, tuple)) or len(sources) != n:
        raise ValidationError(
            f"candidate_sources must be a list of {n} source names, one per candidate", "candidate_sources"
        )
    if not all(isinstance(x, str) and x and x != "pinned" for x in sources):
        raise ValidationError('candidate_sources must hold non-empty strings other than "pinned"', "candidate_sources")
    return np.asarray(sources, dtype=object)


def time_ordered_id() -> str:
    """A 32-hex-digit event id: the wall clock in milliseconds (12 digits), then 80 random bits
    from the OS (as UUIDv7 lays them out, without the version bits).

    Why time-ordered: the log's unique index on ``event_id`` (and the slots' primary key that
    starts with it) then grows at its right edge, like ``seq`` does; random ids land on a random
    index page per decision, which is one more page read and written per commit once the index
    outgrows SQLite's page cache. Unseeded engines only: a seeded engine draws its ids from its stream,
    so that a seeded run repeats them.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def _policy_error(exc: ValidationError) -> ValidationError:
    if exc.field != "scores":
        return exc
    return ValidationError(
        "the policy's scores are not finite for this context; are its values in a sensible range?", "context"
    )


@dataclass(frozen=True)
class ItemTable:
    """Catalog item ids, their index, the attribute vectors policies see, which items are
    cold (no interaction history yet; ``None``: none is), and each item's product type (``None``:
    not known; a hide of scope ``type`` needs it)."""

    ids: tuple[str, ...]
    features: np.ndarray  # (n_items, d_i)
    cold: np.ndarray | None = None  # (n_items,) bool: no interactions yet (None: none known to be)
    types: np.ndarray | None = None  # (n_items,) int: product type codes (None: not known)
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)  # id -> index

    def __post_init__(self):
        feats = np.asarray(self.features, dtype=float)
        if feats.ndim != 2 or len(feats) != len(self.ids):
            raise ValidationError(
                f"item features must have shape ({len(self.ids)}, d), got {feats.shape}", "item_features"
            )
        if self.cold is not None:
            cold = np.asarray(self.cold, dtype=bool)
            if cold.shape != (len(self.ids),):
                raise ValidationError(f"cold must have shape ({len(self.ids)},), got {cold.shape}", "cold")
            object.__setattr__(self, "cold", cold)
        if self.types is not None:
            types = np.asarray(self.types)
            if types.shape != (len(self.ids),) or types.dtype.kind not in "iu":
                raise ValidationError(
                    f"types must be {len(self.ids)} integer type codes, got {types.dtype} of shape {types.shape}",
                    "types",
                )
            object.__setattr__(self, "types", types.astype(np.int64))
        if len(set(self.ids)) != len(self.ids):
            raise ValidationError("item ids must be unique", "item_ids")
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "_index", {item: i for i, item in enumerate(self.ids)})

    @property
    def n_items(self) -> int:
        return len(self.ids)

    def lookup(self, item_ids) -> np.ndarray:
        """Catalog indices of ``item_ids``, -1 where unknown."""
        get = self._index.get
        return np.fromiter((get(item, -1) for item in item_ids), dtype=np.int64, count=len(item_ids))

    def index_of(self, item_ids, field: str, *, skip_unknown: bool = False) -> np.ndarray:
        """Catalog indices of ``item_ids``; an unknown id is an error naming its position
        (or, with ``skip_unknown``, left out)."""
        try:  # the served case, every id known: the dict lookups in one C call (itemgetter)
            if len(item_ids) > 1:
                return np.array(operator.itemgetter(*item_ids)(self._index), dtype=np.int64)
        except (KeyError, TypeError):
            pass
        get = self._index.get
        out = np.fromiter((get(item, -1) for item in item_ids), dtype=np.int64, count=len(item_ids))
        if skip_unknown:
            return out[out >= 0]
        if len(out) and out.min() < 0:
            j = int(np.argmin(out))
            raise ValidationError(f"{field}[{j}]: unknown item id {item_ids[j]!r}", field)
        return out


class ContextSource(Protocol):
    """What :attr:`ShopParts.context` computes the context vector with (e.g.
    :class:`banditrec.shop.features.ContextFeaturizer`)."""

    @property
    def dim(self) -> int: ...

    def field_names(self) -> list[str]: ...

    def vector(
        self,
        user: int,
        session_items: np.ndarray,
        session_age_s: float | None,
        now: float,
        fields: dict | None,
        item_features: np.ndarray,
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class ShopParts:
    """Everything a decision reads about the shop, swapped as one (:meth:`Engine.install_shop`).

    ``context``: when given, an object computing the context vector from what the shop knows
    (``dim``, ``vector(user_row, session_items, session_age_s, now, fields, item_features)``,
    e.g. :class:`banditrec.shop.features.ContextFeaturizer`); requests then send named fields.
    ``user_segment (n_users,)``: each known user's segment for the candidate generator.
    ``build``: logged with every decision. ``backfill``: servable items, best first (e.g. best
    sellers in stock), that fill a request's candidates up to ``n_candidates`` when the generator
    finds fewer (a user whose history its rules exclude everything for still gets a carousel).
    """

    items: ItemTable
    candidate_generator: CandidateSource
    user_items: sp.csr_matrix
    user_index: dict
    context_dim: int = 0
    user_segment: np.ndarray | None = None
    context: ContextSource | None = None
    build: str | None = None
    backfill: np.ndarray | None = None
    feature_names: FeatureNames | None = None  # what explanations call the features (None: ctx[k], item[j])

    def __post_init__(self):
        if not isinstance(self.candidate_generator, CandidateSource):
            raise ValidationError(
                f"the candidate generator ({type(self.candidate_generator).__name__}) is not a "
                "CandidateSource: it has no candidates_for_session(history, session, N, "
                "exclude=None, segment=None)",
                "candidate_generator",
            )
        if self.context is not None:
            object.__setattr__(self, "context_dim", int(self.context.dim))
        object.__setattr__(self, "context_dim", check_positive_int(self.context_dim, "context_dim"))
        object.__setattr__(self, "user_items", sp.csr_matrix(self.user_items))

    def history(self, user_id: str) -> np.ndarray:
        """Catalog indices of ``user_id``'s known purchases (empty for an unknown user)."""
        row = self.user_index.get(user_id)
        if row is None:
            return _NO_ITEMS
        return self.user_items.indices[self.user_items.indptr[row] : self.user_items.indptr[row + 1]]


class Engine:
    """Serves decisions for one surface of a shop.

    Parameters
    ----------
    items : ItemTable
    policy : Policy
    log : DecisionLog; when it holds no items yet, the engine writes ``items`` to it before
        its first decision (:meth:`log_items`; building the engine writes nothing), so that
        the log alone says what the logged item indices were (and their features).
        ``None``: an in-memory log of this process (``DecisionLog(":memory:")``), for in-process
        runs that keep nothing
    candidate_generator : CandidateSource, e.g. an ItemItemCF fitted on ``user_items``
    user_items : csr_matrix (n_users, n_items) of each known user's history
    user_index : dict mapping user id -> row of ``user_items``
    context_dim : length of the context vector requests send (zeros when absent)
    n_candidates : candidates generated per request when the request brings none
    min_epsilon : the exploration floor mixed into every served slot, separate from the
        policy's own exploration; > 0 so that the log can evaluate other policies (default
        ``DEFAULT_FLOOR``), or 0 with ``floor_off=True``
    floor_off : switch the floor off on purpose (``min_epsilon=0``): the policy's own
        exploration only, and a log that cannot evaluate policies that show what it never does
    seed : seeds the sampler and the event-id streams (a seeded run is reproducible);
        ``None`` samples from fresh entropy and takes time-ordered event ids with 80 random
        bits from the OS (:func:`time_ordered_id`), so that forked serving processes never
        share a stream
    clock : callable returning the current time in seconds (injectable for simulations)
    session_window_s : interaction events (``log.write_event``) younger than this shape the
        candidates of a user's decisions (``None``: events are ignored)
    session_limit : at most this many recent events are read per decision

    Candidate seam: when the request brings no candidates, the generator -- a
    :class:`~banditrec.candidates.CandidateSource` -- is asked for
    ``candidates_for_session(history, session, N, exclude=..., segment=...)`` (``segment``:
    the user's segment when the shop has segments, else ``None``).
    """

    _unlogged_items: ItemTable | None  # the catalog log_items() still has to write

    def __init__(
        self,
        *,
        items: ItemTable,
        policy: Policy,
        log: DecisionLog | None,
        candidate_generator: CandidateSource,
        user_items: sp.csr_matrix,
        user_index: dict[str, int],
        context_dim: int,
        n_candidates: int = 30,
        min_epsilon: float = DEFAULT_FLOOR,
        seed=None,
        clock=time.time,
        session_window_s: float | None = 1800.0,
        session_limit: int = 50,
        floor_off: bool = False,
        arms: Arms | None = None,
        mode: str = "live",
    ):
        parts = ShopParts(
            items=items,
            candidate_generator=candidate_generator,
            user_items=user_items,
            user_index=dict(user_index),
            context_dim=context_dim,
        )
        self._setup(
            parts,
            policy,
            log,
            n_candidates=n_candidates,
            min_epsilon=min_epsilon,
            seed=seed,
            clock=clock,
            session_window_s=session_window_s,
            session_limit=session_limit,
            floor_off=floor_off,
            arms=arms,
            mode=mode,
        )
        self._unlogged_items = items  # written by log_items(), at the latest with the first decision

    @classmethod
    def for_shop(
        cls,
        parts: ShopParts,
        *,
        policy: Policy,
        log: DecisionLog | None,
        n_candidates: int = 30,
        min_epsilon: float = DEFAULT_FLOOR,
        seed=None,
        clock=time.time,
        session_window_s: float | None = 1800.0,
        session_limit: int = 50,
        floor_off: bool = False,
        arms: Arms | None = None,
        mode: str = "live",
    ) -> Engine:
        """An engine serving a shop directory's build (:mod:`banditrec.shop`): the catalog is the
        build's, so nothing is written to the log's items table; decisions log the build's id.
        ``log``, ``min_epsilon`` and ``floor_off`` as for the constructor."""
        engine = cls.__new__(cls)
        engine._setup(
            parts,
            policy,
            log,
            n_candidates=n_candidates,
            min_epsilon=min_epsilon,
            seed=seed,
            clock=clock,
            session_window_s=session_window_s,
            session_limit=session_limit,
            floor_off=floor_off,
            arms=arms,
            mode=mode,
        )
        return engine

    def _setup(
        self,
        parts: ShopParts,
        policy: Policy,
        log: DecisionLog | None,
        *,
        n_candidates,
        min_epsilon,
        seed,
        clock,
        session_window_s,
        session_limit,
        floor_off: bool = False,
        arms: Arms | None = None,
        mode: str = "live",
    ) -> None:
        if floor_off:
            if min_epsilon != 0:
                raise ValidationError(
                    f"floor_off=True serves without a floor: min_epsilon must be 0, got {min_epsilon!r}", "min_epsilon"
                )
        elif not 0.0 < min_epsilon <= 1.0:
            raise ValidationError(
                f"min_epsilon must be in (0, 1] so that the log can evaluate other policies, got {min_epsilon!r} "
                "(to serve without a floor on purpose: min_epsilon=0, floor_off=True)",
                "min_epsilon",
            )
        self._parts = parts
        self.policy = policy
        if log is None:
            log = DecisionLog(":memory:")
        self.log = log
        self._suppress = Suppressor()  # the block list and users' hides (docs/feedback.md)
        self.n_candidates = check_positive_int(n_candidates, "n_candidates")
        self.min_epsilon = float(min_epsilon)
        sampler_seq, id_seq = as_seed_sequence(seed).spawn(2)
        self._sampler = np.random.default_rng(sampler_seq)
        self._ids = np.random.default_rng(id_seq) if seed is not None else None
        self.clock = clock
        self._learned_seq = 0
        self.session_window_s = session_window_s
        self.session_limit = check_positive_int(session_limit, "session_limit")
        self._model_version: str | None = None  # set by install(); else the policy's own
        self._params: _LoggedParamsOf | None = None  # the params logged with the policy's decisions
        # scoring, sampling and learning share the policy state and the Generators; a threaded
        # server (or a learner thread) must not interleave them
        self._lock = threading.Lock()
        self._unlogged_items = None
        self._defer = False
        self._pending: list[_Pending] = []
        self._pending_lock = threading.Lock()  # the queue; completion itself runs outside it
        self._arms = Arms() if arms is None else arms
        self.modes = ServingMode(lambda: self.log.serving_mode(), default=mode)

    def log_items(self) -> int:
        """Write the catalog the engine was built with to the log's items table when the table
        is empty, so that the log alone says what the logged item indices were (and their
        features); returns the rows written. Building an engine writes nothing: the engine
        calls this before it logs its first decision, and a caller may call it earlier. Once
        done (or for an engine serving a shop build, whose catalog is the build's), it is a
        no-op."""
        items = self._unlogged_items
        if items is None:
            return 0
        written = self.log.write_items(items.ids, items.features) if self.log.count("items") == 0 else 0
        self._unlogged_items = None
        return written

    # ---- deferred Monte-Carlo propensities --------------------------------------------------
    @property
    def defer_marginals(self) -> bool:
        """Whether decisions log Monte-Carlo propensities later (default ``False``).

        On, a decision samples its slate and logs what is exact and cheap (the epsilon-greedy
        family's marginals, sequential filling's conditionals); Monte-Carlo marginals (softmax,
        vw-cb, vw-ccb) and Thompson sampling's propensities are logged as pending and computed
        by :meth:`complete_pending` -- the service's background thread, or any read of the log
        (:meth:`DecisionLog.settle_pending`) -- with the same values a decision-time computation
        gives. Complete them before changing the policy's model outside :meth:`learn`.
        """
        return self._defer

    @defer_marginals.setter
    def defer_marginals(self, on: bool) -> None:
        self._defer = bool(on)
        if self._defer:
            self.log.on_settle(self.complete_pending)

    def complete_pending(self) -> int:
        """Compute and log the Monte-Carlo propensities of this engine's pending decisions, in
        one transaction; returns how many. Safe from any thread."""
        with self._pending_lock:
            todo, self._pending = self._pending, []
        if not todo:
            return 0
        done = [Completion.of(p.event_id, p.first, p.dist.complete(p.sample)) for p in todo]
        try:
            return self.log.complete_pending(done)
        except BaseException:  # e.g. the log stayed locked: keep them for the next try
            with self._pending_lock:
                self._pending[:0] = todo
            raise

    def _queue(self, records: list[DecisionRecord], draws: list[_Draw]) -> None:
        """Queue the logged decisions that left propensities for later."""
        pending = [
            _Pending(r.decision.event_id, len(r.decision.slots) - d.sample.index.size, d.dist, d.sample)
            for r, d in zip(records, draws)
            if r.pending and d.sample is not None and d.dist is not None  # _mark_pending set it
        ]
        if pending:
            with self._pending_lock:
                self._pending.extend(pending)

    @staticmethod
    def _mark_pending(record: DecisionRecord, draw: _Draw) -> DecisionRecord:
        if draw.sample is None or draw.dist is None or not draw.sample.pending or record.decision.served != "policy":
            return record
        recipe = draw.dist.recipe() if isinstance(draw.dist, SequentialSlate) else True
        return record._replace(pending=recipe)

    # ---- what is served -------------------------------------------------------------------
    @property
    def parts(self) -> ShopParts:
        return self._parts

    @property
    def items(self) -> ItemTable:
        return self._parts.items

    @property
    def cf(self):
        return self._parts.candidate_generator

    @property
    def user_items(self) -> sp.csr_matrix:
        return self._parts.user_items

    @property
    def user_index(self) -> dict:
        return self._parts.user_index

    @property
    def context_dim(self) -> int:
        return self._parts.context_dim

    @property
    def build(self) -> str | None:
        return self._parts.build

    def install_shop(self, parts: ShopParts, rebuild) -> None:
        """Serve a rebuilt shop from the next decision on: ``parts``, and the policy
        ``rebuild(policy)`` returns (the same model for the new catalog). Atomic with respect
        to decisions in flight; a decision already past its candidates finishes on the build
        it started with (item indices are stable across builds)."""
        self.complete_pending()  # on the model that sampled them, before a rebuild touches it
        with self._lock:
            policy = rebuild(self.policy)
            self._parts = parts
            self.policy = policy
            self._params = None

    # ---- serving ------------------------------------------------------------------------
    def history(self, user_id: str) -> np.ndarray:
        return self._parts.history(user_id)

    def session(self, user_id: str, items: ItemTable | None = None) -> Session:
        """The user's recent interaction events, from the log (see :class:`Session`)."""
        if self.session_window_s is None:
            return EMPTY_SESSION
        ids, kinds, ts = self.log.recent_events(
            user_id, since_ts=float(self.clock()) - self.session_window_s, limit=self.session_limit
        )
        if not ids:
            return EMPTY_SESSION
        idx = (items or self.items).lookup(ids)
        kind_of = np.asarray(kinds, dtype=object)
        known = idx >= 0  # an item dropped from the catalog since: nothing to seed from

        def pick(kind):
            out = idx[known & (kind_of == kind)]
            _, first = np.unique(out, return_index=True)
            return out[np.sort(first)]  # newest first, each item once

        return Session(cart=pick("cart"), purchased=pick("purchase"), viewed=pick("view"), newest_ts=float(ts[0]))

    def _context(self, parts: ShopParts, context, user_id: str, session: Session | None) -> np.ndarray:
        """The context vector: computed by the shop's featurizer from what it knows and the
        request's named fields, or (no featurizer) the request's own vector."""
        if parts.context is not None:
            if context is not None and not isinstance(context, dict):
                raise ValidationError(
                    "this shop computes the context itself: send an object of named fields "
                    f"({', '.join(parts.context.field_names()) or 'none'}), not a list",
                    "context",
                )
            now = float(self.clock())
            age = None if session is None or session.newest_ts is None else max(now - session.newest_ts, 0.0)
            items = _NO_ITEMS if session is None else np.concatenate([session.cart, session.purchased])
            return parts.context.vector(
                parts.user_index.get(user_id, -1), items, age, now, context, parts.items.features
            )
        if context is None:
            return np.zeros(parts.context_dim)
        if isinstance(context, dict):
            raise ValidationError(f"context must be a list of {parts.context_dim} numbers, got an object", "context")
        ctx = np.asarray(context, dtype=float)
        if ctx.shape != (parts.context_dim,):
            raise ValidationError(
                f"context must be a list of {parts.context_dim} numbers, got shape {ctx.shape}", "context"
            )
        if not np.isfinite(ctx).all():
            raise ValidationError("context must hold finite numbers", "context")
        return ctx

    def _candidates(
        self, parts: ShopParts, user_id, n_slots, candidates, exclude, session, candidate_sources=None, suppressed=None
    ):
        items = parts.items
        excluded = np.empty(0, dtype=np.int64)
        if exclude:  # ids the catalog no longer knows cannot be served anyway: ignore them
            excluded = items.index_of(exclude, "exclude", skip_unknown=True)
        if suppressed is not None and len(suppressed):  # blocked or hidden (Suppressor)
            excluded = np.union1d(excluded, suppressed)
        if n_slots == 0 and candidates is None:  # every slot pinned: the policy picks nothing
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=object)
        if candidates is not None:
            idx = items.index_of(candidates, "candidates")
            if len(set(candidates)) != len(candidates):
                raise ValidationError("candidates must not repeat an item", "candidates")
            source: str | np.ndarray = SOURCE_REQUEST  # every candidate's
            if candidate_sources is not None:
                source = _checked_sources(candidate_sources, len(idx))
            if len(excluded):
                kept = ~np.isin(idx, excluded)
                idx = idx[kept]
                if not isinstance(source, str):
                    source = source[kept]
        else:
            history = parts.history(user_id)
            unavailable = np.union1d(np.union1d(excluded, history), session.items)
            eligible = items.n_items - len(unavailable)
            n = min(self.n_candidates, eligible)
            segment = None
            row = parts.user_index.get(user_id) if parts.user_index is not None else None
            if parts.user_segment is not None:  # a shop's users have segments
                segment = None if row is None else int(parts.user_segment[row])
            gen = parts.candidate_generator
            more = {"user": row, "now": float(self.clock())} if getattr(gen, "per_user", False) else {}
            idx, _, source = gen.candidates_for_session(history, session, n, exclude=excluded, segment=segment, **more)
            if len(idx) < n and parts.backfill is not None:
                # what the generator left out stays out: the history and session too, not only `exclude`
                idx, source = _backfill(idx, source, parts.backfill, unavailable, n)
        if n_slots > len(idx):
            left = " left after blocked and hidden items" if suppressed is not None and len(suppressed) else ""
            raise ValidationError(
                f"slots ({n_slots}) is more than the number of candidates{left} ({len(idx)})", "slots"
            )
        return idx, source

    def request(self, context, items, parts: ShopParts | None = None) -> Request:
        table = (parts or self._parts).items
        cold = table.cold
        return Request(
            context=context,
            items=items,
            item_features=table.features[items],
            cold=None if cold is None else cold[items],
        )

    @property
    def model_version(self) -> str:
        """The version decisions are logged with: the installed snapshot's, else the policy's."""
        return self._model_version or self.policy.model_version

    def install(self, policy: Policy, model_version: str | None = None) -> None:
        """Serve ``policy`` from the next decision on (a reloaded snapshot), atomically with
        respect to decisions in flight: a decision is scored, sampled and versioned by one
        policy. ``model_version`` (e.g. the registered snapshot version) overrides the policy's."""
        self.complete_pending()
        with self._lock:
            self.policy = policy
            self._model_version = model_version

    def decide(
        self,
        user_id: str,
        n_slots: int,
        *,
        context=None,
        candidates=None,
        exclude=None,
        surface: str = "home",
        pinned=None,
        candidate_sources=None,
        baseline=None,
        promoted=None,
        explain: bool = False,
    ) -> Decision:
        """Fill ``n_slots`` slots for ``user_id``, log the decision, and return it.

        Parameters
        ----------
        user_id : str
        n_slots : int
            Slots of the carousel (at most the number of candidates).
        context : array-like of float, optional
            The request's context vector (the engine's ``context_dim`` numbers).
        candidates : list of str, optional
            Item ids to choose from; by default the candidate generator's.
        exclude : list of str, optional
            Item ids never to show.
        surface : str
            Where the carousel is shown; logged with the decision.
        pinned : list of str, optional
            Promotions: they take the first slots in this order, with propensity 1 and source
            ``"pinned"``, and readers leave them out of learning and evaluation. A blocked item,
            or one the user hid, is dropped and its slot filled by the policy; blocked and hidden
            items leave the candidates too, before the policy scores (docs/feedback.md).
        candidate_sources : list of str, optional
            With ``candidates``: the source that proposed each (logged, for ``banditrec
            ablation``); by default every candidate's source is ``"request"``.
        baseline : list of str, optional
            The shop's own ranking, best first. In apprentice mode (:attr:`mode`) and for users
            of the control arm (:attr:`arms`) its first slots are served as they are (without
            a baseline: the candidates in their order) and the policy's draw is only logged;
            otherwise it is ignored.
        promoted : list of str, optional
            Items the policy must consider: added to the candidates (source ``"promoted"``)
            unless excluded or pinned; the policy decides whether and where they show.
        explain : bool
            Also return, per slot, why its item scored what it did (``Decision.explanations``;
            docs/explanations.md), from the policy state and request the slate was drawn from.
            The draw, the log and the random streams are the same either way.

        Returns
        -------
        Decision
            The slots with their conditional and marginal propensities, the joint propensity,
            the event id the rewards refer to; with ``explain``, the slots' explanations.

        Raises
        ------
        ValidationError
            An unknown item, too few candidates, or a malformed context.
        """
        if not isinstance(explain, bool):
            raise ValidationError(f"explain must be true or false, got {explain!r}", "explain")
        explained: list[Explanation] | None = [] if explain else None
        record, draw = self._prepare(
            user_id,
            n_slots,
            explained,
            context=context,
            candidates=candidates,
            exclude=exclude,
            surface=surface,
            pinned=pinned,
            candidate_sources=candidate_sources,
            baseline=baseline,
            promoted=promoted,
        )
        self.log_items()
        self.log.write_decision(
            record.decision,
            policy_params=record.policy_params,
            candidate_index=record.candidate_index,
            slot_index=record.slot_index,
            context=record.context,
            surface=record.surface,
            pending=record.pending,
        )
        self._queue([record], [draw])
        if explained is None:
            return record.decision
        return replace(record.decision, explanations=tuple(explained))

    def decide_batch(self, requests: list[dict]) -> list[Decision]:
        """Decide every request (keyword arguments of :meth:`decide`: ``user_id``, ``n_slots``,
        ``context``, ``candidates``, ``exclude``, ``surface``, ``pinned``) and log them all in
        ONE transaction: all are logged or, on any error, none. An invalid request raises its
        :class:`ValidationError` with ``index`` set to its position in ``requests``.

        The policy scores the whole batch at once (:meth:`Policy.distributions`; one matrix
        product over the stacked candidates for the LinUCB family), then each request's slate
        is sampled in order from the engine's stream: a seeded engine serves exactly the
        decisions (slates, propensities, marginals, event ids) that :meth:`decide` would have
        served for the same requests one by one.
        """
        inputs = []
        for i, req in enumerate(requests):
            try:
                if "explain" in req:  # explanations are per decision (decide)
                    raise ValidationError(
                        "explain is not available in a batch: explanations come one decision at a time (decide)",
                        "explain",
                    )
                inputs.append(self._inputs(**req))
            except ValidationError as exc:
                exc.index = i
                raise
        with self._lock:
            dists = self._distributions(inputs)
            todo = [i for i, dist in enumerate(dists) if dist is not None]
            samples: list = [None] * len(inputs)
            # every slate from the one stream in request order, as decide() would draw them
            for i, sample in zip(todo, sample_slates([dists[i] for i in todo], self._sampler, defer=self._defer)):
                samples[i] = sample
            draws = [self._stamp(sample, dist) for sample, dist in zip(samples, dists)]
        records = [self._mark_pending(self._build(inp, draw), draw) for inp, draw in zip(inputs, draws)]
        self.log_items()
        self.log.write_decisions(records)
        self._queue(records, draws)
        return [r.decision for r in records]

    def _prepare(
        self, user_id: str, n_slots: int, explained: list | None = None, **request
    ) -> tuple[DecisionRecord, _Draw]:
        """Sample a decision (``request``: :meth:`decide`'s keyword arguments); returns what
        logs it, and the stamped draw. ``explained``: a list that receives the slots'
        explanations, made under the same lock as the draw."""
        inp = self._inputs(user_id, n_slots, **request)
        with self._lock:
            dist = self._distribution(inp) if inp.n_policy else None
            draw = self._draw(inp, dist)
            if explained is not None:
                explained.extend(self._explain(inp, draw))
        return self._mark_pending(self._build(inp, draw), draw), draw

    def _explain(self, inp: _Inputs, draw: _Draw) -> tuple[Explanation, ...]:
        """Every slot's explanation (under the lock, from the policy that drew ``draw``)."""
        pinned = tuple(Explanation.unavailable("pinned by the request") for _ in inp.pin_ids)
        if draw.sample is None:
            return pinned
        request = self.request(inp.context, inp.cand_idx, inp.parts)
        if inp.baseline is None:
            return pinned + explain_slate(self.policy, request, draw.sample, inp.parts.feature_names)
        # the baseline served in the draw's place: the policy's scores of the baseline's items
        where = {int(i): j for j, i in enumerate(inp.cand_idx.tolist())}
        at = [where[int(i)] for i in inp.baseline.tolist()]
        why = "served from the request's baseline; these are the policy's own scores of its items"
        return pinned + tuple(
            replace(e, why=f"{why} ({e.why})" if e.why else why) if e.available else e
            for e in explain_slate(self.policy, request, draw.sample, inp.parts.feature_names, index=at)
        )

    def _inputs(
        self,
        user_id: str,
        n_slots: int,
        *,
        context=None,
        candidates=None,
        exclude=None,
        surface: str = "home",
        pinned=None,
        candidate_sources=None,
        baseline=None,
        promoted=None,
    ) -> _Inputs:
        """Everything a decision needs before the policy sees it, checked (no policy state read)."""
        if not isinstance(user_id, str) or not user_id:
            raise ValidationError(f"user_id must be a non-empty string, got {user_id!r}", "user_id")
        n_slots = check_positive_int(n_slots, "slots")
        parts = self._parts
        items = parts.items
        pin_idx = _NO_ITEMS
        pin_ids: list[str] = []
        if pinned:
            if isinstance(pinned, str):
                raise ValidationError("pinned must be a list of item ids, got a string", "pinned")
            pin_idx = items.index_of(list(pinned), "pinned")
            if len(set(pin_idx.tolist())) != len(pin_idx):
                raise ValidationError("pinned lists an item twice", "pinned")
            if len(pin_idx) > n_slots:
                raise ValidationError(f"{len(pin_idx)} pinned items do not fit in {n_slots} slots", "pinned")
            pin_ids = [items.ids[int(i)] for i in pin_idx.tolist()]
        # blocked and hidden items leave before the policy scores, so propensities are over the rest;
        # a suppressed pinned item is dropped and its slot goes to the policy
        suppressed = self._suppress(self.log, items, user_id, self.clock)
        pin_idx, pin_ids = drop_pinned(pin_idx, pin_ids, suppressed)
        n_policy = n_slots - len(pin_idx)
        excluded = [*(exclude or []), *pin_ids]
        needs_session = (candidates is None and n_policy > 0) or parts.context is not None
        session = self.session(user_id, items) if needs_session else None
        ctx = self._context(parts, context, user_id, session)
        cand_idx, source = self._candidates(
            parts, user_id, n_policy, candidates, excluded or None, session, candidate_sources, suppressed
        )
        n_given = len(cand_idx)
        arm = self.arms.of(user_id)
        serve_baseline = bool(n_policy) and (arm == "control" or self.modes.current() == "apprentice")
        excl = _NO_ITEMS  # what promoted items and a baseline leave out: only when there are some
        if (promoted and n_policy) or (serve_baseline and baseline is not None):
            excl = items.index_of(excluded, "exclude", skip_unknown=True) if excluded else _NO_ITEMS
            if len(suppressed):  # neither brings a blocked or hidden item back
                excl = np.union1d(excl, suppressed)
        if promoted and n_policy:
            if isinstance(promoted, str):
                raise ValidationError("promoted must be a list of item ids, got a string", "promoted")
            pro = items.index_of(list(promoted), "promoted")
            if len(np.unique(pro)) != len(pro):
                raise ValidationError("promoted lists an item twice", "promoted")
            cand_idx, source = _extend(cand_idx, source, pro[~np.isin(pro, excl)], SOURCE_PROMOTED)
        base_idx = None
        if serve_baseline:
            if baseline is None:  # the candidates in their order: the generator's ranking, or the request's
                base_idx = cand_idx[:n_policy].copy()
            else:  # the policy scores the baseline's items too
                base_idx = baseline_slate(items, baseline, n_policy, excl)
                cand_idx, source = _extend(cand_idx, source, base_idx, SOURCE_BASELINE)
        if candidates is not None and len(cand_idx) != n_given:
            candidates = None  # the ids come from the extended list
        if candidates is not None and len(cand_idx) == len(candidates):
            cand_ids = tuple(candidates)  # nothing excluded: the request's ids, in its order
        else:
            cand_ids = tuple(map(items.ids.__getitem__, cand_idx.tolist()))
        return _Inputs(
            parts, user_id, n_policy, ctx, pin_idx, pin_ids, cand_idx, cand_ids, source, surface, arm, base_idx
        )

    def _distribution(self, inp: _Inputs):
        try:
            return self.policy.distribution(
                self.request(inp.context, inp.cand_idx, inp.parts), inp.n_policy, self.min_epsilon
            )
        except ValidationError as exc:
            raise _policy_error(exc) from None

    def _distributions(self, inputs: list) -> list:
        """The slate distribution of every input that needs the policy (``None`` for the rest),
        scored together; a policy error is raised with ``index`` set to the request's position."""
        todo = [i for i, inp in enumerate(inputs) if inp.n_policy]
        out: list[SlateDistribution | None] = [None] * len(inputs)
        if not todo:
            return out
        try:
            dists = self.policy.distributions(
                [self.request(inputs[i].context, inputs[i].cand_idx, inputs[i].parts) for i in todo],
                [inputs[i].n_policy for i in todo],
                self.min_epsilon,
            )
        except ValidationError:
            for i in todo:  # which request: one at a time (the error path only)
                try:
                    self._distribution(inputs[i])
                except ValidationError as exc:
                    exc.index = i
                    raise
            raise
        for i, dist in zip(todo, dists):
            out[i] = dist
        return out

    def _draw(self, inp: _Inputs, dist) -> _Draw:
        """Sample ``dist`` and take an event id (under the engine's lock)."""
        if dist is None:
            return self._stamp(None)
        # a baseline-served decision logs only the shadow slate: its propensities are never needed
        cheap = self._defer or inp.baseline is not None
        return self._stamp(dist.draw(self._sampler) if cheap else dist.sample(self._sampler), dist)

    def _stamp(self, sample: SlateSample | None, dist: SlateDistribution | None = None) -> _Draw:
        """A sampled slate (or ``None``) with the model version, policy, logged params and a
        new event id (under the engine's lock)."""
        policy = self.policy
        cached = self._params
        if cached is None or cached.policy is not policy or cached.config is not policy.config:
            # the logged params of a policy change only with its (frozen) config: serialised once
            cached = self._params = _LoggedParamsOf(
                policy,
                policy.config,
                LoggedParams(
                    {
                        **policy.params,
                        "min_epsilon": self.min_epsilon,
                        **({"arms": self.arms.logged()} if self.arms.active else {}),
                    }
                ),
            )
        event_id = self._ids.bytes(16).hex() if self._ids is not None else time_ordered_id()
        if self.log.shard is not None:  # a sharded log's ids carry its shard (store/shards.py)
            event_id = with_shard(event_id, self.log.shard)
        return _Draw(
            sample=sample,
            model_version=self.model_version,
            policy_name=policy.name,
            params=cached.logged,
            event_id=event_id,
            dist=dist,
        )

    def _build(self, inp: _Inputs, stamped: _Draw) -> DecisionRecord:
        """The decision and what logs it."""
        draw = stamped.sample
        index = draw.index if draw is not None else _NO_ITEMS
        chosen = inp.cand_idx[index]
        pin_ids = inp.pin_ids
        p = len(pin_ids)
        slots = tuple(
            Slot(position=k, item_id=pin_ids[k], propensity=1.0, marginal=1.0, source="pinned") for k in range(p)
        )
        shadow = None
        if draw is not None and inp.baseline is not None:
            slots += self._baseline_slots(inp, stamped)
            shadow = tuple(map(inp.cand_ids.__getitem__, index.tolist()))
            chosen = inp.baseline
        elif draw is not None:
            ids, source = inp.parts.items.ids, inp.source
            draws = int(draw.marginal_draws)
            sources = [source] * len(index) if isinstance(source, str) else [str(source[j]) for j in index.tolist()]
            slots += tuple(
                Slot(position=p + k, item_id=ids[i], propensity=prop, marginal=marg, source=src, marginal_draws=draws)
                for k, (i, src, prop, marg) in enumerate(
                    zip(chosen.tolist(), sources, draw.propensity.tolist(), draw.marginal.tolist())
                )
            )
        joint, log_joint = (draw.joint, draw.log_joint) if draw is not None and shadow is None else (1.0, 0.0)
        if p:
            chosen = np.concatenate([inp.pin_idx, chosen])
        decision = Decision(
            event_id=stamped.event_id,
            user_id=inp.user_id,
            slots=slots,
            joint_propensity=joint,
            log_joint_propensity=log_joint,
            policy=stamped.policy_name,
            model_version=stamped.model_version,
            candidates=inp.cand_ids,
            ts=float(self.clock()),
            build=inp.parts.build,
            candidate_sources=None if isinstance(inp.source, str) else tuple(inp.source.tolist()),
            arm=inp.arm,
            served="policy" if shadow is None else "baseline",
            shadow=shadow,
            greedy=None if draw is None or shadow is not None else _flags(greedy_flags(stamped.dist, index)),
        )
        return DecisionRecord(
            decision=decision,
            policy_params=stamped.params,
            candidate_index=inp.cand_idx,
            slot_index=chosen,
            context=inp.context,
            surface=inp.surface,
        )

    @staticmethod
    def _baseline_slots(inp: _Inputs, stamped: _Draw) -> tuple[Slot, ...]:
        """The baseline's slots: propensity 1 (what the baseline gave them), each with the
        policy's probability of that item in that slot."""
        assert inp.baseline is not None and stamped.dist is not None
        p = len(inp.pin_ids)
        at = np.argmax(inp.cand_idx[:, None] == inp.baseline[None, :], axis=0)  # each baseline item's candidate
        policy_marg = np.asarray(stamped.dist.marginals())[at, np.arange(len(at))]
        ids = inp.parts.items.ids
        source = inp.source
        return tuple(
            Slot(
                position=p + k,
                item_id=ids[i],
                propensity=1.0,
                marginal=1.0,
                source=source if isinstance(source, str) else str(source[j]),
                policy_marginal=float(pm),
            )
            for k, (i, j, pm) in enumerate(zip(inp.baseline.tolist(), at.tolist(), policy_marg.tolist()))
        )

    @property
    def arms(self) -> Arms:
        """The analysis holdout: which users are served by the baseline or never learned from."""
        return self._arms

    @arms.setter
    def arms(self, arms: Arms) -> None:
        with self._lock:
            self._arms = arms
            self._params = None  # the logged params carry the shares

    @property
    def mode(self) -> str:
        """``"live"`` or ``"apprentice"``: the log's newest switch, else the engine's starting mode."""
        return self.modes.current()

    def reward(self, event_id: str, value: float, *, position: int | None = None, kind: str = "click") -> str:
        """Join a reward to a logged decision; returns ``"recorded"``, ``"late"`` (after the
        log's reward window: kept, not learned from) or ``"duplicate"``."""
        return self.log.record_reward(
            Reward(event_id=event_id, value=float(value), position=position, kind=kind, ts=float(self.clock()))
        )

    # ---- learning -----------------------------------------------------------------------
    def learn(self, *, until_seq: int | None = None, kind: str = "click", default_reward: float = 0.0) -> int:
        """Update the policy from logged decisions not yet learned from, up to ``until_seq``.

        The caller says when a decision's rewards are in: slots without a ``kind`` reward by
        then count as ``default_reward``, and a reward posted after a decision was learned
        from is kept in the log but not learned from again. Returns the slot rows learned from.
        """
        with self._lock:
            logged = self.log.decisions(
                after_seq=self._learned_seq,
                until_seq=until_seq,
                kind=kind,
                default_reward=default_reward,
                training=True,
            )
            if logged.n_decisions == 0:
                return 0
            if len(logged.row_reward) == 0:  # only pinned slots: nothing a policy chose
                self._learned_seq = int(logged.seq[-1])
                return 0
            learn_from_log(self.policy, logged, self.items.features, cold=self.items.cold)
            self._learned_seq = int(logged.seq[-1])
            self._model_version = None  # learned online past any installed snapshot
        return len(logged.row_reward)
