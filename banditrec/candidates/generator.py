"""One candidate generator for a carousel request: complements, substitutes, new items and
popular items, scored, filtered by business rules and spread across product types.

Details: docs/candidates.md, "The generator (`candidates/generator.py`)".
"""

from __future__ import annotations

import threading
import time

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError
from .arrays import Prefixed, check_meta, from_meta, meta_int, put_csr, take, take_csr
from .complements import ComplementModel
from .itemknn import Entries, ItemItemCF, _top_n_per_row, _usable_cpus, gather_rows, rows_top_n
from .keys import distinct, distinct_inverse
from .rules import Filters, UserState, diversify_sorted
from .signals import DAY_S, MAX_PAIR_DISTANCE, Interactions, pair_signals

SOURCES = ("complement", "similar", "new", "popular", "factors", "reorder", "accessory")
DEFAULT_WEIGHTS = {
    "complement": 1.0,
    "similar": 0.3,
    "new": 0.5,
    "popular": 0.5,
    "factors": 0.5,
    "reorder": 1.0,
    "accessory": 0.5,
}
QUOTA_SOURCES = ("complement", "similar", "popular", "factors", "reorder", "accessory")  # "new": min_new
STEPS = ("signals", "cf", "complements", "substitutes", "metadata", "popularity")
FORMAT = "banditrec.CandidateGenerator"
_NAMES = np.asarray(SOURCES, dtype=object)
_CODE = {name: c for c, name in enumerate(SOURCES)}
_ABSENT = np.zeros(0)  # the component of a source the generator does not have


class CandidateGenerator:
    """A carousel request's candidates: complements, substitutes, new and popular items.

    Parameters
    ----------
    n_neighbors : int, default 50
        Neighbours kept per item (CF and complements).
    weighting : {"cosine", "tfidf", "bm25"}
        The item-item CF weighting.
    half_life_s, window_s : float
        Recency half-life of interactions and views; co-purchase window (seconds).
    max_per_type, type_decay : int, float
        The diversity cap and spread (:func:`diversify`).
    min_new : int, default 1
        Slots kept for new (cold) items when any is a candidate.
    weights : dict, optional
        Component weights (docs/candidates.md, "The generator").
    filters : Filters, optional
        Business rules, applied to every request.
    metadata : MetadataIndex, optional
        Fitted metadata neighbours (cold start); None disables the ``new`` component.
    n_popular, n_backoff : int
        Popular items kept per segment; back-off items kept per product type.
    max_pair_distance : int or None
        The per-session pair cap of :func:`pair_signals`.
    quotas : dict, optional
        Source -> the fewest candidates a row keeps from that source when it has any eligible
        (the ``new`` source's is ``min_new``). Sources: :data:`QUOTA_SOURCES`.
    factors, reorder : optional
        A fitted :class:`~banditrec.candidates.factors.LatentFactors` ("because you liked") and
        :class:`~banditrec.candidates.reorder.ReorderModel` ("due to reorder"); None leaves the
        source out. Set them before :meth:`fit` or after (they are fitted on their own).
    accessory : scipy.sparse matrix (n_items, n_items), optional
        ``accessory[a, x]``: weight of "x is an accessory of a" (the product graph's
        ``accessory_of`` edges, reversed); cart and purchases seed it.
    n_source : int, default 100
        Candidates each per-user source (factors, reorder) proposes per row.

    Raises
    ------
    ValidationError
        A parameter out of range or an unknown weight component.
    """

    head = 2  # see _diversified: the share of a row spread before checking that it suffices

    def __init__(
        self,
        *,
        n_neighbors: int = 50,
        weighting: str = "cosine",
        half_life_s: float = 30 * DAY_S,
        window_s: float = 7 * DAY_S,
        max_per_type: int = 5,
        type_decay: float = 0.7,
        min_new: int = 1,
        weights: dict | None = None,
        filters: Filters | None = None,
        metadata=None,
        n_popular: int = 300,
        n_backoff: int = 50,
        max_pair_distance: int | None = MAX_PAIR_DISTANCE,
        quotas: dict | None = None,
        factors=None,
        reorder=None,
        accessory=None,
        n_source: int = 100,
    ):
        self.cf = ItemItemCF(n_neighbors, weighting=weighting)
        self.complement_model = ComplementModel(n_neighbors=n_neighbors, n_backoff=n_backoff)
        self.half_life_s, self.window_s = float(half_life_s), float(window_s)
        if isinstance(max_per_type, bool) or not isinstance(max_per_type, int) or max_per_type < 1:
            raise ValidationError(f"max_per_type must be a positive integer, got {max_per_type!r}", "max_per_type")
        if isinstance(n_popular, bool) or not isinstance(n_popular, int) or n_popular < 1:
            raise ValidationError(f"n_popular must be a positive integer, got {n_popular!r}", "n_popular")
        self.max_per_type, self.type_decay, self.min_new = max_per_type, float(type_decay), int(min_new)
        self.n_popular = n_popular
        self.max_pair_distance = max_pair_distance
        w = dict(DEFAULT_WEIGHTS)
        for k, v in (weights or {}).items():
            if k not in w:
                raise ValidationError(f"weights: unknown component {k!r}; known: {', '.join(SOURCES)}", "weights")
            w[k] = float(v)
        self.weights = w
        q = {}
        for k, v in (quotas or {}).items():
            if k not in QUOTA_SOURCES:
                raise ValidationError(
                    f"quotas: unknown source {k!r}; known: {', '.join(QUOTA_SOURCES)} (new items: min_new)", "quotas"
                )
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValidationError(f"quotas.{k} must be an integer >= 0, got {v!r}", f"quotas.{k}")
            if v:
                q[k] = int(v)
        self.quotas = q
        if isinstance(n_source, bool) or not isinstance(n_source, int) or n_source < 1:
            raise ValidationError(f"n_source must be a positive integer, got {n_source!r}", "n_source")
        self.n_source = n_source
        self.factors, self.reorder = factors, reorder
        self.accessory = None if accessory is None else sp.csr_matrix(accessory)
        self.filters = filters or Filters()
        self.metadata = metadata
        self.fitted = False
        self._scratch = threading.local()

    @property
    def params(self) -> dict:
        """The constructor's parameters (JSON-able; not the filters nor the metadata index)."""
        return {
            "n_neighbors": self.cf.n_neighbors,
            "weighting": self.cf.weighting,
            "half_life_s": self.half_life_s,
            "window_s": self.window_s,
            "max_per_type": self.max_per_type,
            "type_decay": self.type_decay,
            "min_new": self.min_new,
            "weights": dict(self.weights),
            "n_popular": self.n_popular,
            "n_backoff": self.complement_model.n_backoff,
            "max_pair_distance": self.max_pair_distance,
            "quotas": dict(self.quotas),
            "n_source": self.n_source,
        }

    # ---- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        events: Interactions,
        item_types,
        *,
        user_segments=None,
        now: float | None = None,
        active=None,
        progress=None,
        num_threads: int | None = None,
    ) -> CandidateGenerator:
        """Learn from ``events`` (see :class:`Interactions`).

        Parameters
        ----------
        events : Interactions over ``n_items`` items
        item_types : (n_items,) product type of each item
        user_segments : (n_users,) segment of each user, for the popular-in-segment lists
        now : the time recency weights count from (default: the latest event)
        active : (n_items,) bool, items that may be candidates (default all). Items removed
            from a catalog keep their index and become inactive: never a candidate, neighbour
            or popular item, though their events still count and they still seed neighbours.
        progress : ``progress(step, done, total)`` or None; ``step`` is one of :data:`STEPS`,
            called with ``done=0`` when the step starts, ``done=total`` when it ends, and in
            between for the chunked steps (``cf``, ``metadata``).
        num_threads : threads of the chunked steps (default: the CPUs this process may use)

        Memory: the chunked steps hold one chunk of pairs at a time; the result is a few
        neighbour tables of ``n_neighbors`` entries per item.
        """
        n = events.n_items
        types = np.asarray(item_types, dtype=np.int64)
        if types.shape != (n,):
            raise ValidationError(f"item_types must have {n} entries, got {len(types)}", "item_types")
        if n and types.min() < 0:
            raise ValidationError(f"item_types must be >= 0, found {types.min()}", "item_types")
        active = np.ones(n, bool) if active is None else np.asarray(active)
        if active.dtype != bool or active.shape != (n,):
            raise ValidationError(
                f"active must be a bool mask of shape ({n},), got dtype {active.dtype} and shape {active.shape}",
                "active",
            )
        seg = self._segments(user_segments, events.n_users)
        threads = num_threads if num_threads is not None else _usable_cpus()
        report = _Steps(progress)
        self.types, self.active = types, active.copy()
        now = float(events.ts.max()) if now is None and len(events) else (now or 0.0)

        report.start("signals")
        self.signals = pair_signals(events, window_s=self.window_s, max_pair_distance=self.max_pair_distance)
        report.end("signals")

        report.start("cf", chunked=True)
        X = events.user_items(None, half_life_s=self.half_life_s, now=now)
        self.cf.fit(X, allowed=active, num_threads=threads, progress=report.part("cf"))
        self.cold = np.asarray(X.sum(axis=0)).ravel() == 0
        report.end("cf")

        report.start("complements")
        self.complement_model.fit(self.signals, types, active=active)
        report.end("complements")

        report.start("substitutes")
        self.substitutes = _substitute_table(self.signals.substitutes, self.cf.similarity, self.cf.n_neighbors, active)
        report.end("substitutes")

        report.start("metadata", chunked=self.metadata is not None)
        if self.metadata is not None:
            if self.metadata.n_items != n:
                raise ValidationError(f"metadata indexes {self.metadata.n_items} items, the events {n}", "metadata")
            # any item -> its metadata-nearest new items (only new items are ever needed here)
            self.meta_new = self.metadata.neighbour_table(
                among=self.cold & active, num_threads=threads, progress=report.part("metadata")
            ).tocsr()
        else:
            self.meta_new = None
        report.end("metadata")

        report.start("popularity")
        pop = segment_popularity(events, seg, half_life_s=self.half_life_s, now=now, active=active)
        self.popular = _top_per_row(pop, self.n_popular)
        report.end("popularity")
        self.fit_seconds = report.seconds
        self.fitted = True
        return self

    @staticmethod
    def _segments(user_segments, n_users: int) -> np.ndarray:
        if user_segments is None:
            return np.zeros(n_users, dtype=np.int64)
        seg = np.asarray(user_segments)
        if seg.shape != (n_users,) or (seg.size and seg.dtype.kind not in "iu"):
            raise ValidationError(
                f"user_segments must be {n_users} integers (one per user), got dtype {seg.dtype} and shape {seg.shape}",
                "user_segments",
            )
        if seg.size and seg.min() < 0:
            raise ValidationError(f"user_segments must be >= 0, found {seg.min()}", "user_segments")
        return seg.astype(np.int64)

    def _items(self, item_ids, N: int, field: str = "item_ids") -> np.ndarray:
        if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
            raise ValidationError(f"N must be a positive integer, got {N!r}", "N")
        try:
            items = np.atleast_1d(np.asarray(item_ids, dtype=np.int64))
        except (TypeError, ValueError):
            raise ValidationError(f"{field} must be item indices (integers)", field) from None
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            raise ValidationError(f"{field} holds indices outside [0, {self.n_items})", field)
        return items

    def _check(self):
        if not self.fitted:
            raise ValidationError("CandidateGenerator is not fitted; call fit(events, item_types) first", "model")

    @property
    def n_items(self) -> int:
        return len(self.types)

    @property
    def n_segments(self) -> int:
        """Segments with a popular list of their own (the last row of ``popular`` is everyone's)."""
        return self.popular.shape[0] - 1

    # ---- item neighbours ---------------------------------------------------------------------
    def similar_items(self, item_ids, N: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Substitutes (``(ids (m, N), scores (m, N))``, -1 / 0 padded): co-viewed and
        viewed-then-bought items, then CF neighbours; an item without interactions gets its
        metadata neighbours among active items with interactions instead (when metadata is
        given)."""
        self._check()
        items = self._items(item_ids, N)
        ids, scores = rows_top_n(self.substitutes, items, N)
        if self.metadata is not None and self.cold[items].any():
            rows = np.flatnonzero(self.cold[items])
            mids, mscores = self.metadata.similar_items(items[rows], N, among=~self.cold & self.active)
            ids[rows], scores[rows] = mids, mscores
        return ids, scores

    def complements(self, item_ids, N: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Directional complements (``(ids (m, N), scores (m, N))``): what to buy after each item."""
        self._check()
        ids, scores, _ = self.complement_model.complements(item_ids, N)
        return ids, scores

    # ---- candidates ------------------------------------------------------------------------
    def candidates(self, state: UserState, N: int, exclude=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One user's candidates.

        Parameters
        ----------
        state : UserState
            Cart, recent purchases and views, segment.
        N : int
            Most candidates returned.
        exclude : item indices, optional
            Items not to return, on top of the filters.

        Returns
        -------
        ids, scores, source : arrays (k,), k <= N
            Item indices best first, their scores and the component each came from.

        Raises
        ------
        ValidationError
            Before :meth:`fit`, a bad ``N``, or a state or ``exclude`` naming unknown items.
        """
        N, excl = self._request([state], N, exclude)
        _, items, scores, source = self._pick([state], N, excl)
        return items, scores, _NAMES[source]

    def _request(self, states: list[UserState], N, exclude) -> tuple[int, np.ndarray]:
        """``(N, exclude as sorted item indices)``, checked with the states."""
        self._check()
        if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
            raise ValidationError(f"N must be a positive integer, got {N!r}", "N")
        n = self.n_items
        for s in states:
            s.check(n)
        excl = np.empty(0, np.int64) if exclude is None else distinct(self._items(exclude, 1, field="exclude"))
        return int(N), excl

    def candidates_batch(
        self, states: list[UserState], N: int, exclude=None, *, chunk: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates for many users: ``(ids (m, N), scores (m, N), source (m, N))``; a row with
        fewer eligible items is padded with -1, 0 and ``""``. ``exclude``: item indices no user
        may get (on top of the filters). ``chunk`` users are scored at once (default 2048)."""
        N, excl = self._request(states, N, exclude)
        m = len(states)
        out_ids = np.full((m, N), -1, dtype=np.int64)
        out_scores = np.zeros((m, N))
        out_source = np.full((m, N), "", dtype=object)
        chunk = chunk or 2048
        for lo in range(0, m, chunk):
            rows, items, scores, source = self._pick(states[lo : lo + chunk], N, excl)
            place = np.arange(len(rows)) - np.searchsorted(rows, rows)
            out_ids[lo + rows, place] = items
            out_scores[lo + rows, place] = scores
            out_source[lo + rows, place] = _NAMES[source]
        return out_ids, out_scores, out_source

    def _pick(self, states: list[UserState], N: int, excl: np.ndarray):
        """Entries ``(row, item, score, source code)`` of the chosen candidates, by row, each
        row's in output order."""
        pool, comps = self._pool(states)
        n = self.n_items
        prow, pitem = pool // n, pool % n
        w = [self.weights[s] for s in SOURCES]
        total = ((w[0] * comps[0] + w[1] * comps[1]) + w[2] * comps[2]) + w[3] * comps[3]
        for c in range(4, len(SOURCES)):
            if comps[c] is not _ABSENT:
                total = total + w[c] * comps[c]
        cart_rows, cart_items = _entries([s.cart for s in states])
        banned = self.filters.banned_among_batch(states, prow, pitem) | ~self.active[pitem]
        if len(cart_items):
            banned |= np.isin(pool, cart_rows * n + cart_items)
        if len(excl):
            banned |= np.isin(pitem, excl)
        score = np.where(banned, 0.0, total)
        ok = np.flatnonzero(score > 0)
        pick = self._diversified(ok, prow, pitem, score, N, len(states))
        if self.min_new >= 1 and self.meta_new is not None:
            pick = self._keep_new(pick, ok, prow, pitem, score, N)
        weighted = np.stack(
            [w[c] * comps[c][pick] if comps[c] is not _ABSENT else np.zeros(len(pick)) for c in range(len(SOURCES))]
        )
        source = np.argmax(weighted, axis=0)
        if self.quotas:
            pick, source = self._keep_quotas(pick, source, ok, prow, pitem, comps, N)
        return prow[pick], pitem[pick], score[pick], source

    def _diversified(self, ok, prow, pitem, score, N: int, m: int) -> np.ndarray:
        """Pool positions picked by :func:`diversify` over each row's eligible entries ``ok``,
        by row, each row's in output order.

        Only a row's ``head x N x max_per_type`` best entries are spread first: the result is
        the same as over all of them when the N-th adjusted score reached is at least the best
        score left out (adjusted scores never exceed scores; a tie goes to the earlier entry).
        A row where that does not hold is spread again over all its entries.
        """
        L = max(1, int(self.head * N * self.max_per_type))
        if m == 1:  # the request path: partition, then sort the head only
            if len(ok) > L:
                kth = np.partition(score[ok], len(ok) - L)[len(ok) - L]
                head = ok[score[ok] >= kth]
                bound = np.array([kth])  # nothing left out scores more
            else:
                head, bound = ok, np.array([-np.inf])
            head = head[np.lexsort((pitem[head], -score[head]))]  # ties by lower index
            rows = np.zeros(len(head), dtype=np.int64)
        else:
            order = ok[np.lexsort((pitem[ok], -score[ok], prow[ok]))]  # by row, score, lower index
            r = prow[order]
            place = np.arange(len(r)) - np.searchsorted(r, r)
            bound = np.full(m, -np.inf)
            bound[r[place == L]] = score[order[place == L]]
            head, rows = order[place < L], r[place < L]
        kept, adjusted = diversify_sorted(
            rows,
            score[head],
            self.types[pitem[head]],
            N,
            max_per_type=self.max_per_type,
            type_decay=self.type_decay,
            return_adjusted=True,
        )
        cut = np.flatnonzero(bound > -np.inf)
        if len(cut):
            kr = rows[kept]
            count = np.bincount(kr, minlength=m)
            low = np.full(m, np.inf)
            np.minimum.at(low, kr, adjusted)
            redo = cut[(count[cut] < N) | (low[cut] < bound[cut])]
            if len(redo):
                return self._diversified_again(ok, prow, pitem, score, head[kept], rows[kept], redo, N)
        return head[kept]

    def _diversified_again(self, ok, prow, pitem, score, pick, pick_rows, redo, N: int) -> np.ndarray:
        """``pick`` with the picks of rows ``redo`` recomputed over all their eligible entries."""
        mine = ok[np.isin(prow[ok], redo)]
        order = mine[np.lexsort((pitem[mine], -score[mine], prow[mine]))]
        r = prow[order]
        kept = diversify_sorted(
            r, score[order], self.types[pitem[order]], N, max_per_type=self.max_per_type, type_decay=self.type_decay
        )
        stay = ~np.isin(pick_rows, redo)
        both = np.concatenate([pick[stay], order[kept]])
        return both[np.argsort(np.concatenate([pick_rows[stay], r[kept]]), kind="stable")]

    def _keep_new(self, pick, ok, prow, pitem, score, N):
        """Rows holding fewer than ``min_new`` new items get their best remaining new items
        (type cap respected), replacing the last picks when the row is full."""
        cold_pick = np.bincount(prow[pick], weights=self.cold[pitem[pick]], minlength=int(prow.max(initial=-1)) + 1)
        cand = ok[self.cold[pitem[ok]]]
        cand = cand[np.lexsort((pitem[cand], -score[cand], prow[cand]))]  # new items, by row, score, lower index
        short = distinct(prow[cand])
        short = short[cold_pick[short] < self.min_new]
        if len(short) == 0:
            return pick
        out = []
        bounds = np.searchsorted(prow[pick], np.arange(int(prow.max()) + 2))
        cbounds = np.searchsorted(prow[cand], np.arange(int(prow.max()) + 2))
        last = 0
        for r in short.tolist():
            mine = pick[bounds[r] : bounds[r + 1]]
            new = cand[cbounds[r] : cbounds[r + 1]]
            new = new[~np.isin(new, mine)]
            counts = np.bincount(self.types[pitem[mine]], minlength=int(self.types.max()) + 1)
            new = new[counts[self.types[pitem[new]]] < self.max_per_type]  # the type cap holds for new items too
            add = new[: min(self.min_new - int(cold_pick[r]), N)]
            if len(add) == 0:
                continue
            out.append(pick[last : bounds[r]])
            out.append(np.r_[mine, add] if len(mine) + len(add) <= N else np.r_[mine[: N - len(add)], add])
            last = bounds[r + 1]
        out.append(pick[last:])
        return np.concatenate(out)

    def _keep_quotas(self, pick, source, ok, prow, pitem, comps, N: int):
        """``(pick, source)`` with each row holding at least ``quotas[s]`` items from every
        quota source ``s`` that has eligible items: a short row gets its best missing items of
        that source (by the source's own score, type cap respected), which replace the row's
        lowest unprotected picks when it is full. An item counts for ``s`` when ``s`` proposed it
        (its component is positive); an added item's logged source is ``s``. The items that
        meet an earlier quota, and the new items of ``min_new``, are protected."""
        codes = [(_CODE[s], q) for s, q in self.quotas.items() if comps[_CODE[s]] is not _ABSENT]
        if not codes or len(pick) == 0 and len(ok) == 0:
            return pick, source
        m = int(prow.max(initial=-1)) + 1
        short = np.zeros(m, bool)
        for c, q in codes:
            have = np.bincount(prow[pick], weights=comps[c][pick] > 0, minlength=m)
            avail = np.bincount(prow[ok], weights=comps[c][ok] > 0, minlength=m)
            short |= (have < q) & (avail > have)
        rows = np.flatnonzero(short)
        if len(rows) == 0:
            return pick, source
        bounds = np.searchsorted(prow[pick], np.arange(m + 1))
        okb = np.searchsorted(prow[ok], np.arange(m + 1))
        n_types = int(self.types.max(initial=0)) + 1
        out_pick, out_source, last = [], [], 0
        for r in rows.tolist():
            mine, msrc = pick[bounds[r] : bounds[r + 1]], source[bounds[r] : bounds[r + 1]]
            mine_ok = ok[okb[r] : okb[r + 1]]
            protected = np.zeros(len(mine), bool)
            if self.min_new >= 1 and self.meta_new is not None:
                protected[np.flatnonzero(self.cold[pitem[mine]])[: self.min_new]] = True
            for c, q in codes:
                member = np.flatnonzero(comps[c][mine] > 0)
                protected[member[:q]] = True
                need = q - len(member)
                if need <= 0:
                    continue
                cand = mine_ok[(comps[c][mine_ok] > 0) & ~np.isin(mine_ok, mine)]
                counts = np.bincount(self.types[pitem[mine]], minlength=n_types)
                cand = cand[counts[self.types[pitem[cand]]] < self.max_per_type]
                cand = cand[np.lexsort((pitem[cand], -comps[c][cand]))]
                free = np.flatnonzero(~protected)
                add = cand[: min(need, N - len(mine) + len(free))]
                if len(add) == 0:
                    continue
                drop = max(0, len(mine) + len(add) - N)
                keep = np.ones(len(mine), bool)
                keep[free[len(free) - drop :] if drop else []] = False
                mine = np.r_[mine[keep], add]
                msrc = np.r_[msrc[keep], np.full(len(add), c)]
                protected = np.r_[protected[keep], np.ones(len(add), bool)]
            out_pick += [pick[last : bounds[r]], mine]
            out_source += [source[last : bounds[r]], msrc]
            last = bounds[r + 1]
        out_pick.append(pick[last:])
        out_source.append(source[last:])
        return np.concatenate(out_pick), np.concatenate(out_source)

    def _per_user_entries(self, states: list[UserState], seeds: list, seed_weights: list) -> dict[str, Entries]:
        """Entries ``(row, item, score)`` of the per-user sources, positive scores only: latent
        factors (a user vector folded in from the cart, purchases and views with the weights
        :meth:`_pool` gave them, its ``n_source`` best items; rows without any item have none)
        and reorder timing (the types due for each known user at the request's time).
        ``seeds``, ``seed_weights``: :meth:`_pool`'s per-row lists (6 and 4 per row)."""
        out: dict[str, Entries] = {}
        if self.factors is not None:
            lists = [np.concatenate(seeds[6 * r : 6 * r + 3]) for r in range(len(states))]
            weights = [np.concatenate(seed_weights[4 * r : 4 * r + 3]) for r in range(len(states))]
            rows = np.flatnonzero([len(x) > 0 for x in lists])
            if len(rows) == 1:  # one request: no sparse matrix of histories
                ids1, sc1 = self.factors.recommend(lists[rows[0]], weights=weights[rows[0]], N=self.n_source)
                out["factors"] = _positive_entries(rows, ids1[None, :], sc1[None, :])
            elif len(rows):
                r_idx = np.repeat(np.arange(len(rows)), [len(lists[r]) for r in rows.tolist()])
                H = sp.csr_matrix(
                    (
                        np.concatenate([weights[r] for r in rows.tolist()]),
                        (r_idx, np.concatenate([lists[r] for r in rows.tolist()])),
                    ),
                    shape=(len(rows), self.n_items),
                )
                ids, sc = self.factors.recommend_batch(H, N=self.n_source)
                out["factors"] = _positive_entries(rows, ids, sc)
        if self.reorder is not None:
            rows = np.flatnonzero([s.user is not None and s.user >= 0 and s.now is not None for s in states])
            if len(rows):
                ids, sc = self.reorder.candidates_batch(
                    [states[r].user for r in rows.tolist()],
                    np.array([states[r].now for r in rows.tolist()], dtype=float),
                    self.n_source,
                    session_purchased=[states[r].session_purchased for r in rows.tolist()],
                )
                out["reorder"] = _positive_entries(rows, ids, sc)
        return out

    def _pool(self, states: list[UserState]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The pool keys ``row * n_items + item`` (sorted) with a nonzero component entry, and
        the four components on it, each scaled so that a row's best item scores 1."""
        n, m = self.n_items, len(states)
        cm = self.complement_model
        # seeds of three kinds: cart and purchases (complements), views (substitutes), any (new)
        lists, weights = [], []
        for s in states:
            lists += [s.cart, s.purchased, s.viewed, s.cart, s.purchased, s.viewed]
            weights += [
                np.ones(len(s.cart)),
                0.7 ** np.arange(len(s.purchased)),
                self._view_weights(s),
                np.ones(len(s.cart) + len(s.purchased) + len(s.viewed)),
            ]
        sizes = np.array([len(x) for x in lists]).reshape(m, 6)
        kind = np.tile(np.array([0, 0, 1, 2, 2, 2]), m)
        row = np.repeat(np.arange(m), 6)
        size = sizes.ravel()
        key = (np.repeat(kind * m + row, size)) * n + np.concatenate(lists)
        seeds, inv = distinct_inverse(key)
        w = _sum_by(inv, np.concatenate(weights), len(seeds))
        at = np.searchsorted(seeds // (m * n), [1, 2, 3])  # by kind, then row, then item
        rows, items = (seeds // n) % m, seeds % n
        cp = Entries(rows[: at[0]], items[: at[0]], w[: at[0]])  # (request row, seed item, weight)
        views = Entries(rows[at[0] : at[1]], items[at[0] : at[1]], w[at[0] : at[1]])
        n_types = cm.backoff_items.shape[0]
        # the seeds' types, summed in item order
        seed_types = _combine(cp.rows, self.types[cp.cols], cp.weights, n_types)
        last = self.popular.shape[0] - 1  # the all-users row
        seg = np.array(
            [s.segment if s.segment is not None and 0 <= s.segment < last else last for s in states], dtype=np.int64
        )
        tables = [cm.scores, cm.backoff_items, self.substitutes]
        parts = [
            gather_rows(t.indptr, t.indices, t.data, sd.rows, sd.cols, sd.weights)
            for t, sd in zip(tables, (cp, seed_types, views))
        ]
        if self.meta_new is not None:
            M = self.meta_new
            parts.append(gather_rows(M.indptr, M.indices, M.data, rows[at[1] :], items[at[1] :], w[at[1] :]))
        parts.append(
            gather_rows(
                self.popular.indptr,
                self.popular.indices,
                self.popular.data,
                np.arange(m, dtype=np.int64),
                seg,
                np.ones(m),
            )
        )
        n_base = len(parts)
        extra: dict[str, Entries] = (
            self._per_user_entries(states, lists, weights) if self.factors or self.reorder else {}
        )
        if self.accessory is not None:
            A = self.accessory
            extra["accessory"] = gather_rows(A.indptr, A.indices, A.data, cp.rows, cp.cols, cp.weights)
        extra_names = [k for k in ("factors", "reorder", "accessory") if k in extra]
        parts += [extra[k] for k in extra_names]
        keys = np.concatenate([p.rows * n + p.cols for p in parts])
        pool, inv = self._dedupe(keys) if m == 1 else distinct_inverse(keys)
        P = len(pool)
        part = np.repeat(np.arange(len(parts)), [len(p.rows) for p in parts])
        val = _sum_by(part * P + inv, np.concatenate([p.weights for p in parts]), len(parts) * P).reshape(len(parts), P)
        new = val[3] if self.meta_new is not None else np.zeros(P)
        comps = [val[0] + cm.backoff * val[1], val[2], new, val[n_base - 1]]
        comps += [val[n_base + extra_names.index(k)] if k in extra_names else _ABSENT for k in SOURCES[4:]]
        if m == 1:
            for c in comps:
                if c is _ABSENT:
                    continue
                peak = c.max() if P else 0.0
                if P < n:
                    peak = max(peak, 0.0)  # items off the pool score 0
                if peak > 0:
                    c /= peak
            return pool, comps
        prow = pool // n
        starts = np.searchsorted(prow, np.arange(m))
        size = np.diff(np.append(starts, P))
        has = size > 0
        for c in comps:
            if c is _ABSENT:
                continue
            peak = np.zeros(m)
            if P:
                peak[has] = np.maximum.reduceat(c, starts[has])
            peak = np.where(size < n, np.maximum(peak, 0.0), peak)  # items off the pool score 0
            p = peak[prow]
            np.divide(c, p, out=c, where=p > 0)
        return pool, comps

    def _dedupe(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(distinct keys, inverse)`` of one request's keys (items, < n_items), unsorted (no
        result depends on the pool's order), through a scratch array of n_items slots (one per
        thread): every slot read was written by this call, so the scratch is never cleared."""
        slot = getattr(self._scratch, "slot", None)
        if slot is None or len(slot) != self.n_items:
            slot = self._scratch.slot = np.empty(self.n_items, dtype=np.int64)
        at = np.arange(len(keys))
        slot[keys] = at  # one position per key wins
        first = keys[slot[keys] == at]
        slot[first] = np.arange(len(first))
        return first, slot[keys]

    def _view_weights(self, s: UserState) -> np.ndarray:
        if s.view_age_s is not None:
            return 0.5 ** (s.view_age_s / self.half_life_s)
        return 0.7 ** np.arange(len(s.viewed))

    # ---- the engine's seam ---------------------------------------------------------------------
    per_user = True  # the engine passes ``user`` and ``now`` to candidates_for_session

    def candidates_for_session(
        self,
        history,
        session,
        N: int,
        exclude=None,
        segment: int | None = None,
        user: int | None = None,
        now: float | None = None,
    ):
        """The candidate source of :class:`banditrec.engine.Engine` (:class:`CandidateSource`):
        the user's known purchases plus the
        session's cart, purchases and views (newest first); ``segment``: the user's segment
        index (None: unknown, the all-users popular list); ``user``: the user's row in the
        shop's users (None: unknown); ``now``: the request's time."""
        state = UserState(
            cart=session.cart,
            purchased=np.r_[session.purchased, np.asarray(history, dtype=np.int64)],
            viewed=session.viewed,
            segment=segment,
            user=user,
            now=now,
            session_purchased=session.purchased,
        )
        return self.candidates(state, N, exclude=exclude)

    # ---- saving -----------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict]:
        """``(arrays, meta)``: every fitted table as plain arrays and the parameters as JSON-able
        metadata (see :mod:`banditrec.candidates.arrays`). The filters are not saved (they are
        the shop's rules, given again to :meth:`from_arrays`), nor the pair signals (used only
        while fitting)."""
        self._check()
        out = {"types": self.types, "cold": self.cold, "active": self.active}
        put_csr(out, "substitutes", self.substitutes)
        put_csr(out, "popular", self.popular)
        if self.meta_new is not None:
            put_csr(out, "meta_new", self.meta_new)
        parts: dict[str, dict | None] = {}
        if self.accessory is not None:
            put_csr(out, "accessory", self.accessory)
        named = [("cf", self.cf), ("complements", self.complement_model), ("metadata", self.metadata)]
        named += [("factors", self.factors), ("reorder", self.reorder)]
        for name, part in named:
            if part is None:
                parts[name] = None
                continue
            arrays, meta = part.to_arrays()
            out.update({f"{name}.{k}": v for k, v in arrays.items()})
            parts[name] = meta
        meta = {
            "format": FORMAT,
            "version": 1,
            "n_items": self.n_items,
            "n_types": int(self.types.max(initial=-1)) + 1,
            "n_segments": self.n_segments,
            "has_new": self.meta_new is not None,
            "has_accessory": self.accessory is not None,
            "params": self.params,
            "parts": parts,
        }
        return out, meta

    @classmethod
    def from_arrays(cls, arrays, meta, *, filters: Filters | None = None) -> CandidateGenerator:
        """A fitted generator from :meth:`to_arrays`' output (e.g. ``np.load(path,
        allow_pickle=False)`` and the JSON metadata), with the shop's ``filters``. Raises
        :class:`ValidationError` naming the array or metadata key that does not fit."""
        from .metadata import MetadataIndex

        meta = check_meta(meta, FORMAT, 1)
        n = meta_int(meta, "n_items")
        n_seg = meta_int(meta, "n_segments")
        parts = meta.get("parts")
        if not isinstance(parts, dict) or not {"cf", "complements", "metadata"} <= set(parts):
            raise ValidationError("metadata 'parts' must name cf, complements and metadata", "meta.parts")
        metadata = None
        if parts["metadata"] is not None:
            metadata = MetadataIndex.from_arrays(Prefixed(arrays, "metadata."), parts["metadata"])
        factors = reorder = None
        if parts.get("factors") is not None:
            from .factors import LatentFactors

            factors = LatentFactors.from_arrays(Prefixed(arrays, "factors."), parts["factors"])
        if parts.get("reorder") is not None:
            from .reorder import ReorderModel

            reorder = ReorderModel.from_arrays(Prefixed(arrays, "reorder."), parts["reorder"])
        gen, meta = from_meta(cls, meta, FORMAT, filters=filters, metadata=metadata, factors=factors, reorder=reorder)
        gen.cf = ItemItemCF.from_arrays(Prefixed(arrays, "cf."), parts["cf"])
        gen.complement_model = ComplementModel.from_arrays(Prefixed(arrays, "complements."), parts["complements"])
        gen.types = take(arrays, "types", "i", (n,)).astype(np.int64)
        gen.cold = take(arrays, "cold", "b", (n,))
        gen.active = take(arrays, "active", "b", (n,))
        sizes = {
            "cf": gen.cf.n_items,
            "complements": gen.complement_model.scores.shape[0],
            "metadata": None if metadata is None else metadata.n_items,
        }
        for name, size in sizes.items():
            if size is not None and size != n:
                raise ValidationError(f"part {name!r} holds {size} items, the generator {n}", f"meta.parts.{name}")
        if not np.array_equal(gen.complement_model.types, gen.types):
            raise ValidationError("arrays 'types' and 'complements.types' differ", "types")
        gen.substitutes = take_csr(arrays, "substitutes", (n, n))
        gen.popular = take_csr(arrays, "popular", (n_seg + 1, n))
        gen.meta_new = take_csr(arrays, "meta_new", (n, n)) if meta.get("has_new") else None
        gen.accessory = take_csr(arrays, "accessory", (n, n)) if meta.get("has_accessory") else None
        if (gen.meta_new is None) != (metadata is None):
            raise ValidationError("metadata 'has_new' and the metadata part disagree", "meta.has_new")
        gen.signals = None
        gen.fitted = True
        return gen


class _Steps:
    """Calls ``progress(step, done, total)`` (when given) and times the steps (``seconds``).
    A plain step reports ``(0, 1)`` then ``(1, 1)``; a chunked one ``(0, chunks)``, one call
    per chunk done, and ``(chunks, chunks)`` at its end."""

    def __init__(self, progress):
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._t0 = 0.0
        self._total = None

    def start(self, step: str, chunked: bool = False) -> None:
        self._t0 = time.perf_counter()
        self._total = None
        if not chunked:
            self._emit(step, 0, 1)

    def _emit(self, step: str, done: int, total: int) -> None:
        self._total = total
        if self.progress is not None:
            self.progress(step, done, total)

    def end(self, step: str) -> None:
        self.seconds[step] = time.perf_counter() - self._t0
        if self._total is None:  # a chunked step with nothing to do
            self._emit(step, 0, 1)
        self._emit(step, self._total, self._total)

    def part(self, step: str):
        """A ``progress(done, total)`` for the chunk loop of ``step``."""

        def report(done: int, total: int) -> None:
            if total and done < total:  # the last chunk is reported by end()
                self._emit(step, done, total)

        return report


def segment_popularity(
    events: Interactions, segments: np.ndarray, *, half_life_s: float, now: float, active: np.ndarray
) -> np.ndarray:
    """``(S + 1, n_items)``: per segment, the recency-weighted purchases of its users plus 1e-3
    x all their recency-weighted events (views break ties), active items only, each row scaled
    to a maximum of 1; the last row is every user's."""
    n_seg = int(segments.max()) + 1 if len(segments) else 1
    w = 0.5 ** ((now - events.ts) / half_life_s)
    seg = segments[events.user]
    score = np.where(events.kind == 2, w, 0.0) + 1e-3 * w
    n = events.n_items
    pop = _sum_by(seg * n + events.item, score, (n_seg + 1) * n).reshape(n_seg + 1, n)
    pop[-1] = pop[:-1].sum(axis=0)
    pop[:, ~active] = 0.0
    peak = pop.max(axis=1, keepdims=True)
    np.divide(pop, peak, out=pop, where=peak > 0)
    return pop


def _top_per_row(dense: np.ndarray, M: int) -> sp.csr_matrix:
    """Each row's ``M`` largest positive entries (ties by lower column) as a csr matrix."""
    rows, cols, vals = [], [], []
    for r, row in enumerate(dense):
        pos = np.flatnonzero(row > 0)
        if len(pos) > M:
            kth = np.partition(row[pos], len(pos) - M)[len(pos) - M]
            pos = pos[row[pos] >= kth]
        pos = pos[np.lexsort((pos, -row[pos]))][:M]
        rows.append(np.full(len(pos), r))
        cols.append(pos)
        vals.append(row[pos])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=dense.shape)


def _substitute_table(pairs: sp.csr_matrix, cf: sp.csr_matrix, n: int, active: np.ndarray) -> sp.csr_matrix:
    """Substitutes: session co-view / view-then-buy counts, cosine-normalised
    (``c_ab / sqrt(c_a c_b)`` with ``c_a`` the row sums), plus half the item-item CF similarity
    (which reaches items never compared within a session); active items only, top ``n`` per
    item."""
    deg = np.asarray(pairs.sum(axis=1)).ravel()
    inv = np.divide(1.0, np.sqrt(deg), out=np.zeros_like(deg, dtype=float), where=deg > 0)
    P, C = pairs.tocoo(), cf.tocoo()
    row, col = np.r_[P.row, C.row], np.r_[P.col, C.col]
    val = np.r_[P.data * inv[P.row] * inv[P.col], 0.5 * C.data]
    keep = (row != col) & active[col]
    table = sp.csr_matrix((val[keep], (row[keep], col[keep])), shape=pairs.shape)  # sums the two parts
    table.eliminate_zeros()
    return _top_n_per_row(table, n)


def _positive_entries(rows: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> Entries:
    """The entries of padded per-row lists ``ids, scores (len(rows), N)`` (row ``i`` is request
    row ``rows[i]``) whose item is real and score positive, row by row in list order."""
    ok = (ids >= 0) & (scores > 0)
    r, c = np.nonzero(ok)
    return Entries(rows[r].astype(np.int64), ids[r, c].astype(np.int64), scores[r, c].astype(float))


def _entries(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, items)`` of per-row item lists, concatenated."""
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), [len(x) for x in lists])
    items = np.concatenate(lists).astype(np.int64) if lists else np.empty(0, np.int64)
    return rows, items


def _combine(rows: np.ndarray, items: np.ndarray, weights: np.ndarray, n: int) -> Entries:
    """The entries ``(rows, items, weights)`` with repeated (row, item) entries summed in input
    order, sorted by row then item."""
    key, inv = distinct_inverse(rows * n + items)
    return Entries(key // n, key % n, _sum_by(inv, weights, len(key)))


def _sum_by(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """``out[k] = sum of weights[i] with index[i] == k``, added in input order (float64)."""
    if len(index) == 0:
        return np.zeros(size)
    return np.bincount(index, weights=weights, minlength=size)


def _seeds(lists: list[np.ndarray], weights, n: int) -> Entries:
    """The seed entries ``(rows, items, weights)`` of per-row item lists (weight 1 each when
    ``weights`` is None), repeats summed, sorted by row then item."""
    rows, items = _entries(lists)
    w = np.concatenate(weights) if weights is not None and len(items) else np.ones(len(items))
    return _combine(rows, items, w, n)
