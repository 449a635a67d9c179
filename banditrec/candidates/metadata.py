"""Cold start: item neighbours from metadata (hashed TF-IDF over titles and categorical fields,
plus standardised numeric attributes), for items that have no interactions yet.

Details: docs/candidates.md, "Metadata neighbours (`candidates/metadata.py`)".
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError
from ..validation import check_finite, check_int_range, check_positive_int
from .arrays import from_meta, meta_int, put_csr, take, take_csr
from .itemknn import run_chunks
from .keys import distinct, distinct_rows

TITLE = "title"
TITLE_DIGITS = "title_digits"
RESERVED_KEYS = (TITLE, TITLE_DIGITS)
DEFAULT_DIGIT_WEIGHT = 0.25

_TOKEN = re.compile(r"[^\W_]+")  # runs of letters and digits (Unicode), i.e. split on the rest
_DIGIT = re.compile(r"\d")
TEXT_EPS = 1e-12  # text dot products at most this large count as no shared column
FORMAT = "banditrec.MetadataIndex"
_CHUNK_ENTRIES = 2_000_000  # candidate pairs per sparse product chunk (about 50 MB of temporaries)


def tokenize(title: str) -> list[str]:
    """Lower-cased runs of letters and digits of ``title``, in order."""
    return _TOKEN.findall(title.lower())


def hash_tokens(
    tokens: Sequence[str], n_features: int, *, alternate_sign: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Columns and signs of ``tokens``: ``(columns (k,) int64, signs (k,) float64)``.

    ``h = int.from_bytes(blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")``;
    the column is ``h % n_features`` and the sign ``-1`` if bit 63 of ``h`` is set (``+1``
    for every token when ``alternate_sign`` is False). Call it on distinct tokens: it costs one
    blake2b per token.
    """
    n_features = check_positive_int(n_features, "n_features")
    digest = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in tokens)
    h = np.frombuffer(digest, dtype="<u8")
    columns = (h % np.uint64(n_features)).astype(np.int64)
    if alternate_sign:
        signs = np.where(h >> np.uint64(63), -1.0, 1.0)
    else:
        signs = np.ones(len(h))
    return columns, signs


def _check_weight(value, name: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValidationError(f"{name} must be a number, got {type(value).__name__} {value!r}", field)
    if not (math.isfinite(value) and value >= 0):
        raise ValidationError(f"{name} must be finite and >= 0, got {value!r}", field)
    return float(value)


def _field_labels(name: str, values, n: int) -> tuple[np.ndarray, list[str]]:
    """``(codes (n,) int64, labels)``: item i has label ``labels[codes[i]]``, or none if -1."""
    field = f"fields.{name}"
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"fields[{name!r}] must be a 1-D array of ints or strs: {exc}", field) from None
    if arr.ndim != 1:
        raise ValidationError(f"fields[{name!r}] must be 1-dimensional, got shape {arr.shape}", field)
    if len(arr) != n:
        raise ValidationError(f"titles and fields[{name!r}] must have the same length, got {n} and {len(arr)}", field)
    if arr.dtype.kind in "iu":
        uniq, codes = np.unique(arr, return_inverse=True)
        return codes.astype(np.int64), [str(v) for v in uniq.tolist()]
    if arr.dtype.kind == "O":
        for i, v in enumerate(arr.tolist()):  # ints, strs or None (missing) only
            if not (v is None or isinstance(v, str) or (isinstance(v, (int, np.integer)) and not isinstance(v, bool))):
                raise ValidationError(
                    f"fields[{name!r}] must hold ints or strs, found {type(v).__name__} {v!r} at index {i}", field
                )
        arr = np.array(["" if v is None else str(v) for v in arr.tolist()], dtype=str)
    if arr.dtype.kind != "U":
        first = arr[0].item() if len(arr) else None
        raise ValidationError(
            f"fields[{name!r}] must hold ints or strs, got dtype {arr.dtype} (first value {first!r})", field
        )
    uniq, codes = np.unique(arr, return_inverse=True)
    codes = codes.astype(np.int64)
    labels = uniq.tolist()
    if labels and labels[0] == "":  # the empty string sorts first: a missing value, no token
        codes -= 1
        labels = labels[1:]
    return codes, labels


class MetadataIndex:
    """Item neighbours from metadata, for items without interactions (cold start).

    Parameters
    ----------
    n_features : int
        Hashed text columns (default ``2**18``); collisions are rare while the number of
        distinct tokens is well below it.
    field_weights : mapping str -> float, optional
        Weight ``w`` of each token source (docs/candidates.md, "Metadata neighbours"):
        ``"title"`` (title words,
        default 1), ``"title_digits"`` (title words containing a digit such as model numbers,
        default 0.25: a shared model number is rare, hence heavily idf-weighted, yet says
        little), and each name in ``fields`` (default 1). Weights are >= 0; 0 drops the source.
    numeric_weight : float
        Weight of the standardised numeric block against the unit-norm text block (default
        0.3, so a similar price matters a little). 0 ignores ``numeric``.
    n_neighbors : int
        Neighbours per row of :meth:`neighbour_table`.
    log_numeric : bool or sequence of bool, keyword-only
        Log-transform numeric columns before standardising. ``True`` (default): every column
        whose values are all > 0 (columns with a value <= 0 stay linear); ``False``: none; a
        sequence of ``p`` bools: exactly those columns, which must then be all > 0.
    alternate_sign : bool, keyword-only
        Signed hashing (default True) or plain counts; see :func:`hash_tokens`.

    Attributes
    ----------
    vectors : scipy.sparse.csr_matrix (n_items, n_features + p)
        Unit rows ``v_i`` (zero rows for items with no token and no numeric information).
    idf : ndarray (n_features,)
        ``log((1 + n) / (1 + df_j)) + 1`` per hashed column.
    """

    def __init__(
        self,
        n_features: int = 2**18,
        field_weights: Mapping[str, float] | None = None,
        numeric_weight: float = 0.3,
        n_neighbors: int = 50,
        *,
        log_numeric=True,
        alternate_sign: bool = True,
    ):
        self.n_features = check_positive_int(n_features, "n_features")
        if self.n_features > 2**31 - 1:
            raise ValidationError(f"n_features must be < 2**31, got {n_features}", "n_features")
        if field_weights is not None and not isinstance(field_weights, Mapping):
            raise ValidationError(
                f"field_weights must be a mapping of field name to weight, got {type(field_weights).__name__}",
                "field_weights",
            )
        self.field_weights = {
            str(k): _check_weight(v, f"field_weights[{k!r}]", "field_weights") for k, v in (field_weights or {}).items()
        }
        self.numeric_weight = _check_weight(numeric_weight, "numeric_weight", "numeric_weight")
        self.n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
        if not isinstance(log_numeric, bool):
            log_numeric = [bool(b) for b in log_numeric]
        self.log_numeric = log_numeric
        self.alternate_sign = bool(alternate_sign)
        self.vectors: sp.csr_matrix | None = None
        self.idf: np.ndarray | None = None
        self._text: sp.csr_matrix | None = None
        self._num: np.ndarray | None = None

    @property
    def params(self) -> dict:
        return {
            "n_features": self.n_features,
            "field_weights": dict(self.field_weights),
            "numeric_weight": self.numeric_weight,
            "n_neighbors": self.n_neighbors,
            "log_numeric": self.log_numeric,
            "alternate_sign": self.alternate_sign,
        }

    # ------------------------------------------------------------------ fitting

    def fit(self, titles: Sequence[str], fields: Mapping[str, object] | None = None, numeric=None) -> MetadataIndex:
        """Build the item vectors.

        Parameters
        ----------
        titles : sequence of str (n,)
            One title per item (may be empty).
        fields : mapping str -> array-like (n,) of int or str, optional
            Categorical fields, e.g. ``{"brand": brand, "category": category, "type": ptype}``;
            ``None`` or ``""`` in an object/str array means missing (no token).
        numeric : array-like (n, p) or (n,), optional
            Finite numeric attributes, e.g. ``np.c_[price, margin]``.

        Returns
        -------
        self
        """
        titles = self._check_titles(titles)
        n = len(titles)
        fields = {} if fields is None else fields
        if not isinstance(fields, Mapping):
            raise ValidationError(
                f"fields must be a mapping of field name to values, got {type(fields).__name__}", "fields"
            )
        for name in fields:
            if not isinstance(name, str) or not name:
                raise ValidationError(f"field names must be non-empty strs, got {name!r}", "fields")
            if name in RESERVED_KEYS:
                raise ValidationError(f"field name {name!r} is reserved for title words; rename the field", "fields")
        unknown = sorted(set(self.field_weights) - set(fields) - set(RESERVED_KEYS))
        if unknown:
            raise ValidationError(
                f"field_weights names {unknown[0]!r}, which is neither a field "
                f"({', '.join(map(repr, fields)) or 'none given'}) nor one of "
                f"{', '.join(map(repr, RESERVED_KEYS))}",
                "field_weights",
            )
        num = self._check_numeric(numeric, n)

        # title tokens: a dict of distinct tokens, then one id per occurrence
        per_item = [_TOKEN.findall(t.lower()) for t in titles]
        lengths = np.fromiter(map(len, per_item), dtype=np.int64, count=n)
        flat = list(itertools.chain.from_iterable(per_item))
        vocab = list(dict.fromkeys(flat))
        index = dict(zip(vocab, range(len(vocab))))
        tok = np.fromiter(map(index.__getitem__, flat), dtype=np.int64, count=len(flat))
        item = np.repeat(np.arange(n, dtype=np.int64), lengths)
        w_title = self.field_weights.get(TITLE, 1.0)
        w_digit = self.field_weights.get(TITLE_DIGITS, DEFAULT_DIGIT_WEIGHT)
        weight = [w_digit if _DIGIT.search(t) else w_title for t in vocab]
        items, toks = [item], [tok]
        for name, values in fields.items():
            codes, labels = _field_labels(name, values, n)
            has = codes >= 0
            items.append(np.flatnonzero(has))
            toks.append(codes[has] + len(vocab))
            vocab.extend(f"{name}={v}" for v in labels)
            weight.extend([self.field_weights.get(name, 1.0)] * len(labels))
        item, tok = np.concatenate(items), np.concatenate(toks)
        columns, signs = hash_tokens(vocab, self.n_features, alternate_sign=self.alternate_sign)
        value_of = signs * np.asarray(weight, dtype=np.float64)

        # sublinear tf per distinct (item, token); tokens colliding in one column add up
        V = max(len(vocab), 1)
        key, count = np.unique(item * V + tok, return_counts=True)  # sort-based (counts asked)
        item, tok = key // V, key % V
        X = sp.csr_matrix((value_of[tok] * (1.0 + np.log(count)), (item, columns[tok])), shape=(n, self.n_features))
        X.sum_duplicates()
        X.eliminate_zeros()
        df = np.bincount(X.indices, minlength=self.n_features)
        self.idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
        X.data *= self.idf[X.indices]
        text_sq = np.asarray(X.multiply(X).sum(axis=1)).ravel()
        tn = np.sqrt(text_sq)
        inv = np.divide(1.0, tn, out=np.zeros_like(tn), where=tn > 0)
        has_text = tn > 0

        if num is not None and self.numeric_weight > 0:
            u = self.numeric_weight * self._standardised(num) / math.sqrt(num.shape[1])
            row_norm = np.sqrt(has_text + (u * u).sum(axis=1))
            scale = np.divide(1.0, row_norm, out=np.zeros_like(row_norm), where=row_norm > 0)
            self._num = u * scale[:, None]
            text_scale = inv * scale
        else:
            self._num = None
            text_scale = inv
        self._text = (sp.diags(text_scale) @ X).tocsr()
        self._text.eliminate_zeros()
        p = 0 if num is None else num.shape[1]
        blocks = [self._text]
        if p:
            blocks.append(sp.csr_matrix(self._num if self._num is not None else np.zeros((n, p))))
        self.vectors = sp.hstack(blocks, format="csr") if p else self._text
        self.vectors.eliminate_zeros()
        return self

    @staticmethod
    def _check_titles(titles) -> list:
        if isinstance(titles, (str, bytes)) or not hasattr(titles, "__iter__"):
            raise ValidationError(f"titles must be a sequence of str, got {type(titles).__name__}", "titles")
        titles = list(titles)
        for i, t in enumerate(titles):
            if not isinstance(t, str):
                raise ValidationError(f"titles must hold strs, found {type(t).__name__} {t!r} at index {i}", "titles")
        return titles

    def _check_numeric(self, numeric, n: int) -> np.ndarray | None:
        if numeric is None:
            return None
        try:
            num = np.array(numeric, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"numeric must be an (n, p) array of numbers: {exc}", "numeric") from None
        if num.ndim == 1:
            num = num[:, None]
        if num.ndim != 2:
            raise ValidationError(f"numeric must be 2-dimensional (n, p), got shape {num.shape}", "numeric")
        if len(num) != n:
            raise ValidationError(f"titles and numeric must have the same length, got {n} and {len(num)}", "numeric")
        check_finite(num, "numeric")
        if not isinstance(self.log_numeric, bool) and len(self.log_numeric) != num.shape[1]:
            raise ValidationError(
                f"log_numeric must have one bool per numeric column ({num.shape[1]}), got {len(self.log_numeric)}",
                "log_numeric",
            )
        return num

    def _standardised(self, num: np.ndarray) -> np.ndarray:
        """``z (n, p)``: log where asked, then zero mean and unit variance per column."""
        num = num.copy()
        positive = (num > 0).all(axis=0)
        if isinstance(self.log_numeric, bool):
            take_log = positive if self.log_numeric else np.zeros(num.shape[1], dtype=bool)
        else:
            take_log = np.asarray(self.log_numeric, dtype=bool)
            bad = take_log & ~positive
            if bad.any():
                k = int(np.argmax(bad))
                i = int(np.argmax(num[:, k] <= 0))
                raise ValidationError(
                    f"log_numeric asks for log of numeric column {k}, which holds "
                    f"{float(num[i, k])!r} at row {i}; log needs values > 0",
                    "numeric",
                )
        num[:, take_log] = np.log(num[:, take_log])
        sd = num.std(axis=0)
        z = num - num.mean(axis=0)
        return np.divide(z, sd, out=np.zeros_like(z), where=sd > 0)

    # ------------------------------------------------------------------ saving

    def to_arrays(self) -> tuple[dict, dict]:
        """``(arrays, meta)`` (see :mod:`banditrec.candidates.arrays`)."""
        self._check_fitted()
        out = {"idf": self.idf}
        put_csr(out, "text", self._text)
        if self._num is not None:
            out["num"] = self._num
        assert self.vectors is not None
        meta = {
            "format": FORMAT,
            "version": 1,
            "n_items": int(self.vectors.shape[0]),
            "n_numeric": int(self.vectors.shape[1] - self.n_features),
            "params": self.params,
        }
        return out, meta

    @classmethod
    def from_arrays(cls, arrays, meta) -> MetadataIndex:
        idx, meta = from_meta(cls, meta, FORMAT)
        n, p = meta_int(meta, "n_items"), meta_int(meta, "n_numeric")
        idx.idf = take(arrays, "idf", "f", (idx.n_features,))
        idx._text = take_csr(arrays, "text", (n, idx.n_features))
        idx._num = take(arrays, "num", "f", (n, p)) if "num" in arrays else None
        if idx._num is not None and p == 0:
            raise ValidationError("array 'num' is given but metadata says n_numeric is 0", "meta.n_numeric")
        if p:
            block = sp.csr_matrix(idx._num if idx._num is not None else np.zeros((n, p)))
            idx.vectors = sp.hstack([idx._text, block], format="csr")
            idx.vectors.eliminate_zeros()
        else:
            idx.vectors = idx._text
        return idx

    # ------------------------------------------------------------------ queries

    @property
    def n_items(self) -> int:
        self._check_fitted()
        assert self.vectors is not None
        return self.vectors.shape[0]

    def _check_fitted(self):
        if self.vectors is None:
            raise ValidationError("MetadataIndex is not fitted; call fit(titles, fields, numeric) first", "model")

    def _check_among(self, among) -> np.ndarray:
        n = self.n_items
        if among is None:
            return np.arange(n)
        mask = np.asarray(among)
        if mask.ndim != 1 or mask.dtype != bool:
            raise ValidationError(
                f"among must be a boolean mask of shape ({n},), got dtype {mask.dtype} and shape {mask.shape}", "among"
            )
        if len(mask) != n:
            raise ValidationError(f"among must have one entry per item ({n}), got {len(mask)}", "among")
        return np.flatnonzero(mask)

    def similar_items(self, item_ids, N: int = 10, among=None) -> tuple[np.ndarray, np.ndarray]:
        """Metadata neighbours of each item, best first.

        Parameters
        ----------
        item_ids : int or array-like (m,) of int
            Items to look up (a scalar counts as a batch of one).
        N : int >= 1
            Neighbours per item.
        among : ndarray (n_items,) of bool, optional
            Items that may be returned (e.g. only warm items); default all.

        Returns
        -------
        ids : ndarray (m, N) int64
            Neighbours by decreasing cosine, ties by lower index; the item itself never
            appears; -1 where fewer than ``N`` allowed items share a token and have a positive
            cosine.
        scores : ndarray (m, N) float64
            Their cosines ``v_i . v_j``, rounded to 12 decimals (so that equal cosines tie
            exactly); 0 where padded.
        """
        self._check_fitted()
        N = check_positive_int(N, "N")
        items = np.atleast_1d(np.asarray(item_ids))
        if items.ndim != 1:
            raise ValidationError(f"item_ids must be an int or a 1-D array, got shape {items.shape}", "item_ids")
        check_int_range(items, "item_ids", 0, self.n_items)
        return self._top_n(items.astype(np.int64), self._check_among(among), N)

    def neighbour_table(self, rows=None, among=None, *, num_threads: int | None = None, progress=None) -> sp.csr_matrix:
        """Top-``n_neighbors`` neighbours as a ``csr_matrix (n_items, n_items)``.

        Row ``i`` holds the cosines of :meth:`similar_items` for ``i`` at their columns (for
        merging into a CF neighbour table); rows not in ``rows`` (default: all items) are empty.
        Chunks of rows run on ``num_threads`` threads (default 1); ``progress(done, total)`` is
        called after each chunk.
        """
        self._check_fitted()
        n = self.n_items
        rows = np.arange(n) if rows is None else np.atleast_1d(np.asarray(rows))
        if rows.ndim != 1:
            raise ValidationError(f"rows must be a 1-D array of item indices, got shape {rows.shape}", "rows")
        check_int_range(rows, "rows", 0, n)
        rows = np.unique(rows.astype(np.int64))
        allowed = self._check_among(among)
        counts = np.zeros(n, dtype=np.int64)
        parts = []
        for sel, ids, scores in self._chunks(
            rows, allowed, self.n_neighbors, threads=num_threads or 1, progress=progress
        ):
            keep = ids >= 0  # each row's neighbours come first, best first
            counts[rows[sel]] = keep.sum(axis=1)
            parts.append((rows[sel], ids[keep].astype(np.int32), scores[keep]))
        indptr = np.r_[0, np.cumsum(counts)]
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        data = np.empty(int(indptr[-1]))
        for r, ids, scores in parts:  # rows are placed one chunk at a time: no COO sort of the whole table
            k = counts[r]
            at = np.repeat(indptr[r], k) + np.arange(len(ids)) - np.repeat(np.cumsum(k) - k, k)
            indices[at], data[at] = ids, scores
        return sp.csr_matrix((data, indices, indptr), shape=(n, n))

    def _top_n(self, rows: np.ndarray, allowed: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (m, N), scores (m, N))``: the top-``N`` allowed neighbours of ``rows``."""
        m = len(rows)
        ids = np.full((m, N), -1, dtype=np.int64)
        scores = np.zeros((m, N))
        for sel, bid, bscore in self._chunks(rows, allowed, N):
            ids[sel], scores[sel] = bid, bscore
        return ids, scores

    def _chunks(self, rows: np.ndarray, allowed: np.ndarray, N: int, *, threads: int = 1, progress=None):
        """``(positions in rows, ids, scores)`` of the top-``N`` allowed neighbours, a chunk of
        rows at a time (on ``threads`` threads, in order).

        A hashed column held by many allowed items (a product type's words, a big brand) makes
        every query holding it a candidate of all of them: pairs quadratic in the column's
        size. Queries holding such heavy columns are grouped by the set they hold; a group's
        scores through them are a product of low rank (the columns plus the numeric block), so
        its candidates are kept in leaves of nearby vectors whose bounding boxes bound a
        query's best score in a leaf: only the leaves that can beat the query's N-th best are
        scored (:class:`_Group`, :meth:`_Context.pruned`). The light columns (rare tokens:
        brand, model words) are a sparse product. Both give the same neighbours as one sparse
        product up to the last bits of the sums, which the 12-decimal rounding of scores
        absorbs.
        """
        if len(rows) == 0 or len(allowed) == 0:
            return
        ctx = _Context(self, rows, allowed, N)
        tasks = ctx.tasks()

        def run(i: int, _hi: int):
            sel, block = tasks[i]
            return (sel,) + block()

        yield from run_chunks(run, [(i, i + 1) for i in range(len(tasks))], threads, progress)


_HEAVY = 32  # a column held by more allowed items is scored through bounds (see _top_n)
_LEAF = 64  # candidates per leaf of a group's bounding boxes
_QUERY_BLOCK = 256  # queries scored together
_SMALL_GROUP = 262_144  # query x candidate pairs of a group scored without bounds
_MARGIN = 1e-9  # added to the leaves' bounds: covers rounding to 12 decimals and summation order


def heavy_threshold(n_allowed: int) -> int:
    """Allowed holders beyond which a column is heavy (scored through bounds, not the sparse
    product): ``max(_HEAVY, sqrt(n_allowed))``."""
    return max(_HEAVY, math.isqrt(n_allowed))


def _kd_order(X: np.ndarray, leaf: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: a permutation of the rows of ``X`` that puts nearby rows together
    (each node split at the median of its widest dimension) and the start of each leaf of at
    most ``leaf`` rows (with the end appended)."""
    m = len(X)
    order = np.arange(m)
    todo, starts = [(0, m)], []
    while todo:
        lo, hi = todo.pop()
        if hi - lo <= leaf:
            starts.append(lo)
            continue
        sub = X[order[lo:hi]]
        d = int(np.argmax(sub.max(axis=0) - sub.min(axis=0))) if X.shape[1] else 0
        mid = (hi - lo) // 2
        if X.shape[1]:
            order[lo:hi] = order[lo:hi][np.argpartition(sub[:, d], mid)]
        todo += [(lo, lo + mid), (lo + mid, hi)]
    return order, np.array(sorted(starts) + [m], dtype=np.int64)


class _Group:
    """Queries scored against the allowed items through shared heavy columns ``cols``.

    Their scores against the candidates ``C`` (allowed items holding any of ``cols``) are
    ``W @ F.T`` plus each query's contributions of its other columns (sparse): ``W`` holds the
    queries' values on ``cols`` then their numeric block, ``F`` the candidates'. Candidates
    are ordered in leaves of nearby ``F`` rows, each with its bounding box, so that a query's
    best score in a leaf is bounded without scoring it.
    """

    def __init__(self, ctx: _Context, members: np.ndarray, cols: np.ndarray):
        At = ctx.At
        posting = [At.indices[At.indptr[c] : At.indptr[c + 1]] for c in cols.tolist()]
        C = distinct(np.concatenate(posting)).astype(np.int64)
        k = len(cols)
        p = 0 if ctx.num_a is None else ctx.num_a.shape[1]
        F = np.zeros((len(C), k + p))
        for j, c in enumerate(cols.tolist()):
            F[np.searchsorted(C, posting[j]), j] = At.data[At.indptr[c] : At.indptr[c + 1]]
        if p:
            assert ctx.num_a is not None  # p > 0
            F[:, k:] = ctx.num_a[C]
        if len(members) * len(C) <= _SMALL_GROUP:  # score every candidate, no bounds
            order, self.leaf_start = np.arange(len(C)), np.array([0, len(C)], dtype=np.int64)
        else:
            order, self.leaf_start = _kd_order(F, _LEAF)
        self.C, self.F, self.k = C[order], F[order], k  # in leaf order
        self.where = np.empty(len(C), dtype=np.int64)  # sorted position in C -> place in leaf order
        self.where[order] = np.arange(len(C))
        self.C_sorted = C
        bounds = self.leaf_start[:-1]
        self.lo = np.minimum.reduceat(self.F, bounds, axis=0) if len(C) else np.zeros((0, k + p))
        self.hi = np.maximum.reduceat(self.F, bounds, axis=0) if len(C) else np.zeros((0, k + p))
        self.leaf_size = np.diff(self.leaf_start)
        Qg = ctx.Q[members]
        W = np.zeros((len(members), k + p))
        W[:, :k] = Qg[:, cols].toarray()
        if p:
            assert ctx.num_q is not None  # p > 0
            W[:, k:] = ctx.num_q[members]
        qorder, _ = _kd_order(W, _QUERY_BLOCK)  # similar queries together, so that a block's leaves are few
        self.members, self.W = members[qorder], W[qorder]
        rest = ctx.Q[self.members]  # the queries' other (light) columns, in the same order
        rest.data[np.isin(rest.indices, cols)] = 0.0
        rest.eliminate_zeros()
        self.rest = rest


class _Context:
    """What the chunks of one :meth:`MetadataIndex._top_n` call share."""

    def __init__(self, index: MetadataIndex, rows: np.ndarray, allowed: np.ndarray, N: int):
        self.allowed, self.N = allowed, N
        assert index._text is not None  # the index is fitted (its caller checks)
        self.At = index._text[allowed].T.tocsr()  # (n_features, k): each column's allowed items
        self.Q = index._text[rows]  # (m, n_features)
        self.num_q: np.ndarray | None = None
        self.num_a: np.ndarray | None = None
        if index._num is not None:
            self.num_q, self.num_a = index._num[rows], index._num[allowed]
        at = np.minimum(np.searchsorted(allowed, rows), len(allowed) - 1)
        self.self_pos = np.where(allowed[at] == rows, at, -1)  # each query's own position among the allowed
        self.df = np.diff(self.At.indptr)

    def tasks(self) -> list:
        """``[(row positions, thunk returning (ids, scores) for them)]``.

        A column is heavy when more than :func:`heavy_threshold` allowed items hold it.
        Queries holding heavy columns are grouped by the exact set they hold and scored through
        it (:class:`_Group`), their light columns through the sparse product; queries without a
        heavy column take the sparse product alone.
        """
        Q = self.Q
        m = Q.shape[0]
        row_of = np.repeat(np.arange(m), np.diff(Q.indptr))
        heavy = self.df[Q.indices] > heavy_threshold(len(self.allowed))
        h_rows, h_cols = row_of[heavy], Q.indices[heavy].astype(np.int64)
        n_h = np.bincount(h_rows, minlength=m)
        tasks: list[tuple[np.ndarray, Callable[..., Any]]] = []
        if len(h_rows):
            # one key per set of heavy columns: the rows' padded, sorted column lists
            pad = np.full((m, int(n_h.max())), -1, dtype=np.int64)
            pad[h_rows, np.arange(len(h_rows)) - np.repeat(np.cumsum(n_h) - n_h, n_h)] = h_cols
            has = np.flatnonzero(n_h)
            sig, group = distinct_rows(pad[has])
            order = np.argsort(group, kind="stable")
            bounds = np.searchsorted(group[order], np.arange(len(sig) + 1))
            for g in range(len(sig)):
                grp = _Group(self, has[order[bounds[g] : bounds[g + 1]]], sig[g][sig[g] >= 0])
                for lo in range(0, len(grp.members), _QUERY_BLOCK):
                    span = slice(lo, lo + _QUERY_BLOCK)
                    tasks.append((grp.members[span], lambda grp=grp, span=span: self.pruned(grp, span)))
        sparse = np.flatnonzero(n_h == 0)
        if len(sparse):
            # candidate pairs per query row (an upper bound: the column counts of its tokens), to cut chunks
            Qs = Q[sparse]
            pattern = sp.csr_matrix((np.ones(Qs.nnz), Qs.indices, Qs.indptr), shape=Qs.shape)
            cum = np.cumsum(pattern @ self.df.astype(np.float64))
            lo = 0
            while lo < len(sparse):
                base = cum[lo - 1] if lo else 0.0
                hi = max(lo + 1, int(np.searchsorted(cum, base + _CHUNK_ENTRIES, side="right")))
                sel = sparse[lo:hi]
                tasks.append((sel, lambda sel=sel: self.sparse(sel)))
                lo = hi
        return tasks

    def pruned(self, g: _Group, span: slice):
        """Top-``N`` of the group's queries ``span``: the sparse part of every query, then the
        leaves of the group's candidates in two rounds: for each query the leaves with the
        best bounds until they hold ``2 N + 8`` candidates, which gives a lower bound on its
        N-th best score; then every other leaf whose bound reaches it. A leaf never scored
        cannot hold a candidate above the N-th best."""
        sel = g.members[span]
        W = g.W[span]
        b, L = len(sel), len(g.leaf_size)
        # the other columns: (row, allowed position, text dot)
        S = (g.rest[span] @ self.At).tocsr()
        lr = np.repeat(np.arange(b, dtype=np.int64), np.diff(S.indptr))
        lc = S.indices.astype(np.int64)
        ltext = S.data
        at = np.minimum(np.searchsorted(g.C_sorted, lc), max(len(g.C_sorted) - 1, 0))
        inside = (g.C_sorted[at] == lc) if len(g.C_sorted) else np.zeros(len(lc), bool)
        lplace = np.where(inside, g.where[at] if len(g.C_sorted) else 0, -1)  # place in leaf order, or -1
        ub = np.full((b, L), _MARGIN)
        for d in range(g.F.shape[1]):
            ub += np.maximum(np.multiply.outer(W[:, d], g.lo[:, d]), np.multiply.outer(W[:, d], g.hi[:, d]))
        # round 1: each query's best leaves until they hold enough candidates
        o = np.argsort(-ub, axis=1, kind="stable")
        size = g.leaf_size[o]
        before = np.cumsum(size, axis=1) - size
        first = np.zeros((b, L), dtype=bool)
        np.put_along_axis(first, o, before < 2 * self.N + 8, axis=1)
        round1 = np.flatnonzero(first.any(axis=0))
        v1, cols1 = self._leaves(g, sel, W, round1, lr, lplace, ltext)
        kth = np.full(b, -np.inf)
        if v1.shape[1] >= self.N:
            kth = np.partition(v1, v1.shape[1] - self.N, axis=1)[:, v1.shape[1] - self.N]
        # round 2: every other leaf some query's bound says may beat its N-th best so far
        more = (ub >= kth[:, None]).any(axis=0)
        more[round1] = False  # type: ignore[index]  # numpy's stub: any(axis=0) of a 2-D array may be a scalar
        round2 = np.flatnonzero(more)
        v2, cols2 = self._leaves(g, sel, W, round2, lr, lplace, ltext)
        v = np.hstack([v1, v2])
        cols = np.r_[cols1, cols2]
        # each row's entries at or above its N-th best score (ties all kept: _select orders them)
        if v.shape[1] > self.N:
            kth = np.partition(v, v.shape[1] - self.N, axis=1)[:, v.shape[1] - self.N]
            br, bc = np.nonzero((v >= kth[:, None]) & (v > -np.inf))
        else:
            kth = np.full(b, -np.inf)
            br, bc = np.nonzero(v > -np.inf)
        scored = np.zeros(len(g.C), dtype=bool)
        scored[cols] = True
        # pairs of the other columns not scored above: their full score, one pair at a time
        out = (lplace < 0) | ~scored[np.maximum(lplace, 0)]
        r, c, place = lr[out], lc[out], lplace[out]
        text = ltext[out].copy()
        shared = np.flatnonzero(place >= 0)  # also holds some of the group's columns
        for d in range(g.k):
            text[shared] += W[r[shared], d] * g.F[place[shared], d]
        lv = text.copy()
        if self.num_q is not None:
            assert self.num_a is not None  # both or neither
            nq = self.num_q[sel]
            for j in range(nq.shape[1]):
                lv += nq[r, j] * self.num_a[c, j]
        r, c, lv = self._valid(sel, r, c, text, lv)
        keep = lv >= kth[r]  # below a row's N-th best block score: never among its N best
        r, c, lv = r[keep], c[keep], lv[keep]
        return self._select(np.r_[br, r], np.r_[g.C[cols[bc]], c], np.r_[v[br, bc], lv], b)

    def _leaves(self, g: _Group, sel, W, leaves, lr, lplace, ltext):
        """Rounded scores ``(b, k)`` of the queries against the candidates of ``leaves`` (-inf
        where no neighbour), and those candidates' places in leaf order."""
        if len(leaves) == 0:
            return np.zeros((len(sel), 0)), np.empty(0, dtype=np.int64)
        lens = g.leaf_size[leaves]
        cols = np.arange(int(lens.sum())) + np.repeat(g.leaf_start[leaves] - (np.cumsum(lens) - lens), lens)
        Fc = g.F[cols]
        text = np.multiply.outer(W[:, 0], Fc[:, 0]) if g.k else np.zeros((len(sel), len(cols)))
        tmp = np.empty_like(text)
        for d in range(1, g.k):
            text += np.multiply.outer(W[:, d], Fc[:, d], out=tmp)
        where = np.full(len(g.C), -1, dtype=np.int64)
        where[cols] = np.arange(len(cols))
        pos = np.where(lplace >= 0, where[np.maximum(lplace, 0)], -1)
        hit = pos >= 0
        text[lr[hit], pos[hit]] += ltext[hit]
        v = text.copy()
        for d in range(g.k, g.F.shape[1]):
            v += np.multiply.outer(W[:, d], Fc[:, d], out=tmp)
        bad = np.abs(text, out=tmp) <= TEXT_EPS
        bad |= v <= 5e-13
        mine = self.self_pos[sel]  # a query among the candidates is no neighbour of itself
        at = np.minimum(np.searchsorted(g.C_sorted, mine), len(g.C_sorted) - 1)
        col = np.where(g.C_sorted[at] == mine, where[g.where[at]], -1)
        bad[np.flatnonzero(col >= 0), col[col >= 0]] = True
        v[bad] = -np.inf
        np.round(v, 12, out=v)
        return v, cols

    def _light(self, sel: np.ndarray, At: sp.csr_matrix):
        """Entries ``(row, position, text dot, score)`` of the sparse product of rows ``sel``."""
        S = (self.Q[sel] @ At).tocsr()  # text dot products, stored where the rows share a hashed column
        r = np.repeat(np.arange(len(sel), dtype=np.int64), np.diff(S.indptr))
        c = S.indices.astype(np.int64)
        v = S.data.copy()
        if self.num_q is not None:
            assert self.num_a is not None  # both or neither
            nq, na = self.num_q[sel], self.num_a
            for k in range(nq.shape[1]):  # p small: one gather per column beats an (nnz, p) einsum
                v += nq[r, k] * na[c, k]
        return r, c, S.data, v

    def _valid(self, sel, r, c, text, v):
        # |text dot| <= TEXT_EPS: a signed collision cancelled the shared column, no overlap.
        # Cosines equal in exact arithmetic can differ in the last bits (rows summed in another
        # order); 12 decimals make them tie, so that ties go to the lower index as documented.
        keep = (np.abs(text) > TEXT_EPS) & (v > 5e-13) & (c != self.self_pos[sel][r])
        return r[keep], c[keep], np.round(v[keep], 12)

    def sparse(self, sel: np.ndarray):
        """Top-``N`` of rows ``sel`` from one sparse product against every allowed item."""
        r, c, text, v = self._light(sel, self.At)
        r, c, v = self._valid(sel, r, c, text, v)
        return self._select(r, c, v, len(sel))

    def _select(self, r: np.ndarray, c: np.ndarray, v: np.ndarray, m: int):
        """``(ids (m, N), scores (m, N))`` from candidate entries (row, position, score): each
        row's ``N`` best by decreasing score, then lower position."""
        N = self.N
        ids = np.full((m, N), -1, dtype=np.int64)
        scores = np.zeros((m, N))
        if len(r) and (np.diff(r) < 0).any():  # each row's entries together
            o = np.argsort(r, kind="stable")
            r, c, v = r[o], c[o], v[o]
        counts = np.bincount(r, minlength=m)
        width = int(counts.max(initial=0))
        if m * width > 4 * len(r) + 1024 or width > 8 * N:  # long or uneven rows: cut at the N-th best first
            sel = v >= _row_kth(v, counts, N, _CHUNK_ENTRIES)[r]
            r, c, v = r[sel], c[sel], v[sel]
            counts = np.bincount(r, minlength=m)
            width = int(counts.max(initial=0))
        if width == 0:
            return ids, scores
        place = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
        if m * width <= 4 * len(r) + 1024:  # rows of like length: sort them side by side
            C = np.full((m, width), np.iinfo(np.int64).max)
            V = np.full((m, width), -np.inf)
            C[r, place], V[r, place] = c, v
            o = np.argsort(C, axis=1, kind="stable")  # lower position first, then by score (stable)
            C, V = np.take_along_axis(C, o, axis=1), np.take_along_axis(V, o, axis=1)
            o = np.argsort(-V, axis=1, kind="stable")[:, :N]
            C, V = np.take_along_axis(C, o, axis=1), np.take_along_axis(V, o, axis=1)
            ok = V > -np.inf
            k = C.shape[1]
            ids[:, :k][ok] = self.allowed[C[ok]]
            scores[:, :k][ok] = V[ok]
            return ids, scores
        order = np.lexsort((c, -v, r))  # by row, then decreasing score, then lower position
        r, c, v = r[order], c[order], v[order]
        top = place < N  # place depends on the row only
        ids[r[top], place[top]] = self.allowed[c[top]]
        scores[r[top], place[top]] = v[top]
        return ids, scores


def _row_kth(v: np.ndarray, counts: np.ndarray, N: int, budget: int = _CHUNK_ENTRIES) -> np.ndarray:
    """The ``N``-th largest of each row's values (``-inf`` for rows with at most ``N``).

    ``v`` holds the rows' values one row after another, ``counts (m,)`` their numbers. Rows are
    taken by increasing count in blocks whose padded size (rows x longest row) stays within
    ``budget`` (a single longer row is its own block), so skewed rows never pad a whole chunk.
    """
    kth = np.full(len(counts), -np.inf)
    starts = np.cumsum(counts) - counts
    heavy = np.flatnonzero(counts > N)
    heavy = heavy[np.argsort(counts[heavy], kind="stable")]
    i = 0
    while i < len(heavy):
        c = counts[heavy[i:]]
        j = i + max(1, int(np.searchsorted(np.arange(1, len(c) + 1) * c, budget, side="right")))
        g = heavy[i:j]
        cg = counts[g]
        pos = np.arange(cg.sum()) - np.repeat(np.cumsum(cg) - cg, cg)
        P = np.full((len(g), int(cg[-1])), np.inf)
        P[np.repeat(np.arange(len(g)), cg), pos] = -v[np.repeat(starts[g], cg) + pos]
        kth[g] = -np.partition(P, N - 1, axis=1)[:, N - 1]
        i = j
    return kth
