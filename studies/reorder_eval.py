"""The reorder model judged on the simulated shop's replenishment: hit@k of "due to reorder"
against recommending what was last bought, and against the population cycle alone.

Details: docs/reorder.md, "How well it ranks (`studies/reorder_eval.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from banditrec.candidates.reorder import ReorderModel
from banditrec.candidates.signals import DAY_S, PURCHASE, Interactions
from simulator.config import SimConfig
from simulator.environment import Environment

from .simulate import history_interactions

KS = (1, 3, 5, 10)
# more consumables than the default shop, and stock that does not cap how much customers buy
REORDER_CONFIG = SimConfig(n_items=2_000, n_types=50, n_customers=20_000, consumable_share=0.4, stock_level=1_000)


@dataclass
class ReorderEval:
    users: int  # users with a consumable purchase before the cut and one in the week after
    consumable_types: int
    hits: dict  # method -> {k: hit rate on items}
    type_hits: dict  # method -> {k: hit rate on product types}
    first_hit: dict  # method -> (users,) rank of each user's first item hit (list length when none)

    def difference(self, a: str, b: str, k: int) -> tuple[float, float]:
        """Paired difference of item hit@k, method a minus b, over the same users, and its
        standard error."""
        d = (self.first_hit[a] < k).astype(float) - (self.first_hit[b] < k)
        return float(d.mean()), (float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0)

    def table(self) -> str:
        head = "| method | " + " | ".join(f"hit@{k} items" for k in KS) + " | "
        head += " | ".join(f"hit@{k} types" for k in KS) + " |"
        lines = [head, "|---" * (1 + 2 * len(KS)) + "|"]
        for name, h in self.hits.items():
            t = self.type_hits[name]
            lines.append(
                f"| {name} | "
                + " | ".join(f"{h[k]:.3f}" for k in KS)
                + " | "
                + " | ".join(f"{t[k]:.3f}" for k in KS)
                + " |"
            )
        lines.append("")
        for other in ("last bought", "population cycle only"):
            diffs = ", ".join(
                "k={}: {:+.3f} ± {:.3f}".format(k, *self.difference("reorder model", other, k)) for k in (1, 3)
            )
            lines.append(f"reorder model minus {other}, item hit@k (paired, ± 1 standard error): {diffs}")
        return "\n".join(lines)


def last_bought(events: Interactions, consumable_item: np.ndarray, users: np.ndarray, N: int) -> np.ndarray:
    """(m, N) each user's most recently bought distinct consumable items, newest first, -1 padded."""
    p = events.of_kind(PURCHASE)
    keep = consumable_item[p.item]
    u, it, ts = p.user[keep], p.item[keep], p.ts[keep]
    order = np.lexsort((-ts, u))
    u, it = u[order], it[order]
    _, first = np.unique(u * events.n_items + it, return_index=True)  # each item's newest purchase
    first.sort()
    u, it = u[first], it[first]
    start = np.r_[True, u[1:] != u[:-1]] if len(u) else np.empty(0, bool)
    rank = np.arange(len(u)) - np.maximum.accumulate(np.where(start, np.arange(len(u)), 0))
    row = np.full(events.n_users, -1)
    row[users] = np.arange(len(users))
    sel = (rank < N) & (row[u] >= 0)
    out = np.full((len(users), N), -1, np.int64)
    out[row[u[sel]], rank[sel]] = it[sel]
    return out


def first_hits(lists: np.ndarray, truth_rows: np.ndarray, truth: np.ndarray, width: int) -> np.ndarray:
    """(m,) position of each row's first true value in its list (the list length when none);
    ``(truth_rows, truth)`` lists each row's true values (values in [0, width))."""
    m = len(lists)
    keys = np.arange(m)[:, None] * width + np.where(lists >= 0, lists, width)
    hit = np.isin(keys, truth_rows * width + truth) & (lists >= 0)
    return np.where(hit.any(axis=1), np.argmax(hit, axis=1), lists.shape[1])


def hits_at(lists: np.ndarray, truth_rows: np.ndarray, truth: np.ndarray, width: int, ks=KS) -> dict:
    """Share of rows with a true value among the first k of their list (see :func:`first_hits`)."""
    if len(lists) == 0:
        return {k: 0.0 for k in ks}
    first = first_hits(lists, truth_rows, truth, width)
    return {k: float((first < k).mean()) for k in ks}


def evaluate_reorder(
    config: SimConfig | None = None, *, seed=0, train_days: int = 120, test_days: int = 7
) -> ReorderEval:
    """Simulate ``train_days + test_days`` of organic shopping with replenishment, fit on the
    events before the cut, and rank each user's consumables at the cut."""
    config = (config or REORDER_CONFIG).replace(history_days=train_days + test_days)
    env = Environment(config, seed=seed)
    h = env.warm_up()
    cat = env.catalog
    ev = history_interactions(h, config.history_days * DAY_S)
    cut = train_days * DAY_S
    train = ev.select(ev.ts < cut)
    p = ev.of_kind(PURCHASE)
    cons_item = cat.consumable[cat.product_type]
    week = (p.ts >= cut) & (p.ts < cut + test_days * DAY_S) & cons_item[p.item]
    before = train.of_kind(PURCHASE)
    users = np.intersect1d(p.user[week], before.user[cons_item[before.item]])
    row = np.full(config.n_customers, -1)
    row[users] = np.arange(len(users))
    t_rows, t_items = row[p.user[week]], p.item[week]
    keep = t_rows >= 0
    t_rows, t_items = t_rows[keep], t_items[keep]
    N = max(KS)
    lists = {}
    for name, personal in (("reorder model", True), ("population cycle only", False)):
        model = ReorderModel(min_due=0.0, personal=personal).fit(train, cat.product_type, cat.consumable, now=cut)
        lists[name] = model.candidates_batch(users, cut, N)[0]
    lists["last bought"] = last_bought(train, cons_item, users, N)
    T = cat.n_types
    hits, type_hits, first = {}, {}, {}
    for name, ids in lists.items():
        hits[name] = hits_at(ids, t_rows, t_items, cat.n_items)
        first[name] = first_hits(ids, t_rows, t_items, cat.n_items)
        types = np.where(ids >= 0, cat.product_type[np.maximum(ids, 0)], -1)
        type_hits[name] = hits_at(_distinct(types), t_rows, cat.product_type[t_items], T)
    return ReorderEval(
        users=len(users), consumable_types=int(cat.consumable.sum()), hits=hits, type_hits=type_hits, first_hit=first
    )


def _distinct(lists: np.ndarray) -> np.ndarray:
    """Each row's distinct values in first-seen order, -1 padded (types of an item list)."""
    out = np.full_like(lists, -1)
    for j in range(lists.shape[1]):
        col = lists[:, j]
        seen = (out == col[:, None]).any(axis=1) | (col < 0)
        pos = (out >= 0).sum(axis=1)
        ok = ~seen
        out[np.flatnonzero(ok), pos[ok]] = col[ok]
    return out
