"""Feature vectors for the policies, built from a shop's own attributes (:class:`ItemFeaturizer`,
:class:`ContextFeaturizer`), fitted once and frozen so a rebuild keeps their meaning.

Details: docs/data-formats.md, "Featurizers (`shop/features.py`)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..candidates.metadata import hash_tokens, tokenize
from ..errors import ValidationError

TEXT_BUCKETS = 1 << 16
PCA_SAMPLE = 200_000  # rows the principal directions are fitted on (the whole catalog below it)
DAY_S = 86_400.0
RECENCY_SCALE_H = math.log1p(24 * 90)  # activity older than 90 days reads as 1


def _standardise_stats(x: np.ndarray) -> tuple[float, float]:
    finite = x[np.isfinite(x)]
    if len(finite) == 0:
        return 0.0, 1.0
    sd = float(finite.std())
    return float(finite.mean()), sd if sd > 0 else 1.0


def _heavy_tailed(x: np.ndarray) -> bool:
    finite = x[np.isfinite(x)]
    if len(finite) < 2 or finite.min() < 0:
        return False
    med = float(np.median(finite))
    return finite.max() > 10 * max(med, 1e-12)


def _vocabulary(values: np.ndarray, limit: int) -> list[str]:
    """The ``limit`` most frequent non-empty values, ties by value (portable, deterministic)."""
    uniq, counts = np.unique(values[values != ""].astype(str), return_counts=True)
    order = np.lexsort((uniq, -counts))
    return uniq[order][:limit].tolist()


def _one_hot(values: np.ndarray, vocab: list[str]) -> np.ndarray:
    out = np.zeros((len(values), len(vocab)))
    if vocab:
        index = {v: j for j, v in enumerate(vocab)}
        col = np.fromiter((index.get(v, -1) for v in values.tolist()), dtype=np.int64, count=len(values))
        hit = col >= 0
        out[np.flatnonzero(hit), col[hit]] = 1.0
    return out


def _hashed_text(texts: list[str]) -> sp.csr_matrix:
    """Sublinear term counts of each text's tokens in ``TEXT_BUCKETS`` hashed columns."""
    per = [tokenize(t) for t in texts]
    vocab = list(dict.fromkeys(tok for toks in per for tok in toks))
    if not vocab:
        return sp.csr_matrix((len(texts), TEXT_BUCKETS))
    cols, _ = hash_tokens(vocab, TEXT_BUCKETS, alternate_sign=False)
    col_of = dict(zip(vocab, cols.tolist()))
    rows = np.repeat(np.arange(len(per)), [len(t) for t in per])
    c = np.fromiter((col_of[tok] for toks in per for tok in toks), dtype=np.int64, count=len(rows))
    X = sp.csr_matrix((np.ones(len(rows)), (rows, c)), shape=(len(texts), TEXT_BUCKETS))
    X.sum_duplicates()
    X.data = 1.0 + np.log(X.data)
    return X


class ItemFeaturizer:
    """Fitted on a catalog (:class:`~banditrec.shop.inputs.Catalog`); see docs/data-formats.md,
    "Featurizers"."""

    def __init__(self, spec: dict, arrays: dict[str, np.ndarray]):
        self.spec = spec
        self.arrays = arrays

    @property
    def dim(self) -> int:
        return int(self.spec["dim"])

    @property
    def names(self) -> list[str]:
        return list(self.spec["names"])

    @classmethod
    def fit(
        cls,
        catalog,
        *,
        item_dim: int,
        max_categories: int,
        text_dims: int,
        exclude=(),
        rng: np.random.Generator | None = None,
    ) -> ItemFeaturizer:
        numeric = []
        for name, col in catalog.numeric.items():
            if name in exclude:
                continue
            log = _heavy_tailed(col)
            mean, sd = _standardise_stats(np.log1p(col) if log else col)
            numeric.append({"name": name, "log": log, "mean": mean, "sd": sd})
        categorical = []
        cats = dict(catalog.categorical)
        if catalog.type is not None:
            cats = {"type": catalog.type, **cats}
        for name, col in cats.items():
            if name in exclude:
                continue
            vocab = _vocabulary(col, max_categories)
            if vocab:
                categorical.append({"name": name, "values": vocab})
        arrays: dict[str, np.ndarray] = {}
        text_cols = [c for c in catalog.text if c not in exclude]
        k = 0
        if text_cols and text_dims:
            X = _hashed_text(_joined(catalog.text, text_cols))
            df = np.bincount(X.indices, minlength=TEXT_BUCKETS)
            idf = np.log((1.0 + X.shape[0]) / (1.0 + df)) + 1.0
            Xn = _tfidf(X, idf)
            k = min(text_dims, min(Xn.shape) - 1, int((df > 0).sum()) - 1)
            if k >= 1:
                v0 = np.random.default_rng(0 if rng is None else rng).standard_normal(min(Xn.shape))
                _, _, vt = spla.svds(Xn, k=k, v0=v0)
                vt = vt[::-1]
                vt *= np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])[:, None]  # a fixed sign per direction
                arrays["text_idf"] = idf
                arrays["text_projection"] = vt.T.copy()  # (buckets, k)
            else:
                k = 0
        spec = {"numeric": numeric, "categorical": categorical, "text": text_cols if k else [], "text_dims": k}
        raw_names = _raw_names(spec)
        self = cls({**spec, "raw_dim": len(raw_names), "dim": len(raw_names), "names": raw_names, "pca": False}, arrays)
        if len(raw_names) > item_dim:
            raw = self._raw(catalog)
            mean = raw.mean(axis=0)
            sample = raw
            if len(raw) > PCA_SAMPLE:
                pick = np.random.default_rng(0 if rng is None else rng).choice(len(raw), PCA_SAMPLE, replace=False)
                sample = raw[np.sort(pick)]
            _, s, vt = np.linalg.svd(sample - mean, full_matrices=False)
            comps = vt[:item_dim]
            comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
            var = (s[:item_dim] ** 2) / max(len(sample) - 1, 1)
            scale = math.sqrt(float(var.mean())) if var.mean() > 0 else 1.0
            arrays["pca_mean"] = mean
            arrays["pca_components"] = comps.T / scale  # (raw_dim, item_dim)
            self.spec.update(dim=len(comps), pca=True, names=[f"pc{j}" for j in range(len(comps))])
        return self

    def transform(self, catalog) -> np.ndarray:
        raw = self._raw(catalog)
        if self.spec["pca"]:
            return (raw - self.arrays["pca_mean"]) @ self.arrays["pca_components"]
        return raw

    def _raw(self, catalog) -> np.ndarray:
        n = catalog.n_items
        blocks = []
        for c in self.spec["numeric"]:
            col = catalog.numeric.get(c["name"])
            if col is None:
                raise ValidationError(
                    f"the items file has no column {c['name']!r}, which the shop's item features "
                    "use; rebuild with --refit-features to drop it",
                    c["name"],
                )
            x = np.log1p(np.maximum(col, 0)) if c["log"] else col
            z = (x - c["mean"]) / c["sd"]
            blocks.append(np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)[:, None])
        for c in self.spec["categorical"]:
            col = (
                catalog.type
                if c["name"] == "type" and c["name"] not in catalog.categorical
                else catalog.categorical.get(c["name"])
            )
            if col is None:
                col = np.full(n, "", dtype=object)
            blocks.append(_one_hot(col, c["values"]))
        if self.spec["text_dims"]:
            texts = _joined(catalog.text, self.spec["text"])
            X = _tfidf(_hashed_text(texts), self.arrays["text_idf"])
            blocks.append(np.asarray(X @ self.arrays["text_projection"]))
        return np.hstack(blocks) if blocks else np.zeros((n, 0))


def _joined(text: dict, cols) -> list[str]:
    n = len(next(iter(text.values())))
    parts = [text.get(c, np.full(n, "", dtype=object)) for c in cols]
    return [" ".join(p[i] for p in parts) for i in range(n)]


def _tfidf(X: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    Y = X.multiply(idf[None, :]).tocsr()
    norm = np.sqrt(np.asarray(Y.multiply(Y).sum(axis=1)).ravel())
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    return (sp.diags(inv) @ Y).tocsr()


def _raw_names(spec: dict) -> list[str]:
    names = [c["name"] for c in spec["numeric"]]
    for c in spec["categorical"]:
        names += [f"{c['name']}={v}" for v in c["values"]]
    names += [f"text{j}" for j in range(spec["text_dims"])]
    return names


# ---- context -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestContext:
    """What a request itself says (the ``context`` object of ``POST /v1/decide``)."""

    fields: dict


class ContextFeaturizer:
    """The context vector of a request (docs/data-formats.md, "Featurizers"); ``spec`` is JSON."""

    def __init__(self, spec: dict, arrays: dict[str, np.ndarray]):
        self.spec = spec
        self.segment_vocab = list(spec.get("segments", []))
        self.user_numeric = arrays.get("user_numeric")  # (n_users, p) standardised, 0 where missing
        self.user_segment = arrays.get("user_segment")  # (n_users,) index into segments, -1 none
        self.taste_sum = arrays.get("taste_sum")  # (n_users, d_i) sum of bought/carted items' vectors
        self.taste_n = arrays.get("taste_n")  # (n_users,)
        self.last_ts = arrays.get("last_ts")  # (n_users,) last interaction, NaN none
        self.reorder = None  # the build's ReorderModel (the "reorder" part), set by the shop
        self.parts = list(spec["parts"])
        self.fields = {k: (v if v == "number" else list(v)) for k, v in spec.get("request_fields", {}).items()}
        self.columns = list(spec.get("encoding", []))
        self.names = list(spec["names"])
        self._field_index = {
            k: ({x: j for j, x in enumerate(v)} if v != "number" else None) for k, v in self.fields.items()
        }

    @property
    def dim(self) -> int:
        return len(self.names)

    def field_names(self) -> list[str]:
        """The request-time fields a ``context`` object may carry."""
        names = list(self.fields)
        for col in self.columns:
            name = col.split("=", 1)[0]
            if name not in names:
                names.append(name)
        return names

    def vector(
        self,
        user: int,
        session_items: np.ndarray,
        session_age_s: float | None,
        now: float,
        fields: dict | None,
        item_features: np.ndarray,
    ) -> np.ndarray:
        """The context vector for ``user`` (a row of the build's users, or -1: unknown)."""
        out = []
        for part in self.parts:
            # a build saves the arrays of the parts it lists
            if part == "segment":
                assert self.user_segment is not None
                v = np.zeros(len(self.segment_vocab))
                s = self.user_segment[user] if user >= 0 else -1
                if s >= 0:
                    v[s] = 1.0
                out.append(v)
            elif part == "user_numeric":
                assert self.user_numeric is not None
                out.append(self.user_numeric[user] if user >= 0 else np.zeros(self.user_numeric.shape[1]))
            elif part == "taste":
                assert self.taste_sum is not None and self.taste_n is not None
                total = self.taste_sum[user].astype(float) if user >= 0 else np.zeros(item_features.shape[1])
                n = float(self.taste_n[user]) if user >= 0 else 0.0
                if len(session_items):
                    total = total + item_features[session_items].sum(axis=0)
                    n += len(session_items)
                out.append(total / n if n else total)
            elif part == "recency":
                assert self.last_ts is not None
                if session_age_s is not None:
                    age = session_age_s
                elif user >= 0 and np.isfinite(self.last_ts[user]):
                    age = max(now - float(self.last_ts[user]), 0.0)
                else:
                    age = None
                hours = 1.0 if age is None else min(math.log1p(age / 3600.0) / RECENCY_SCALE_H, 1.0)
                out.append(np.array([hours, math.log1p(len(session_items)) / math.log1p(50.0)]))
            elif part == "reorder":  # the largest due probability over the user's consumable types
                due = self.reorder.context_feature(user, now) if user >= 0 and self.reorder is not None else 0.0
                out.append(np.array([due]))
            elif part == "time":
                day = (now / DAY_S) % 7.0
                hour = (now % DAY_S) / 3600.0
                a, b = 2 * math.pi * hour / 24.0, 2 * math.pi * day / 7.0
                out.append(np.array([math.sin(a), math.cos(a), math.sin(b), math.cos(b)]))
        out.append(self._request_part(fields or {}))
        return np.concatenate(out) if out else np.zeros(0)

    def _request_part(self, fields: dict) -> np.ndarray:
        unknown = sorted(set(fields) - set(self.field_names()))
        if unknown:
            known = ", ".join(self.field_names()) or "none"
            raise ValidationError(
                f"context has no field {unknown[0]!r}; this shop's context fields: {known}", f"context.{unknown[0]}"
            )
        parts = []
        for name, vocab in self.fields.items():
            value = fields.get(name)
            if vocab == "number":
                parts.append(np.array([_number(value, name)]))
                continue
            v = np.zeros(len(vocab))
            if value is not None:
                if not isinstance(value, str):
                    raise ValidationError(f"context.{name} must be a string, got {value!r}", f"context.{name}")
                index = self._field_index[name]
                assert index is not None  # a categorical field (numbers continued above)
                j = index.get(value)
                if j is None:
                    raise ValidationError(
                        f"context.{name} must be one of {', '.join(vocab)}; got {value!r}", f"context.{name}"
                    )
                v[j] = 1.0
            parts.append(v)
        if self.columns:
            v = np.zeros(len(self.columns))
            for j, col in enumerate(self.columns):
                name, eq, level = col.partition("=")
                value = fields.get(name)
                if eq:
                    v[j] = 1.0 if value is not None and str(value) == level else 0.0
                elif value is not None:
                    v[j] = _number(value, name)
            parts.append(v)
        return np.concatenate(parts) if parts else np.zeros(0)


def _number(value, name: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(f"context.{name} must be a finite number, got {value!r}", f"context.{name}")
    return float(value)


def fit_context(
    *,
    parts,
    users,
    n_users: int,
    user_index_of_file: np.ndarray | None,
    max_categories: int,
    taste_sum: np.ndarray,
    taste_n: np.ndarray,
    last_ts: np.ndarray,
    request_fields: dict,
    encoding: list[str],
    previous: dict | None = None,
    reorder=None,
) -> ContextFeaturizer:
    """A :class:`ContextFeaturizer` for ``n_users`` users; ``users`` (a
    :class:`~banditrec.shop.inputs.Users` or None) gives segments and numeric attributes for
    the first ``len(users.ids)`` of them. ``previous``: a spec to keep (a rebuild)."""
    arrays: dict[str, np.ndarray] = {}
    spec = dict(previous) if previous else {}
    if not previous:
        parts = list(parts)
        if users is None or users.segment is None:
            parts = [p for p in parts if p != "segment"]
        if users is None or not users.numeric:
            parts = [p for p in parts if p != "user_numeric"]
        if reorder is None:
            parts = [p for p in parts if p != "reorder"]
        spec["parts"] = parts
        spec["segments"] = _vocabulary(users.segment, max_categories) if "segment" in parts else []
        spec["user_numeric"] = (
            [{"name": k, **dict(zip(("mean", "sd"), _standardise_stats(v)))} for k, v in users.numeric.items()]
            if "user_numeric" in parts
            else []
        )
        spec["request_fields"] = {k: (v if v == "number" else list(v)) for k, v in request_fields.items()}
        spec["encoding"] = list(encoding)
    parts = spec["parts"]
    n_file = 0 if users is None else len(users.ids)
    if "segment" in parts:
        seg = np.full(n_users, -1, dtype=np.int64)
        if users is not None and users.segment is not None:
            index = {v: j for j, v in enumerate(spec["segments"])}
            seg[:n_file] = [index.get(v, -1) for v in users.segment.tolist()]
        arrays["user_segment"] = seg
    if "user_numeric" in parts:
        num = np.zeros((n_users, len(spec["user_numeric"])))
        for j, c in enumerate(spec["user_numeric"]):
            col = users.numeric.get(c["name"]) if users is not None else None
            if col is not None:
                num[:n_file, j] = np.nan_to_num((col - c["mean"]) / c["sd"], nan=0.0)
        arrays["user_numeric"] = num
    if "taste" in parts:
        arrays["taste_sum"] = taste_sum.astype(np.float32)
        arrays["taste_n"] = taste_n.astype(np.int64)
    if "recency" in parts:
        arrays["last_ts"] = last_ts
    names = []
    d_i = taste_sum.shape[1]
    for part in parts:
        names += {
            "segment": [f"segment={s}" for s in spec["segments"]],
            "user_numeric": [f"user.{c['name']}" for c in spec["user_numeric"]],
            "taste": [f"taste{j}" for j in range(d_i)],
            "recency": ["hours_since_active", "session_events"],
            "time": ["hour_sin", "hour_cos", "weekday_sin", "weekday_cos"],
            "reorder": ["due_to_reorder"],
        }[part]
    for name, vocab in spec["request_fields"].items():
        names += [name] if vocab == "number" else [f"{name}={v}" for v in vocab]
    names += list(spec["encoding"])
    spec["names"] = names
    ctx = ContextFeaturizer(spec, arrays)
    ctx.reorder = reorder
    return ctx
