"""A seeded synthetic shop for the scale bench: a catalog of ``n_items`` and about
``events_per_item x n_items`` interaction events, built with vectorized numpy only.

Catalog. ``T = max(8, round(n_items ** 0.6))`` product types whose sizes follow a power law
(Zipf, exponent 1): a few large types, many small ones. Each type has two title words, a
category (``T // 10 + 1`` categories, one title word each), three complementary types (a
directed edge each) and is consumable with probability 0.2. Items get a brand (``T`` brands),
a model token, a log-normal price around their type's, and a title
``"<brand> <category word> <type word> <type word 2> m<model>"``. ``cold_share`` of the items
(default 5%) have no events at all (new items: the cold-start path). Within a type, items'
popularity is Zipf over a random order.

Events. Sessions of users with heavy-tailed activity (Pareto(1.5) weights, capped at 200x the
smallest), 8 user segments, each with its own favourite types (half of the sessions pick
their type by the segment's Zipf ranking, half by type size). A session: 1 + Geometric views
(mean 3) of items of its type (by popularity), a cart add of one of them with probability 0.4,
its purchase with probability 0.6, and after a purchase, with probability 0.5, a view of an
item of one of the type's complementary types, bought with probability 0.6 (the co-purchase
structure across types). Views within a type are the substitutes' co-view structure. Session
starts are uniform over 90 days; events within a session are 1 to 120 seconds apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_S = 86_400.0
_SYL = np.array(["ka", "lo", "ru", "ti", "me", "sa", "no", "vi", "pe", "da", "zu", "ho", "ri", "ba", "ge", "fu"])


@dataclass(frozen=True)
class SyntheticShop:
    n_items: int
    types: np.ndarray  # (n,) int64
    category: np.ndarray  # (n,) int64
    brand: np.ndarray  # (n,) int64
    price: np.ndarray  # (n,) float
    titles: list  # (n,) str
    consumable: np.ndarray  # (T,) bool
    cold: np.ndarray  # (n,) bool: items with no events
    n_users: int
    segment: np.ndarray  # (n_users,) int64
    user: np.ndarray  # (E,) events, in session order
    item: np.ndarray
    ts: np.ndarray
    kind: np.ndarray  # 0 view, 1 cart, 2 purchase
    session: np.ndarray

    @property
    def n_types(self) -> int:
        return len(self.consumable)


def _words(codes: np.ndarray, field: int) -> np.ndarray:
    """A made-up word per integer code and field (0-3): four syllables, distinct for distinct
    (code, field) while codes are below 16,384."""
    c = codes.astype(np.int64) * 4 + field
    return np.char.add(
        np.char.add(_SYL[c % 16], _SYL[(c // 16) % 16]), np.char.add(_SYL[(c // 256) % 16], _SYL[(c // 4096) % 16])
    )


def _zipf_rank(u: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Ranks in [0, n) with P(rank < r) ~ log(1 + r) / log(1 + n): Zipf(1) by inverse CDF."""
    return np.minimum(np.floor(np.exp(u * np.log1p(n))).astype(np.int64) - 1, n - 1)


def synthetic_shop(
    n_items: int,
    gen: np.random.Generator,
    *,
    events_per_item: float = 10.0,
    cold_share: float = 0.05,
    n_segments: int = 8,
) -> SyntheticShop:
    n = int(n_items)
    T = max(8, int(round(n**0.6)))
    # catalog: power-law type sizes, every type non-empty
    w = 1.0 / np.arange(1, T + 1)
    types = np.r_[np.arange(T), gen.choice(T, size=n - T, p=w / w.sum())] if n > T else np.arange(n) % T
    types = gen.permutation(types).astype(np.int64)
    n_cat = T // 10 + 1
    type_cat = gen.integers(0, n_cat, T)
    category = type_cat[types]
    brand = gen.integers(0, T, n)
    consumable = gen.random(T) < 0.2
    comp = np.stack([(np.arange(T) + gen.integers(1, T, T)) % T for _ in range(3)], axis=1)  # never itself
    type_price = np.exp(gen.normal(3.0, 1.0, T))
    price = np.round(type_price[types] * np.exp(gen.normal(0, 0.3, n)), 2)
    model = gen.integers(100, 100_000, n)
    titles = np.char.add(
        np.char.add(
            np.char.add(
                np.char.add(np.char.add(_words(brand, 0), " "), np.char.add(_words(category, 1), " ")),
                np.char.add(_words(types, 2), " "),
            ),
            np.char.add(_words(types, 3), " m"),
        ),
        model.astype(str),
    ).tolist()
    cold = gen.random(n) < cold_share
    # warm items of each type, most popular first (a random order within the type)
    key = gen.random(n)
    warm_order = np.lexsort((key, cold, types))  # by type, warm first, then random
    start = np.searchsorted(types[warm_order], np.arange(T))
    n_warm = np.bincount(types[~cold], minlength=T)
    has_warm = n_warm > 0

    # users and sessions
    n_events_target = events_per_item * n
    per_session = 3.83  # events per session with the probabilities below
    S = max(1, int(n_events_target / per_session))
    n_users = max(1, S // 3)
    act = np.minimum(gen.pareto(1.5, n_users) + 1.0, 200.0)
    segment = gen.integers(0, n_segments, n_users)
    s_user = np.minimum(np.searchsorted(np.cumsum(act) / act.sum(), gen.random(S)), n_users - 1)
    seg_rank = np.stack([gen.permutation(np.flatnonzero(has_warm)) for _ in range(n_segments)])
    by_size = np.flatnonzero(has_warm)[np.argsort(-n_warm[has_warm], kind="stable")]
    k = len(by_size)
    from_seg = gen.random(S) < 0.5
    r = _zipf_rank(gen.random(S), np.full(S, k))
    s_type = np.where(from_seg, seg_rank[segment[s_user], r], by_size[r])
    s_start = gen.uniform(0, 90 * DAY_S, S)

    def pick(t, u):  # an item of type t by within-type popularity
        return warm_order[start[t] + _zipf_rank(u, n_warm[t])]

    n_views = gen.geometric(1 / 3.0, S)  # >= 1, mean 3
    v_sess = np.repeat(np.arange(S), n_views)
    v_item = pick(s_type[v_sess], gen.random(len(v_sess)))
    v_pos = np.arange(len(v_sess)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
    carted = gen.random(S) < 0.4
    c_sess = np.flatnonzero(carted)
    first = np.cumsum(n_views) - n_views
    c_item = v_item[first[c_sess] + gen.integers(0, n_views[c_sess])]
    bought = gen.random(len(c_sess)) < 0.6
    p_sess, p_item = c_sess[bought], c_item[bought]
    then = gen.random(len(p_sess)) < 0.5
    x_sess = p_sess[then]
    x_type = comp[s_type[x_sess], gen.integers(0, 3, len(x_sess))]
    ok = has_warm[x_type]
    x_sess, x_type = x_sess[ok], x_type[ok]
    x_item = pick(x_type, gen.random(len(x_sess)))
    x_buy = gen.random(len(x_sess)) < 0.6
    # order within a session: views, cart, purchase, complement view, complement purchase
    sess = np.r_[v_sess, c_sess, p_sess, x_sess, x_sess[x_buy]]
    item = np.r_[v_item, c_item, p_item, x_item, x_item[x_buy]]
    kind = np.r_[
        np.zeros(len(v_sess)),
        np.ones(len(c_sess)),
        np.full(len(p_sess), 2),
        np.zeros(len(x_sess)),
        np.full(int(x_buy.sum()), 2),
    ].astype(np.int8)
    step = np.r_[v_pos, n_views[c_sess], n_views[p_sess] + 1, n_views[x_sess] + 2, n_views[x_sess][x_buy] + 3]
    order = np.lexsort((step, sess))
    sess, item, kind = sess[order], item[order], kind[order]
    gap = np.cumsum(gen.uniform(1.0, 120.0, len(sess)))
    first = np.searchsorted(sess, sess)  # each event's session's first event
    ts = np.round(s_start[sess] + gap - gap[first], 3)
    return SyntheticShop(
        n_items=n,
        types=types,
        category=category,
        brand=brand,
        price=price,
        titles=titles,
        consumable=consumable,
        cold=cold,
        n_users=n_users,
        segment=segment,
        user=s_user[sess],
        item=item,
        ts=ts,
        kind=kind,
        session=sess,
    )
