"""``banditrec build``: a shop's items, interactions and users files -> a shop directory.

Steps (each shown as a progress bar on a terminal): read and check the files; place the items
in the shop's index (kept from the previous build: old items keep their index, new ones are
appended, removed ones stay as inactive); item features; context features; the candidate
model; write the build and switch the pointer. Nothing is written to the directory's pointer
unless every step succeeded. See ``docs/data-formats.md``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from ..candidates import AlreadyBought, CandidateGenerator, Filters, Interactions, MetadataIndex, OutOfStock
from ..candidates.graph import write_graph
from ..candidates.hybrid import BrainSettings, factor_embedding, fit_brains
from ..errors import ValidationError
from .config import BuildConfig
from .directory import BuildFiles, BuildWriter, ShopDirError, list_builds, read_pointer, sha256_file
from .features import ContextFeaturizer, ItemFeaturizer, fit_context
from .inputs import Catalog, Users, parse_mapping, read_catalog, read_events, read_users
from .tables import now_iso

DAY_S = 86_400.0
SCHEMA_VERSION = 1


@dataclass
class BuildResult:
    directory: Path
    build: str
    previous: str | None
    n_items: int
    n_active: int
    n_new_items: int  # appended to the index by this build
    n_removed: int  # in the previous build's catalog, not in this one (inactive)
    n_users: int
    n_interactions: int
    item_dim: int
    context_dim: int
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"build {self.build} -> {self.directory}" + (f" (previous {self.previous})" if self.previous else ""),
            f"  {self.n_items:,} items ({self.n_active:,} servable; {self.n_new_items:,} new in the index, "
            f"{self.n_removed:,} removed since the previous build), {self.n_users:,} users, "
            f"{self.n_interactions:,} interactions",
            f"  item features: {self.item_dim}; context features: {self.context_dim}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  built in {self.seconds:.1f} s")
        return "\n".join(lines)


def _build_id(directory: Path, clock) -> str:
    n = len(list_builds(directory)) + 1
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    taken = set(list_builds(directory))
    build = f"b{n:05d}-{stamp}"
    k = 1
    while build in taken:
        k += 1
        build = f"b{n:05d}-{stamp}-{k}"
    return build


def _previous(directory: Path):
    try:
        return BuildFiles.open(directory)
    except ShopDirError:
        if (directory / "CURRENT.json").exists():
            raise
        return None


def _merge_previous(catalog: Catalog, prev: BuildFiles | None) -> tuple[Catalog, np.ndarray, int, int]:
    """The catalog in the shop's index order and its ``active`` mask: the previous build's items
    first at their index, then new items in file order; items the file no longer holds are kept
    (inactive) with their previous attributes. Returns (catalog, active, n_new, n_removed)."""
    if prev is None:
        return catalog, np.ones(catalog.n_items, bool), catalog.n_items, 0
    old = catalog_from_table(prev.table("items.parquet"))
    position = {item: i for i, item in enumerate(catalog.ids.tolist())}
    pos = np.fromiter((position.get(i, -1) for i in old.ids.tolist()), dtype=np.int64, count=old.n_items)
    kept, removed = np.flatnonzero(pos >= 0), np.flatnonzero(pos < 0)
    seen = np.zeros(catalog.n_items, bool)
    seen[pos[kept]] = True
    new_rows = np.flatnonzero(~seen)
    merged = _concat_catalogs([catalog.take(pos[kept]), old.take(removed), catalog.take(new_rows)])
    index = np.r_[kept, removed, old.n_items + np.arange(len(new_rows))]  # each row's place in the index
    merged = merged.take(np.argsort(index, kind="stable"))
    active = np.ones(merged.n_items, bool)
    active[removed] = False
    return merged, active, len(new_rows), len(removed)


def _concat_catalogs(parts: list[Catalog]) -> Catalog:
    """Rows of ``parts`` one after the other; a column missing from a part is empty there."""

    def joined(get, fill, dtype) -> dict:
        names = list(dict.fromkeys(k for p in parts for k in get(p)))
        return {
            k: np.concatenate(
                [
                    np.asarray(get(p)[k], dtype=dtype) if k in get(p) else np.full(p.n_items, fill, dtype=dtype)
                    for p in parts
                ]
            )
            for k in names
        }

    types = None
    if any(p.type is not None for p in parts):
        types = np.concatenate(
            [p.type if p.type is not None else np.full(p.n_items, "", dtype=object) for p in parts]
        ).astype(object)
    return Catalog(
        parts[0].path,
        np.concatenate([p.ids for p in parts]).astype(object),
        types,
        joined(lambda p: p.numeric, np.nan, float),
        joined(lambda p: p.categorical, "", object),
        joined(lambda p: p.text, "", object),
        np.concatenate([p.in_stock for p in parts]),
        np.concatenate([p.created_at for p in parts]),
    )


def catalog_table(catalog: Catalog, active: np.ndarray) -> pa.Table:
    cols = {
        "item_index": pa.array(np.arange(catalog.n_items)),
        "item_id": pa.array(catalog.ids, type=pa.string()),
        "active": pa.array(active),
        "in_stock": pa.array(catalog.in_stock),
        "created_at": pa.array(catalog.created_at),
    }
    if catalog.type is not None:
        cols["type"] = pa.array(catalog.type, type=pa.string())
    meta = {}
    for role, d in (("numeric", catalog.numeric), ("categorical", catalog.categorical), ("text", catalog.text)):
        for k, v in d.items():
            cols[f"{role}:{k}"] = pa.array(v, type=pa.float64() if role == "numeric" else pa.string())
            meta[k] = role
    return pa.table(cols)


def catalog_from_table(table: pa.Table) -> Catalog:
    """The catalog a build stored (``items.parquet``), in index order."""
    cols = {name: table.column(name) for name in table.column_names}

    def strings(name):
        return np.asarray(cols[name].to_numpy(zero_copy_only=False), dtype=object)

    by_role: dict[str, dict] = {"numeric": {}, "categorical": {}, "text": {}}
    for name in table.column_names:
        role, sep, key = name.partition(":")
        if sep and role in by_role:
            by_role[role][key] = (
                cols[name].to_numpy(zero_copy_only=False).astype(float) if role == "numeric" else strings(name)
            )
    return Catalog(
        "items.parquet",
        strings("item_id"),
        strings("type") if "type" in cols else None,
        by_role["numeric"],
        by_role["categorical"],
        by_role["text"],
        cols["in_stock"].to_numpy(zero_copy_only=False).astype(bool),
        cols["created_at"].to_numpy(zero_copy_only=False).astype(float),
    )


def _codes(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer codes of ``values`` and their labels, sorted as numbers when every label is an
    integer (so "2" < "10"), else as text."""
    labels, codes = np.unique(values.astype(str), return_inverse=True)
    try:
        numbers = np.array([int(v) for v in labels.tolist()])
    except ValueError:
        return codes.astype(np.int64), labels.tolist()
    order = np.argsort(numbers, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[codes], labels[order].tolist()


def _input_info(path) -> dict:
    return {"path": str(path), "sha256": sha256_file(Path(path)), "bytes": Path(path).stat().st_size}


class _Steps:
    """Progress over the build's named steps (a tqdm bar on a terminal; nothing otherwise), and
    within the candidate model's own steps (:meth:`detail`, its ``progress`` callback)."""

    NAMES = (
        "read items",
        "read users",
        "read interactions",
        "item features",
        "candidate model",
        "context features",
        "write",
    )

    def __init__(self, progress: bool):
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.NAMES), unit="step", desc="build", leave=False)

    def __call__(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name} done")
            self.bar.update(1)

    def detail(self, step: str, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"candidate model: {step} {done}/{total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_shop(
    items,
    interactions,
    users=None,
    *,
    out,
    config: BuildConfig | None = None,
    mapping=(),
    encoding=None,
    refit_features: bool = False,
    progress: bool = False,
    clock=time.time,
) -> BuildResult:
    """Build (or rebuild) the shop directory ``out`` from the input files (docs/data-formats.md).

    Parameters
    ----------
    items, interactions, users : path
        The shop's CSV or Parquet files; ``users`` is optional.
    out : path
        The shop directory; a new build is added and the pointer switched only when every step
        succeeded.
    config : BuildConfig, optional
        The build config (TOML ``[build]`` keys); defaults otherwise.
    mapping : sequence of str
        ``--map`` strings naming the files' columns.
    encoding : path, optional
        A context-encoding JSON written by ``banditrec import`` (its columns become request
        fields).
    refit_features : bool
        Fit new item and context features even when a previous build exists (learned
        policies then start over).
    progress, clock
        Progress bars on a terminal; the time source of the build's id.

    Returns
    -------
    BuildResult
        The build's id, the previous one, item, user and interaction counts, feature sizes and
        notes on what was left out.

    Raises
    ------
    ValidationError
        A file, column, value or setting that fails its check, naming file, line and column.
    """
    start = time.perf_counter()
    config = config or BuildConfig()
    maps = parse_mapping(mapping)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "builds").mkdir(exist_ok=True)
    prev = _previous(out)
    step = _Steps(progress)
    try:
        return _build(
            items,
            interactions,
            users,
            out=out,
            config=config,
            maps=maps,
            encoding=encoding,
            refit_features=refit_features,
            prev=prev,
            step=step,
            clock=clock,
            start=start,
        )
    finally:
        step.close()


def _build(items, interactions, users, *, out, config, maps, encoding, refit_features, prev, step, clock, start):
    notes: list[str] = []
    catalog = read_catalog(items, config, maps["items"])
    step("read items")
    catalog, active, n_new, n_removed = _merge_previous(catalog, prev)
    user_table: Users | None = read_users(users, config, maps["users"]) if users is not None else None
    step("read users")
    events = read_events(interactions, config, maps["interactions"], catalog.ids, user_table)
    notes += events.report()
    step("read interactions")
    n, n_users = catalog.n_items, len(events.user_ids)
    keep_features = prev is not None and not refit_features
    if keep_features:
        fspec = prev.manifest["item_features"]
        featurizer = ItemFeaturizer(fspec, {k: np.asarray(v) for k, v in prev.arrays("itemfeat").items()})
    else:
        featurizer = ItemFeaturizer.fit(
            catalog,
            item_dim=config.item_dim,
            max_categories=config.max_categories,
            text_dims=config.text_dims,
            exclude=config.not_features,
        )
    item_features = featurizer.transform(catalog)
    step("item features")
    ev = Interactions.from_arrays(
        events.user,
        events.item,
        events.ts,
        events.kind,
        session=events.session,
        n_users=n_users,
        n_items=n,
        session_gap_s=60.0 * config.session_gap_minutes,
    )
    now = float(events.ts.max())
    if catalog.type is not None:
        types, type_labels = _codes(catalog.type)
    else:
        types, type_labels = np.zeros(n, dtype=np.int64), ["(none)"]
        notes.append("the items file has no 'type' column: no per-type diversity or already-bought filter")
    consumable = np.isin(np.asarray(type_labels, dtype=object), list(config.consumable_types))
    unknown_consumable = sorted(set(config.consumable_types) - set(type_labels))
    if unknown_consumable:
        raise ValidationError(
            f"consumable_types names {unknown_consumable[0]!r}, which no item has as its type", "consumable_types"
        )
    segments = np.zeros(n_users, dtype=np.int64)
    segment_labels: list[str] = []
    if user_table is not None and user_table.segment is not None:
        codes, segment_labels = _codes(user_table.segment)
        segments[: len(codes)] = codes
        segments[len(codes) :] = len(segment_labels)  # interaction-only users: a segment of their own
    available = active & catalog.in_stock
    metadata = _metadata(catalog, config.metadata_fields)
    generator = CandidateGenerator(
        n_neighbors=config.n_neighbors,
        weighting=config.weighting,
        half_life_s=config.half_life_days * DAY_S,
        window_s=config.window_days * DAY_S,
        max_per_type=config.max_per_type if catalog.type is not None else n,
        type_decay=config.type_decay,
        min_new=config.min_new,
        weights=config.weights,
        filters=Filters([OutOfStock(available), AlreadyBought(types, consumable)]),
        metadata=metadata,
        quotas=config.quotas,
    )
    generator.fit(ev, types, user_segments=segments, now=now, active=active, progress=step.detail)
    brains = fit_brains(
        generator,
        ev,
        types,
        consumable=consumable,
        brand=catalog.categorical.get(config.brand_column),
        price=catalog.numeric.get("price"),
        now=now,
        settings=BrainSettings(config.factors_model, config.factors_dim, seed=config.seed),
        typed=catalog.type is not None,
    )
    step("candidate model")
    embedding = None
    if brains.factors is not None and config.embedding_dim:
        previous_embedding = prev.arrays("items").get("embedding") if keep_features else None
        embedding = factor_embedding(brains.factors, config.embedding_dim, previous_embedding, active)
        item_features = np.hstack([item_features, embedding])
    purchases = ev.user_items("purchase")
    purchases.data[:] = 1.0
    held = (purchases + ev.user_items("cart")).tocsr()
    held.data[:] = 1.0
    taste_n = np.diff(held.indptr)
    taste_sum = held @ item_features
    last_ts = np.full(n_users, np.nan)
    np.fmax.at(last_ts, ev.user, ev.ts)
    names = []
    if encoding is not None:
        names = _encoding_columns(encoding)
    context = fit_context(
        parts=config.context_features,
        users=user_table,
        n_users=n_users,
        user_index_of_file=None,
        max_categories=config.max_categories,
        taste_sum=taste_sum,
        taste_n=taste_n,
        last_ts=last_ts,
        request_fields=config.request_fields,
        encoding=names,
        previous=prev.manifest["context"] if keep_features else None,
        reorder=brains.reorder,
    )
    step("context features")
    touched = np.bincount(ev.item, minlength=n) > 0
    created = np.nan_to_num(catalog.created_at, nan=-np.inf)
    new = ~touched & (created >= now - config.new_item_days * DAY_S)
    popularity = 1.0 + np.bincount(ev.item[ev.kind == 2], minlength=n)
    writer = BuildWriter(out, _build_id(out, clock))
    try:
        writer.table("items.parquet", catalog_table(catalog, active))
        writer.table(
            "users.parquet",
            pa.table(
                {
                    "user_index": pa.array(np.arange(n_users)),
                    "user_id": pa.array(events.user_ids, type=pa.string()),
                    "segment": pa.array(segments),
                }
            ),
        )
        writer.arrays(
            "items",
            {
                "features": item_features,
                "active": active,
                "in_stock": catalog.in_stock,
                "cold": ~touched,
                "new": new,
                "popularity": popularity,
                "type": types,
                "consumable": consumable,
                **({"embedding": embedding} if embedding is not None else {}),
            },
        )
        write_graph(writer, brains.graph, catalog.ids)
        writer.arrays("itemfeat", featurizer.arrays)
        writer.arrays("context", {k: v for k, v in _context_arrays(context).items() if v is not None})
        writer.arrays("history", {"data": purchases.data, "indices": purchases.indices, "indptr": purchases.indptr})
        gen_arrays, gen_meta = generator.to_arrays()
        writer.arrays("candidates", gen_arrays)
        step("write")
        inputs = {
            "items": _input_info(items),
            "interactions": {**_input_info(interactions), "rows": events.n_rows},
            "users": _input_info(users) if users is not None else None,
        }
        if encoding is not None:
            inputs["encoding"] = _input_info(encoding)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created": now_iso(),
            "previous": prev.build if prev else None,
            "inputs": inputs,
            "config": config.as_json(),
            "counts": {
                "items": n,
                "active": int(active.sum()),
                "new_in_index": n_new,
                "removed": n_removed,
                "users": n_users,
                "users_in_file": 0 if user_table is None else len(user_table.ids),
                "interactions_read": events.n_rows,
                "interactions_used": len(ev),
            },
            "notes": notes,
            "now": now,
            "item_features": featurizer.spec,
            "context": context.spec,
            "types": type_labels,
            "segments": segment_labels,
            "candidates": gen_meta,
            "graph": {"edges": brains.graph.n_edges, "params": brains.graph.params.params},
            "columns": _business_columns(catalog),
        }
        writer.publish(manifest, keep=config.keep_builds)
    except BaseException:
        writer.abandon()
        raise
    return BuildResult(
        out,
        writer.build,
        prev.build if prev else None,
        n,
        int(active.sum()),
        n_new,
        n_removed,
        n_users,
        len(ev),
        item_features.shape[1],
        context.dim,
        notes,
        time.perf_counter() - start,
    )


def _context_arrays(ctx: ContextFeaturizer) -> dict:
    return {
        "user_numeric": ctx.user_numeric,
        "user_segment": ctx.user_segment,
        "taste_sum": ctx.taste_sum,
        "taste_n": ctx.taste_n,
        "last_ts": ctx.last_ts,
    }


def _business_columns(catalog: Catalog) -> list[str]:
    """Numeric columns a policy can blend or weigh by (``objective=`` / ``value=``): the ones
    with a value for every item."""
    return [k for k, v in catalog.numeric.items() if np.isfinite(v).all()]


def _metadata(catalog: Catalog, names=None) -> MetadataIndex | None:
    """Metadata similarity (cold start): titles and text, the categorical columns ``names``
    (default: the type and every categorical column) and the price."""
    if not catalog.text and catalog.type is None and not catalog.categorical:
        return None
    n = catalog.n_items
    titles = [" ".join(parts) for parts in zip(*catalog.text.values())] if catalog.text else [""] * n
    columns = {**({"type": catalog.type} if catalog.type is not None else {}), **catalog.categorical}
    if names is None:
        names = [k for k in columns if k not in ("title", "title_digits")]
    unknown = [k for k in names if k not in columns]
    if unknown:
        raise ValidationError(
            f"metadata_fields names {unknown[0]!r}, which is not a categorical column of the "
            f"items file (they are: {', '.join(columns) or 'none'})",
            "metadata_fields",
        )
    fields = {k: columns[k] for k in names}
    numeric = None
    price = catalog.numeric.get("price")
    if price is not None and np.isfinite(price).all():
        numeric = price[:, None]
    return MetadataIndex().fit(titles, fields=fields, numeric=numeric)


def _encoding_columns(path) -> list[str]:
    import json

    try:
        data = json.loads(Path(path).read_text())
        names = data["context_names"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValidationError(
            f"{path} is not a context encoding written by `banditrec import`: {exc}", "encoding"
        ) from None
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise ValidationError(f"{path}: context_names must be a list of strings", "encoding")
    return names


def input_digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(sha256_file(Path(p)).encode())
    return h.hexdigest()


__all__ = ["BuildResult", "build_shop", "catalog_from_table", "read_pointer", "sp"]
