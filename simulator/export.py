"""The simulated shop as a real shop would hand it over: items, interactions and users files
and a build config for ``banditrec build``, without what only the simulator knows.

Details: docs/simulator.md, "Export as a shop's files (`simulator/export.py`)".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DEVICES
from .history import DAY_S, event_times

KINDS = ("view", "cart", "purchase")


@dataclass(frozen=True)
class ExportedShop:
    items: Path
    interactions: Path
    users: Path
    config: Path
    n_items: int
    n_interactions: int
    n_users: int


def export_shop(env, events, directory) -> ExportedShop:
    """Write ``env``'s catalog, customers and ``events`` (a History, e.g. what
    :meth:`Environment.warm_up` returned) to ``directory``. Call it at day 0, after the
    pre-period: ``in_stock`` is the stock then."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cat, pop, c = env.catalog, env.population, env.config
    base_s = c.history_days * DAY_S
    dim = cat.latent.shape[1]
    items = out / "items.csv"
    with open(items, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        extra = list(cat.columns)
        w.writerow(
            [
                "item_id",
                "title",
                "type",
                "category",
                "brand",
                "price",
                "margin",
                *extra,
                "in_stock",
                "created_at",
                *(f"emb{k}" for k in range(dim)),
            ]
        )
        latent = cat.latent.astype(float)
        for j in range(cat.n_items):
            created = "" if cat.launch_day[j] < -c.history_days else repr(base_s + float(cat.launch_day[j]) * DAY_S)
            w.writerow(
                [
                    f"i{j}",
                    cat.title[j],
                    int(cat.product_type[j]),
                    int(cat.category[j]),
                    int(cat.brand[j]),
                    repr(float(cat.price[j])),
                    repr(float(cat.margin[j])),
                    *(repr(float(cat.columns[k][j])) for k in extra),
                    "true" if env.stock.available[j] else "false",
                    created,
                    *(repr(v) for v in latent[j].tolist()),
                ]
            )
    interactions = out / "interactions.csv"
    ts = event_times(events, base_s)
    with open(interactions, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "event_type", "timestamp", "session_id"])
        for cust, item, kind, t, sess in zip(
            events.customer.tolist(), events.item.tolist(), events.kind.tolist(), ts.tolist(), events.session.tolist()
        ):
            w.writerow([f"u{cust}", f"i{item}", KINDS[kind], repr(t), f"s{sess}"])
    users = out / "users.csv"
    with open(users, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "segment", "device", *(f"taste{k}" for k in range(dim))])
        observed = pop.observed.astype(float)
        for u in range(pop.n_customers):
            w.writerow(
                [f"u{u}", int(pop.segment[u]), DEVICES[int(pop.device[u])], *(repr(v) for v in observed[u].tolist())]
            )
    consumable = [str(t) for t in np.flatnonzero(cat.consumable).tolist()]
    config = out / "build.toml"
    config.write_text(
        "# banditrec build settings for the simulated shop (docs/data-formats.md)\n"
        "[items]\n"
        'categorical_columns = ["category", "brand"]\n'
        f"consumable_types = {_toml_list(consumable)}\n"
        "# metadata similarity (cold start) from the title, type, brand and price, as the simulator fits it\n"
        'metadata_fields = ["type", "brand"]\n'
        "[users]\n"
        'segment_column = "segment"\n'
        "[context]\n"
        f"request_fields = {{device = {_toml_list(list(DEVICES))}}}\n"
    )
    return ExportedShop(items, interactions, users, config, cat.n_items, len(events), pop.n_customers)


def _toml_list(values) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"
