"""A candidate generator fitted on what a decision log holds: its items and interaction events.

The log's ``items`` table gives the catalog (ids in index order) and each item's attributes;
the product type is read from the attribute ``type`` (``product_type`` also works), the
category from ``category``, and ``title`` / ``brand`` feed metadata similarity for items
without events. The ``events`` table (views, cart adds, purchases, e.g. posted to
``/v1/events`` or written by ``banditrec simulate``) gives the interactions.
"""

from __future__ import annotations

import numpy as np

from ..errors import ValidationError
from .generator import CandidateGenerator
from .signals import Interactions

TYPE_KEYS = ("type", "product_type")


def catalog_from_log(log) -> tuple[list[str], np.ndarray, list[dict]]:
    """``(item ids, product types (n,), attrs)`` from the log's items table."""
    ids, _, attrs = log.items()
    if not ids:
        raise ValidationError("the log has no items table rows: nothing to find neighbours for", "items")
    types = []
    for i, a in enumerate(attrs):
        key = next((k for k in TYPE_KEYS if k in a), None)
        if key is None:
            raise ValidationError(
                f"item {ids[i]!r} has no 'type' attribute; candidate generation needs each item's product type", "items"
            )
        types.append(a[key])
    _, codes = np.unique(np.asarray([str(t) for t in types]), return_inverse=True)
    return ids, codes.astype(np.int64), attrs


def interactions_from_log(log, item_ids: list[str]) -> Interactions:
    """The log's events as :class:`Interactions` (users numbered by first appearance; events
    on items the catalog does not know are left out)."""
    ev = log.events()
    index = {item: j for j, item in enumerate(item_ids)}
    item = np.fromiter((index.get(i, -1) for i in ev.item_id.tolist()), dtype=np.int64, count=len(ev))
    known = item >= 0
    users, user = np.unique(ev.user_id[known].astype(str), return_inverse=True)
    return Interactions.from_arrays(
        user, item[known], ev.ts[known], ev.kind[known].astype(str), n_users=len(users), n_items=len(item_ids)
    )


def generator_from_log(log, *, metadata: bool = True, **kw) -> tuple[CandidateGenerator, list[str], list[dict]]:
    """Fit a :class:`CandidateGenerator` on the log (``kw`` go to its constructor). With
    ``metadata`` and items carrying titles, items without events get metadata neighbours."""
    ids, types, attrs = catalog_from_log(log)
    events = interactions_from_log(log, ids)
    if len(events) == 0:
        raise ValidationError("the log has no interaction events (views, carts, purchases) to learn from", "events")
    if metadata and "metadata" not in kw and any("title" in a for a in attrs):
        kw["metadata"] = _metadata_index(attrs, types)
    gen = CandidateGenerator(**kw).fit(events, types)
    return gen, ids, attrs


def _metadata_index(attrs: list[dict], types: np.ndarray):
    from .metadata import MetadataIndex

    fields: dict[str, object] = {"type": types}
    for key in ("brand", "category"):
        if all(key in a for a in attrs):
            fields[key] = [str(a[key]) for a in attrs]
    numeric = None
    if all(isinstance(a.get("price"), (int, float)) for a in attrs):
        numeric = np.array([[a["price"]] for a in attrs], dtype=float)
    return MetadataIndex().fit([str(a.get("title", "")) for a in attrs], fields=fields, numeric=numeric)
