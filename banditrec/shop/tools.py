"""Looking at a shop directory from the command line: ``banditrec recommend``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..policies import load
from ..store import DecisionLog
from ..types import Decision, Explanation
from .serving import Shop, engine_for_shop

WHY = {
    "complement": "goes with the cart or a past purchase",
    "similar": "like an item viewed",
    "new": "new, like an item looked at",
    "popular": "popular in the user's segment",
    "cf": "bought by people who bought the same",
    "factors": "because you liked what you bought or viewed",
    "reorder": "due to be bought again",
    "accessory": "an accessory of the cart or a past purchase",
    "request": "given by the request",
    "pinned": "pinned",
}


@dataclass
class Recommendation:
    shop: Shop
    decision: Decision
    known_user: bool

    def table(self) -> str:
        d = self.decision
        rows = []
        for s in d.slots:
            info = self.shop.info(self.shop.item_id(s.item_id))
            rows.append(
                (
                    str(s.position + 1),
                    s.item_id,
                    info.type or "-",
                    (info.title or "-")[:40],
                    WHY.get(s.source, s.source),
                    f"{s.marginal:.3f}",
                )
            )
        head = ("slot", "item", "type", "title", "why", "P(here)")
        widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        who = "known user" if self.known_user else "new user (no history)"
        lines = [
            f"{d.user_id} ({who}); shop build {d.build}; policy {d.policy} {d.model_version}",
            fmt.format(*head),
            fmt.format(*("-" * w for w in widths)),
        ]
        lines += [fmt.format(*r) for r in rows]
        if d.explanations is not None:
            for s, e in zip(d.slots, d.explanations):
                lines += ["", *explanation_lines(s.position + 1, s.item_id, e)]
        return "\n".join(lines)


def explanation_lines(slot: int, item_id: str, e: Explanation) -> list[str]:
    """A slot's explanation as a small table: its contributions, then base, bonus, objective
    and score (docs/explanations.md)."""
    if not e.available:
        return [f"slot {slot} {item_id}: no explanation ({e.why})"]
    rows: list[tuple[str, float | None]] = [(c.feature, c.value) for c in e.contributions]
    rows += [("= base (sum of the above)", e.base), (f"+ bonus ({e.kind})", e.bonus)]
    if e.objective:
        rows.append(("+ objective blend", e.objective))
    rows.append(("= score", e.score))
    width = max(len(r[0]) for r in rows)
    out = [f"slot {slot} {item_id}: why this score"]
    out += [f"  {name:<{width}}  {value or 0.0:+.6f}" for name, value in rows]
    if e.why:
        out.append(f"  ({e.why})")
    return out


def recommend(
    shop_dir,
    user_id: str,
    *,
    cart=(),
    views=(),
    n_slots: int = 5,
    policy: str = "linucb",
    snapshots=None,
    context: dict | None = None,
    seed=0,
    explain: bool = False,
) -> Recommendation:
    """The carousel ``shop_dir`` would show ``user_id`` now, with ``cart`` and ``views`` as the
    session; decided on an in-memory log (nothing is written anywhere). ``explain``: with each
    slot's explanation (:meth:`Engine.decide`)."""
    shop = Shop(shop_dir)
    if snapshots is not None:
        from ..publish import read_pointer

        pointer = read_pointer(snapshots)
        served = load(Path(snapshots) / pointer.manifest, **shop.policy_env())
    else:
        served = shop.policy(policy)
    now = time.time()
    log = DecisionLog()
    try:
        for kind, items in (("view", views), ("cart", cart)):
            for item in items:
                shop.item_id(item)  # an unknown id is an error that names it
                log.write_event(user_id, item, kind, ts=now - 1.0)
        engine = engine_for_shop(shop, served, log, seed=seed, clock=lambda: now)
        decision = engine.decide(user_id, n_slots, context=context, explain=explain)
    finally:
        log.close()
    return Recommendation(shop, decision, user_id in shop.user_index)
