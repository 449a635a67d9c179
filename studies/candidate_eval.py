"""Candidate generators judged on the simulated shop, where the complement graph is known:
next complement, diversity and cold start.

Details: docs/candidates.md, "Judging the generators (`studies/candidate_eval.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from banditrec.candidates import (
    AlreadyBought,
    CandidateGenerator,
    ComplementModel,
    Filters,
    Interactions,
    ItemItemCF,
    OutOfStock,
    UserState,
    pair_signals,
)
from banditrec.candidates.signals import DAY_S, ordered_pairs
from simulator.config import SimConfig
from simulator.environment import Environment

KS = (1, 3, 10)


@dataclass
class CandidateEval:
    queries: int
    hits: dict  # method -> {k: hit rate}
    diversity_top3: dict  # method -> mean distinct types in the top 3
    new_item_share: dict  # generator variant -> share of new items in some candidate list
    n_new: int
    seconds: dict

    def table(self) -> str:
        lines = [f"{'method':<34} " + " ".join(f"{'hit@' + str(k):>7}" for k in KS) + f" {'types@3':>8}", "-" * 68]
        for name, h in self.hits.items():
            div = self.diversity_top3.get(name)
            lines.append(
                f"{name:<34} "
                + " ".join(f"{h[k]:>7.4f}" for k in KS)
                + (f" {div:>8.2f}" if div is not None else f" {'':>8}")
            )
        lines.append("")
        lines.append(
            f"CandidateGenerator for day-0 visitors: share of the {self.n_new} new items (no history) in some "
            "candidate list; distinct types in the first 3"
        )
        for name, share in self.new_item_share.items():
            lines.append(f"  {name:<32} {share:>6.3f} {self.diversity_top3[f'generator, {name}']:>8.2f}")
        return "\n".join(lines)


def hit_rates(lists: np.ndarray, targets: np.ndarray, ks=KS) -> dict:
    """Share of rows whose target is among the first k of its list, for each k."""
    return {k: float((lists[:, :k] == targets[:, None]).any(axis=1).mean()) if len(targets) else 0.0 for k in ks}


def distinct_types(lists: np.ndarray, types: np.ndarray, k: int = 3) -> float:
    top = lists[:, :k]
    t = np.where(top >= 0, types[np.maximum(top, 0)], -1)
    srt = np.sort(t, axis=1)
    distinct = (srt >= 0).sum(axis=1) - ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).sum(axis=1)
    return float(distinct.mean())


def evaluate_candidates(
    config: SimConfig | None = None,
    *,
    seed=0,
    train_days: int = 60,
    test_days: int = 30,
    metadata_factory=None,
    n_candidates: int = 50,
) -> CandidateEval:
    """Run the evaluation described in docs/candidates.md, "Judging the generators".
    ``metadata_factory(catalog)`` returns a fitted metadata index for the generator's cold start (None: no metadata)."""
    import time

    config = (config or SimConfig()).replace(history_days=train_days + test_days)
    env = Environment(config, seed=seed)
    h = env.warm_up()
    cat = env.catalog
    events = Interactions.from_arrays(
        h.customer,
        h.item,
        (h.day + config.history_days) * DAY_S,
        h.kind,
        session=h.session,
        n_users=config.n_customers,
        n_items=config.n_items,
    )
    cut = train_days * DAY_S
    train, test = events.select(events.ts < cut), events.select(events.ts >= cut)
    seconds = {}
    t0 = time.perf_counter()
    sym = ItemItemCF(n_neighbors=50).fit(train.user_items("purchase"))
    seconds["symmetric cosine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    directional = ComplementModel().fit(pair_signals(train), cat.product_type)
    seconds["directional"] = time.perf_counter() - t0
    p = test.of_kind("purchase")
    a, b, _ = ordered_pairs(p.session, p.item, p.ts)
    truly = cat.complement[cat.product_type[a], cat.product_type[b]] > 0
    a, b = a[truly], b[truly]
    hits, div = {}, {}
    lists = {
        "(a) symmetric co-purchase cosine": sym.similar_items(a, max(KS))[0],
        "(b) directional, direct pairs only": directional.complements(a, max(KS), use_types=False)[0],
        "(b) directional + type back-off": directional.complements(a, max(KS))[0],
    }
    for name, ids in lists.items():
        hits[name] = hit_rates(ids, b)
        div[name] = distinct_types(ids, cat.product_type)
    hits["(b) reversed: b's list, target a"] = hit_rates(directional.complements(b, max(KS))[0], a)
    # cold start: day-0 visitors' candidate lists, with and without metadata
    req = env.requests()
    states = [
        UserState(cart=r["cart"], purchased=r["purchases"], viewed=r["views"], segment=int(req.segment[i]))
        for i, r in ((i, req.recent(i)) for i in range(len(req)))
    ]
    new = np.flatnonzero(cat.launch_day == 0)
    shares = {}
    variants = {"without metadata": None}
    if metadata_factory is not None:
        variants["with metadata similarity"] = metadata_factory(cat)
    for name, meta in variants.items():
        filters = Filters([OutOfStock(env.stock.available), AlreadyBought(cat.product_type, cat.consumable)])
        t0 = time.perf_counter()
        gen = CandidateGenerator(filters=filters, metadata=meta).fit(
            events, cat.product_type, user_segments=env.population.segment
        )
        seconds[f"generator {name}"] = time.perf_counter() - t0
        ids, _, _ = gen.candidates_batch(states, n_candidates)
        shares[name] = float(np.isin(new, ids).mean()) if len(new) else 0.0
        div[f"generator, {name}"] = distinct_types(ids, cat.product_type)
    return CandidateEval(
        queries=len(a), hits=hits, diversity_top3=div, new_item_share=shares, n_new=len(new), seconds=seconds
    )
