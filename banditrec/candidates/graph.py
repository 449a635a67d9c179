"""A typed product graph: complement, substitute, accessory_of, same_brand, same_type and
bought_after edges between items, each with a weight, a support and a direction, as one csr
matrix per edge type and as a Parquet edge table (``graph.parquet`` in a shop build).

Complements and substitutes are the candidate generator's own tables, so the graph agrees with
what it serves. Edge definitions, thresholds and the table's schema: docs/graph.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError
from .complements import ComplementModel
from .keys import distinct
from .signals import DAY_S, MAX_PAIR_DISTANCE, PURCHASE, Interactions, PairSignals, _user_pair_counts, ordered_pairs
from .signals import pair_signals as _pair_signals

EDGES = ("complement", "substitute", "accessory_of", "same_brand", "same_type", "bought_after")
DIRECTED = {
    "complement": True,
    "substitute": False,
    "accessory_of": True,
    "same_brand": False,
    "same_type": False,
    "bought_after": True,
}
GRAPH_FILE = "graph.parquet"
COLUMNS = ("src_index", "dst_index", "src_id", "dst_id", "edge", "weight", "support", "directed")
DIRECTIONS = ("out", "in", "both")
FORMATS = ("parquet", "csv", "graphml")


@dataclass(frozen=True)
class GraphParams:
    """The graph's thresholds (docs/graph.md, "Edges").

    Parameters
    ----------
    accessory_min_support : users who bought a then x within the co-purchase window, at least
    accessory_ratio : ``(C[a,x] + 1) / (C[x,a] + 1)`` at least this
    accessory_max_price_ratio : ``price[x] < ratio x price[a]`` when both prices are known
    group_cap : same_type / same_brand: each item joins its group's ``group_cap`` most bought
        other items
    horizon_s : bought_after counts purchases more than the co-purchase window and at most
        this many seconds after the first one
    bought_after_min_support : users per bought_after pair, at least
    n_per_item : accessory_of and bought_after edges kept per source item (the largest weights)
    brand_column : the items file's categorical column that holds the brand
    max_pair_distance : a purchase pairs with the user's next ``max_pair_distance`` purchases
        only (bought_after), as in :func:`pair_signals`
    """

    accessory_min_support: int = 3
    accessory_ratio: float = 3.0
    accessory_max_price_ratio: float = 1.0
    group_cap: int = 10
    horizon_s: float = 90 * DAY_S
    bought_after_min_support: int = 2
    n_per_item: int = 50
    brand_column: str = "brand"
    max_pair_distance: int | None = MAX_PAIR_DISTANCE

    def __post_init__(self):
        for name in ("accessory_min_support", "group_cap", "bought_after_min_support", "n_per_item"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValidationError(f"{name} must be a positive integer, got {v!r}", name)
        for name in ("accessory_ratio", "accessory_max_price_ratio", "horizon_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (np.isfinite(v) and v > 0):
                raise ValidationError(f"{name} must be a finite number > 0, got {v!r}", name)
        m = self.max_pair_distance
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1):
            raise ValidationError(
                f"max_pair_distance must be a positive integer or None, got {m!r}", "max_pair_distance"
            )

    @property
    def params(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Neighbours:
    """One item's edges (:meth:`ProductGraph.adjacent`): the neighbour, the edge type, the
    weight, the support and the direction seen from the item (``out``: item -> neighbour,
    ``in``: neighbour -> item, ``undirected``)."""

    ids: np.ndarray  # (k,) int64
    weights: np.ndarray  # (k,) float64
    support: np.ndarray  # (k,) int64
    edges: np.ndarray  # (k,) object: edge names
    directions: np.ndarray  # (k,) object


class ProductGraph:
    """Typed item-item edges over ``n_items`` items: per edge type an ``(n_items, n_items)``
    csr matrix ``W[src, dst] = weight`` (undirected edges stored both ways) and the support
    (an int count: users, or items for the metadata edges) on the same entries."""

    def __init__(self, params: GraphParams | None = None):
        self.params = params or GraphParams()
        self.n_items = 0
        self.item_ids: np.ndarray | None = None
        self._w: dict[str, sp.csr_matrix] = {}
        self._s: dict[str, np.ndarray] = {}
        self._t: dict[str, sp.csr_matrix] = {}  # transposes (in-edges), built on demand

    # ---- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        events: Interactions,
        item_types=None,
        *,
        complements: ComplementModel,
        substitutes: sp.csr_matrix,
        signals: PairSignals,
        window_s: float,
        brand=None,
        price=None,
        active=None,
    ) -> ProductGraph:
        """Every edge type from the fitted candidate tables and the events.

        Parameters
        ----------
        events : Interactions over ``n_items`` items
        item_types : (n_items,) int product type codes (>= 0), or None (no same_type edges; an
            accessory need not be of another type)
        complements : the generator's fitted ComplementModel (its direct pair scores)
        substitutes : the generator's (n_items, n_items) substitute table
        signals : the PairSignals the complements were fitted on
        window_s : the co-purchase window those signals used (seconds)
        brand : (n_items,) brand labels; "" or None means unknown (no same_brand edge)
        price : (n_items,) prices; NaN means unknown
        active : (n_items,) bool, items that may be recommended (default all); an inactive
            item is never the served end of an edge (see docs/graph.md)
        """
        n = events.n_items
        types = None if item_types is None else _int_labels(item_types, n, "item_types")
        active = _mask(active, n)
        prices = _floats(price, n, "price")
        brands = _codes(brand, n, "brand")
        if complements.scores is None or complements.scores.shape != (n, n):
            raise ValidationError(f"complements must be a ComplementModel fitted on {n} items", "complements")
        if substitutes.shape != (n, n):
            raise ValidationError(f"substitutes must be ({n}, {n}), got {substitutes.shape}", "substitutes")
        if signals.co_purchase.shape != (n, n):
            raise ValidationError(f"signals must cover {n} items, got {signals.co_purchase.shape[0]}", "signals")
        p = self.params
        pop = np.asarray(signals.purchases, dtype=np.int64)
        self.n_items = n
        self._w, self._s, self._t = {}, {}, {}

        # complement a -> b: the ComplementModel's direct scores, as served
        C = complements.scores.tocoo()
        ok = active[C.col] & (C.row != C.col) & (C.data > 0)
        r, c = C.row[ok], C.col[ok]
        self._put("complement", r, c, C.data[ok], _lookup(signals.co_purchase_only(), r, c))

        # substitute {a, b}: either item lists the other; the larger score
        S = substitutes.tocsr()
        S = S.maximum(S.T).tocoo()
        ok = active[S.row] & active[S.col] & (S.row != S.col) & (S.data > 0)
        r, c = S.row[ok], S.col[ok]
        self._put("substitute", r, c, S.data[ok], _lookup(signals.substitutes, r, c))

        # accessory_of x -> a: x bought after a far more often than a after x
        P = signals.co_purchase.tocoo()
        a, x, cnt = P.row, P.col, P.data
        back = _lookup(signals.co_purchase, x, a)
        ok = (cnt >= p.accessory_min_support) & ((cnt + 1.0) / (back + 1.0) >= p.accessory_ratio)
        ok &= active[a] & active[x] & (a != x)
        if types is not None:
            ok &= types[a] != types[x]
        known = np.isfinite(prices[a]) & np.isfinite(prices[x])
        ok &= ~known | (prices[x] < p.accessory_max_price_ratio * np.where(known, prices[a], 0.0))
        a, x, cnt = a[ok], x[ok], cnt[ok]
        w = cnt / np.maximum(pop[a], 1)
        keep = _top_per_source(x, w, a, p.n_per_item)
        self._put("accessory_of", x[keep], a[keep], w[keep], cnt[keep])

        # same_brand / same_type {a, b}: the group's most bought items
        for name, codes in (("same_brand", brands), ("same_type", types)):
            r, c, w, s = _group_edges(codes, pop, active, p.group_cap) if codes is not None else (_E, _E, _F, _E)
            self._put(name, r, c, w, s)

        # bought_after a -> b: beyond the window, within the horizon, in users
        U = _later_purchases(events, window_s, p.horizon_s, p.max_pair_distance).tocoo()
        ok = (U.data >= p.bought_after_min_support) & active[U.col]
        a, b, cnt = U.row[ok], U.col[ok], U.data[ok]
        w = cnt / np.maximum(pop[a], 1)
        keep = _top_per_source(a, w, b, p.n_per_item)
        self._put("bought_after", a[keep], b[keep], w[keep], cnt[keep])
        return self

    def _put(self, edge: str, rows, cols, weights, support) -> None:
        """Store one edge type (entries unique per (row, col))."""
        n = self.n_items
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        order = np.lexsort((cols, rows))
        indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))].astype(np.int64)
        W = sp.csr_matrix((np.asarray(weights, float)[order], cols[order], indptr), shape=(n, n))
        self._w[edge] = W
        self._s[edge] = np.rint(np.asarray(support, float)[order]).astype(np.int64)

    # ---- reading ---------------------------------------------------------------------------
    def _check(self, edge: str | None = None) -> None:
        if not self._w:
            raise ValidationError("ProductGraph is not fitted; call fit(...) or from_table(...) first", "graph")
        if edge is not None and edge not in EDGES:
            raise ValidationError(f"unknown edge type {edge!r}; known: {', '.join(EDGES)}", "edge")

    def _item(self, item) -> int:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= item < self.n_items:
            raise ValidationError(f"item must be an index in [0, {self.n_items}), got {item!r}", "item")
        return int(item)

    def edge_matrix(self, edge: str) -> sp.csr_matrix:
        """``(n_items, n_items)`` csr: ``[src, dst] = weight`` of ``edge`` (undirected: both ways)."""
        self._check(edge)
        return self._w[edge]

    def support_matrix(self, edge: str) -> sp.csr_matrix:
        """The support of ``edge`` on the same entries as :meth:`edge_matrix`."""
        W = self.edge_matrix(edge)
        return sp.csr_matrix((self._s[edge], W.indices, W.indptr), shape=W.shape)

    @property
    def n_edges(self) -> dict[str, int]:
        """Stored entries per edge type (an undirected edge counts twice)."""
        self._check()
        return {e: int(self._w[e].nnz) for e in EDGES}

    def rows(self, items, edge: str, N: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Each item's ``N`` heaviest out-edges of type ``edge``: ``(ids (m, N), weights (m, N))``,
        ties by lower index, -1 / 0 padded (the batch form of :meth:`neighbours`)."""
        self._check(edge)
        N = _positive(N, "N")
        try:
            items = np.atleast_1d(np.asarray(items, dtype=np.int64))
        except (TypeError, ValueError):
            raise ValidationError("items must be item indices (integers)", "items") from None
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            raise ValidationError(f"items holds indices outside [0, {self.n_items})", "items")
        return _top_rows(self._w[edge], items, N)[:2]

    def neighbours(self, item_index, edge: str | None = None, N: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One item's out-edges (undirected edges included): ``(ids, weights, edge_names)``, the
        ``N`` heaviest of ``edge``, or of every edge type in :data:`EDGES` order when None."""
        nb = self.adjacent(item_index, edge=edge, direction="out", N=N)
        return nb.ids, nb.weights, nb.edges

    def adjacent(self, item_index, *, edge: str | None = None, direction: str = "out", N: int = 20) -> Neighbours:
        """One item's edges with support and direction. ``direction``: ``out`` (edges leaving the
        item, and undirected ones), ``in`` (edges arriving, and undirected ones) or ``both``.
        Per edge type (in :data:`EDGES` order, or only ``edge``) and direction, the ``N``
        heaviest, ties by lower index."""
        self._check(edge)
        j = self._item(item_index)
        N = _positive(N, "N")
        if direction not in DIRECTIONS:
            raise ValidationError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}", "direction")
        parts = []
        for e in EDGES if edge is None else (edge,):
            if not DIRECTED[e]:
                ways = [("undirected", self._w[e], self._s[e])]
            else:
                ways = []
                if direction in ("out", "both"):
                    ways.append(("out", self._w[e], self._s[e]))
                if direction in ("in", "both"):
                    ways.append(("in", *self._transpose(e)))
            for way, W, s in ways:
                ids, w, pos = _top_rows(W, np.array([j]), N)
                k = int((ids[0] >= 0).sum())
                parts.append((ids[0, :k], w[0, :k], s[pos[0, :k]], np.full(k, e, object), np.full(k, way, object)))
        if not parts:
            return Neighbours(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), _O, _O)
        return Neighbours(*(np.concatenate(z) for z in zip(*parts)))

    def _transpose(self, edge: str) -> tuple[sp.csr_matrix, np.ndarray]:
        if edge not in self._t:
            W = self._w[edge]
            self._t[edge] = sp.csr_matrix(
                (np.arange(W.nnz, dtype=float) + 1, W.indices, W.indptr), shape=W.shape
            ).T.tocsr()
        T = self._t[edge]
        at = T.data.astype(np.int64) - 1  # positions in the forward matrix
        W = self._w[edge]
        return sp.csr_matrix((W.data[at], T.indices, T.indptr), shape=T.shape), self._s[edge][at]

    # ---- the edge table ----------------------------------------------------------------------
    def to_table(self, item_ids=None):
        """The edges as a ``pyarrow.Table`` (schema: docs/graph.md), sorted by edge type (in
        :data:`EDGES` order), source, weight descending, destination. ``item_ids`` (n_items,)
        strings; default the ids the graph was read with, else the indices as text."""
        import pyarrow as pa

        self._check()
        ids = self._ids(item_ids)
        src, dst, w, s, code = [], [], [], [], []
        for k, e in enumerate(EDGES):
            W = self._w[e]
            r = np.repeat(np.arange(self.n_items, dtype=np.int64), np.diff(W.indptr))
            order = np.lexsort((W.indices, -W.data, r))
            src.append(r[order])
            dst.append(W.indices[order].astype(np.int64))
            w.append(W.data[order])
            s.append(self._s[e][order])
            code.append(np.full(len(order), k, np.int8))
        src_a, dst_a, codes = np.concatenate(src), np.concatenate(dst), np.concatenate(code)
        directed = np.array([DIRECTED[e] for e in EDGES])[codes]
        return pa.table(
            {
                "src_index": pa.array(src_a, pa.int64()),
                "dst_index": pa.array(dst_a, pa.int64()),
                "src_id": pa.array(ids[src_a], pa.string()),
                "dst_id": pa.array(ids[dst_a], pa.string()),
                "edge": pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(EDGES, pa.string())),
                "weight": pa.array(np.concatenate(w), pa.float64()),
                "support": pa.array(np.concatenate(s), pa.int64()),
                "directed": pa.array(directed, pa.bool_()),
            }
        )

    def _ids(self, item_ids) -> np.ndarray:
        if item_ids is None:
            item_ids = self.item_ids if self.item_ids is not None else np.arange(self.n_items).astype(str)
        ids = np.asarray(item_ids, dtype=object)
        if ids.shape != (self.n_items,):
            raise ValidationError(f"item_ids must hold {self.n_items} ids, got shape {ids.shape}", "item_ids")
        return ids

    @classmethod
    def from_table(cls, table, n_items: int, *, item_ids=None, name: str = GRAPH_FILE) -> ProductGraph:
        """A graph from :meth:`to_table`'s table (rows in any order), checked: every column
        present with its type, known edge types and their direction, indices in ``[0,
        n_items)``, no self-loop, weights finite and > 0, supports >= 0, no repeated edge,
        undirected edges present both ways with one weight, and ids matching ``item_ids`` when
        given. Raises :class:`ValidationError` naming ``name``, the column and the row."""
        import pyarrow as pa

        if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 0:
            raise ValidationError(f"n_items must be an integer >= 0, got {n_items!r}", "n_items")
        if not isinstance(table, pa.Table):
            raise ValidationError(f"{name} must be a pyarrow Table, got {type(table).__name__}", name)
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise ValidationError(
                f"{name} has no column {missing[0]!r} (it has: {', '.join(table.column_names) or 'none'})", missing[0]
            )
        kinds = {"src_index": "i", "dst_index": "i", "weight": "fi", "support": "i", "directed": "b"}
        cols = {}
        for c, want in kinds.items():
            col = table.column(c)
            if col.null_count:
                row = int(np.flatnonzero(np.asarray(col.is_null().to_numpy(zero_copy_only=False)))[0])
                raise ValidationError(f"{name} column {c!r} has an empty value at row {row}", c)
            arr = col.to_numpy()
            if arr.dtype.kind not in want:
                raise ValidationError(f"{name} column {c!r} must be {_KIND_NAMES[want]}, found {col.type}", c)
            cols[c] = arr
        edge_col = table.column("edge")
        if pa.types.is_dictionary(edge_col.type):
            edge_col = edge_col.cast(edge_col.type.value_type)
        if not (pa.types.is_string(edge_col.type) or pa.types.is_large_string(edge_col.type)):
            raise ValidationError(f"{name} column 'edge' must hold strings, found {table.column('edge').type}", "edge")
        names = np.asarray(edge_col.to_numpy(zero_copy_only=False), dtype=object)
        code = np.full(len(names), -1, np.int64)
        for k, e in enumerate(EDGES):
            code[names == e] = k
        _refuse(code < 0, name, "edge", f"must be one of {', '.join(EDGES)}", names)
        src, dst = cols["src_index"].astype(np.int64), cols["dst_index"].astype(np.int64)
        for c, v in (("src_index", src), ("dst_index", dst)):
            _refuse((v < 0) | (v >= n_items), name, c, f"must be an item index in [0, {n_items})", v)
        _refuse(src == dst, name, "dst_index", "must differ from src_index (no self-loop)", dst)
        w = cols["weight"].astype(float)
        _refuse(~(np.isfinite(w) & (w > 0)), name, "weight", "must be finite and > 0", w)
        s = cols["support"].astype(np.int64)
        _refuse(s < 0, name, "support", "must be >= 0", s)
        want_dir = np.array([DIRECTED[e] for e in EDGES])[np.maximum(code, 0)]
        _refuse(
            cols["directed"] != want_dir,
            name,
            "directed",
            "must be true for directed edge types only",
            cols["directed"],
        )
        key = (code * max(n_items, 1) + src) * max(n_items, 1) + dst
        order = np.argsort(key, kind="stable")
        dup = np.zeros(len(key), bool)
        dup[order[1:]] = key[order[1:]] == key[order[:-1]]
        _refuse(dup, name, "dst_index", "repeats an edge (same edge, src_index and dst_index)", dst)
        undirected = ~want_dir
        if undirected.any():
            back = (code * max(n_items, 1) + dst) * max(n_items, 1) + src
            at = np.searchsorted(key[order], back)
            found = at < len(key)
            found[found] = key[order][at[found]] == back[found]
            bad = undirected & ~found
            _refuse(bad, name, "dst_index", "is an undirected edge without its reverse row", dst)
            mirror = np.where(found, w[order][np.minimum(at, len(key) - 1)], np.nan)
            _refuse(undirected & (mirror != w), name, "weight", "differs from its undirected reverse row", w)
        if item_ids is not None:
            ids = np.asarray(item_ids, dtype=object)
            if ids.shape != (n_items,):
                raise ValidationError(f"item_ids must hold {n_items} ids, got shape {ids.shape}", "item_ids")
            for c, v in (("src_id", src), ("dst_id", dst)):
                got = np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=object)
                _refuse(got != ids[v], name, c, "does not match the item index's id", got)
        g = cls()
        g.n_items = int(n_items)
        g.item_ids = None if item_ids is None else np.asarray(item_ids, dtype=object)
        for k, e in enumerate(EDGES):
            m = code == k
            g._put(e, src[m], dst[m], w[m], s[m])
        return g

    def export(self, path, format: str = "parquet", *, item_ids=None) -> Path:
        """Write the edge table to ``path`` for graph tools: ``parquet`` (the table as stored in
        a build), ``csv`` (an edge list with a header, the same columns) or ``graphml`` (item
        ids as node ids; edge attributes edge, weight, support, directed)."""
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        if format not in FORMATS:
            raise ValidationError(f"format must be one of {', '.join(FORMATS)}, got {format!r}", "format")
        table = self.to_table(item_ids)
        path = Path(path)
        if format == "parquet":
            pq.write_table(table, path)
        elif format == "csv":
            pcsv.write_csv(table.set_column(4, "edge", table.column("edge").cast("string")), path)
        else:
            _write_graphml(table, self._ids(item_ids), path)
        return path


def fit_graph(
    events: Interactions,
    item_types,
    generator,
    *,
    brand=None,
    price=None,
    active=None,
    params: GraphParams | None = None,
) -> ProductGraph:
    """The product graph of a fitted :class:`CandidateGenerator` (its complement model,
    substitute table, co-purchase window and active mask; its pair signals, or, after loading
    from arrays, the same signals counted again from ``events``). ``active`` defaults to the
    generator's. See :meth:`ProductGraph.fit`."""
    if not getattr(generator, "fitted", False):
        raise ValidationError("the CandidateGenerator is not fitted; fit it before the graph", "generator")
    signals = generator.signals
    if signals is None:
        signals = _pair_signals(events, window_s=generator.window_s, max_pair_distance=generator.max_pair_distance)
    return ProductGraph(params).fit(
        events,
        item_types,
        complements=generator.complement_model,
        substitutes=generator.substitutes,
        signals=signals,
        window_s=generator.window_s,
        brand=brand,
        price=price,
        active=generator.active if active is None else active,
    )


def write_graph(writer, graph: ProductGraph, item_ids) -> None:
    """Add ``graph.parquet`` to a build being written (a ``BuildWriter``: anything with
    ``table(name, pyarrow_table)``)."""
    writer.table(GRAPH_FILE, graph.to_table(item_ids))


def read_graph(files, item_ids) -> ProductGraph:
    """The graph of an opened build (a ``BuildFiles``: anything with ``table(name)``), checked
    against the build's ``item_ids``."""
    ids = np.asarray(item_ids, dtype=object)
    return ProductGraph.from_table(files.table(GRAPH_FILE), len(ids), item_ids=ids)


# ---- helpers ----------------------------------------------------------------------------------
_E = np.empty(0, np.int64)
_F = np.empty(0)
_O = np.empty(0, object)
_KIND_NAMES = {"i": "integers", "fi": "numbers", "b": "booleans"}


def _refuse(bad: np.ndarray, name: str, column: str, rule: str, values) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        found = values[row].item() if isinstance(values[row], np.generic) else values[row]
        raise ValidationError(f"{name} column {column!r} {rule}, found {found!r} at row {row}", column)


def _positive(N, field: str) -> int:
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValidationError(f"{field} must be a positive integer, got {N!r}", field)
    return int(N)


def _mask(active, n: int) -> np.ndarray:
    if active is None:
        return np.ones(n, bool)
    a = np.asarray(active)
    if a.dtype != bool or a.shape != (n,):
        raise ValidationError(f"active must be a bool mask of shape ({n},), got {a.dtype} {a.shape}", "active")
    return a


def _int_labels(values, n: int, field: str) -> np.ndarray:
    v = np.asarray(values)
    if v.shape != (n,) or (n and v.dtype.kind not in "iu"):
        raise ValidationError(f"{field} must be {n} integer codes, got dtype {v.dtype} and shape {v.shape}", field)
    if n and v.min() < 0:
        raise ValidationError(f"{field} must be >= 0, found {v.min()}", field)
    return v.astype(np.int64)


def _floats(values, n: int, field: str) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    try:
        v = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValidationError(f"{field} must be numbers (NaN where unknown)", field) from None
    if v.shape != (n,):
        raise ValidationError(f"{field} must hold {n} values, got shape {v.shape}", field)
    return v


def _codes(labels, n: int, field: str) -> np.ndarray | None:
    """Integer codes of labels; -1 where empty or None."""
    if labels is None:
        return None
    v = np.asarray(labels, dtype=object)
    if v.shape != (n,):
        raise ValidationError(f"{field} must hold {n} labels, got shape {v.shape}", field)
    missing = (v == None) | (v != v)  # noqa: E711 (elementwise: None, or NaN)
    uniq, code = np.unique(np.where(missing, "", v).astype(str), return_inverse=True)
    code = code.astype(np.int64)
    if len(uniq) and uniq[0] == "":
        code = code - 1  # "" sorts first: it becomes -1
    return code


def _lookup(M: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``M[rows[i], cols[i]]`` for every i, as floats."""
    if len(rows) == 0:
        return np.empty(0)
    return np.asarray(M.tocsr()[rows, cols]).ravel().astype(float)


def _top_rows(W: sp.csr_matrix, items: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids (m, N), weights (m, N), positions (m, N))``: each item's N heaviest entries of
    ``W`` (ties by lower index), -1 / 0 padded; positions index ``W.data``."""
    m = len(items)
    ids = np.full((m, N), -1, dtype=np.int64)
    wts = np.zeros((m, N))
    pos = np.zeros((m, N), dtype=np.int64)
    starts = W.indptr[items].astype(np.int64)
    lens = W.indptr[items + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return ids, wts, pos
    row = np.repeat(np.arange(m), lens)
    at = np.arange(total) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
    cols, vals = W.indices[at], W.data[at]
    order = np.lexsort((cols, -vals, row))
    row, at = row[order], at[order]
    rank = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    keep = rank < N
    ids[row[keep], rank[keep]] = W.indices[at[keep]]
    wts[row[keep], rank[keep]] = W.data[at[keep]]
    pos[row[keep], rank[keep]] = at[keep]
    return ids, wts, pos


def _top_per_source(src: np.ndarray, w: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` heaviest entries per source (ties by lower destination)."""
    order = np.lexsort((dst, -w, src))
    s = src[order]
    first = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1] if len(s) else _E
    start = np.repeat(first, np.diff(np.r_[first, len(s)]))
    return np.sort(order[np.arange(len(s)) - start < n])


def _group_edges(codes: np.ndarray, pop: np.ndarray, active: np.ndarray, K: int):
    """Undirected edges within groups: each active item with a group (code >= 0) joins the
    ``K`` most bought other active items of its group (ties by lower index), both ways.
    Weight ``sqrt(q_a q_b)`` with ``q = (1 + pop) / (1 + the group's largest pop)``; support:
    the group's active items. Returns (rows, cols, weights, support)."""
    n = len(codes)
    members = np.flatnonzero((codes >= 0) & active)
    if len(members) == 0:
        return _E, _E, _F, _E
    g = codes[members]
    by = members[np.lexsort((members, -pop[members], g))]
    gs = codes[by]
    n_groups = int(codes.max()) + 1
    start = np.searchsorted(gs, np.arange(n_groups + 1))
    size = np.diff(start)
    lead = np.minimum(size, K + 1)  # the leaders: K others for every member, itself dropped
    lens = lead[codes[members]]
    src = np.repeat(members, lens)
    local = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    dst = by[np.repeat(start[codes[members]], lens) + local]
    keep = src != dst
    src, dst = src[keep], dst[keep]
    firsts = np.r_[0, np.flatnonzero(src[1:] != src[:-1]) + 1] if len(src) else _E
    rank = np.arange(len(src)) - np.repeat(firsts, np.diff(np.r_[firsts, len(src)]))
    src, dst = src[rank < K], dst[rank < K]
    key = distinct(np.r_[src * n + dst, dst * n + src])
    r, c = key // n, key % n
    top = np.zeros(n_groups)
    np.maximum.at(top, codes[members], pop[members].astype(float))
    q = (1.0 + pop) / (1.0 + top[np.maximum(codes, 0)])
    return r, c, np.sqrt(q[r] * q[c]), size[codes[r]]


def _later_purchases(events: Interactions, window_s: float, horizon_s: float, max_distance) -> sp.csr_matrix:
    """``(n, n)`` users who bought a, then b more than ``window_s`` and at most ``horizon_s``
    seconds later (each of a purchase's next ``max_distance`` purchases)."""
    p = events.of_kind(PURCHASE)
    if len(p):
        p = p.select(np.lexsort((np.arange(len(p)), p.ts, p.user)))
    position = np.arange(len(p), dtype=np.int64)
    i, j, _ = ordered_pairs(p.user, position, p.ts, window_s=horizon_s, max_distance=max_distance)
    late = p.ts[j] - p.ts[i] > window_s
    i, j = i[late], j[late]
    return _user_pair_counts(p.item[i], p.item[j], p.user[i], events.n_items)


def _write_graphml(table, ids: np.ndarray, path: Path) -> None:
    from xml.sax.saxutils import quoteattr

    cols = {c: table.column(c).to_pylist() for c in ("src_id", "dst_id", "edge", "weight", "support", "directed")}
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">',
        '<key id="edge" for="edge" attr.name="edge" attr.type="string"/>',
        '<key id="weight" for="edge" attr.name="weight" attr.type="double"/>',
        '<key id="support" for="edge" attr.name="support" attr.type="long"/>',
        '<key id="directed" for="edge" attr.name="directed" attr.type="boolean"/>',
        '<graph id="products" edgedefault="directed">',
    ]
    lines += [f"<node id={quoteattr(str(i))}/>" for i in ids.tolist()]
    for s, d, e, w, n, di in zip(*cols.values()):
        lines.append(
            f'<edge source={quoteattr(s)} target={quoteattr(d)}><data key="edge">{e}</data>'
            f'<data key="weight">{w!r}</data><data key="support">{n}</data>'
            f'<data key="directed">{"true" if di else "false"}</data></edge>'
        )
    lines += ["</graph>", "</graphml>", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
