"""Named scenarios: today's shop and the worlds where exploration pays (``docs/simulator.md``).

Each scenario is a set of changes to the static shop's :class:`~simulator.shop.ShopConfig` (what
``banditrec regret`` runs) and to the retail simulator's :class:`~simulator.config.SimConfig`
(what ``banditrec simulate`` and ``banditrec abtest`` run), plus the candidates per request and
the reward the policy learns from. ``--scenario NAME`` selects one in all three commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from banditrec.errors import ValidationError


@dataclass(frozen=True)
class Scenario:
    """One named world. ``shop``/``sim``: changes to ShopConfig / SimConfig; ``candidates``:
    candidates per request (``None``: the command's default); ``reward``: what the policy learns
    from (``click`` or ``purchase``); ``exploration_matters``: a world built so that how a policy
    explores decides its regret (the policy targets are stated on these)."""

    name: str
    summary: str
    shop: dict = field(default_factory=dict)
    sim: dict = field(default_factory=dict)
    candidates: int | None = None
    reward: str = "click"
    exploration_matters: bool = True


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("shop", "today's shop: item features explain most of the appeal", exploration_matters=False),
        Scenario(
            "item-effects",
            "a large hidden per-item appeal (sd 1.5 logits, against 0.5) that the item features do not explain",
            shop={"bias_sd": 1.5},
            sim={"bias_sd": 1.5},
        ),
        Scenario(
            "new-items",
            "a fifth of the catalog launches while the shop runs (every day, cold, with hidden appeal of sd 1)",
            shop={"new_item_share": 0.2, "bias_sd": 1.0},
            sim={"new_item_share": 0.2, "launch_days": 60, "bias_sd": 1.0},
        ),
        Scenario(
            "drift",
            "appeal that drifts (a random walk per item, 0.15 logits a day) and moves with "
            "20-day seasons per product type (amplitude 1 logit)",
            shop={"drift_sd": 0.15, "season_amplitude": 1.0},
            sim={"drift_sd": 0.15, "season_amplitude": 1.0, "season_days": 20.0},
        ),
        Scenario(
            "sparse",
            "purchases, not clicks, are the reward: each item converts a click at a hidden rate (about 15% on average)",
            shop={"reward": "purchase"},
            reward="purchase",
        ),
        Scenario(
            "large",
            "large candidate sets: 300 candidates per request from a catalog of 5,000",
            shop={"n_items": 5000},
            sim={"n_items": 5000},
            candidates=300,
        ),
        # the world the policies' and VW's defaults were chosen on; never reported (docs/policies.md)
        Scenario(
            "holdout",
            "a mixture held out for choosing defaults: 600 items, hidden appeal of sd 1, a tenth "
            "launching during the run, slow drift, 50 candidates",
            shop={"n_items": 600, "bias_sd": 1.0, "new_item_share": 0.1, "drift_sd": 0.05},
            sim={"bias_sd": 1.0, "new_item_share": 0.1, "launch_days": 30, "drift_sd": 0.05},
            candidates=50,
            exploration_matters=False,
        ),
    )
}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; an unknown name is an error listing the known ones."""
    if name not in SCENARIOS:
        raise ValidationError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}", "scenario")
    return SCENARIOS[name]
