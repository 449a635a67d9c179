"""The policy protocol: a policy scores candidates; the slot filler turns scores into a slate.

A policy never samples by itself: :meth:`Policy.distribution` returns the slate distribution
(whose ``sample`` takes the caller's Generator and returns the propensities), so the same
object also answers "how likely would this policy have been to show item a in slot k?" for
off-policy evaluation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ValidationError
from . import snapshot
from .checks import check_context, check_rows, check_weight
from .sampling import DEFAULT_DRAWS, SequentialSlate
from .slate import EpsilonGreedySlate, SlateDistribution
from .terms import FeatureNames, ScoreTerms, Unexplained

DEFAULT_FLOOR = 0.01
"""The serving floor's default: every served slot explores uniformly at least this much, so that
every candidate keeps a probability of at least ``floor / n`` and the log can evaluate other
policies (see ``docs/policies.md`` on the trade-off with regret)."""


@dataclass(frozen=True)
class Request:
    """What a policy may look at for one decision.

    context : (d_c,) float          the user's/session's feature vector
    items : (n,) int                catalog indices of the candidates
    item_features : (n, d_i) float  the candidates' attribute vectors
    cold : (n,) bool, optional      candidates without interaction history (new or cold items);
                                    ``None`` means none is
    """

    context: np.ndarray
    items: np.ndarray
    item_features: np.ndarray
    cold: np.ndarray | None = None


def cold_flags(cold, n: int, field: str = "cold") -> np.ndarray:
    """``cold`` as an (n,) float array of 0/1 (all 0 for ``None``); raises naming ``field``."""
    if cold is None:
        return np.zeros(n)
    c = np.asarray(cold)
    if c.shape != (n,):
        raise ValidationError(f"{field} must have one flag per row ({n}), got shape {c.shape}", field)
    if c.dtype != bool:
        if not np.issubdtype(c.dtype, np.number) or not np.isin(c, (0, 1)).all():
            raise ValidationError(f"{field} must hold booleans (or 0/1), got {c.dtype}", field)
    return c.astype(float)


@dataclass(frozen=True)
class Rows:
    """Logged rows a policy learns from (what :meth:`Policy.update` hands to ``learn``).

    context (m, d_c), item_features (m, d_i), reward (m,) : always.
    items (m,) : catalog indices of the shown items.
    weight (m,) : importance weights (each row counts ``weight`` times), or ``None`` for 1.
    pscore (m,) : the logged marginal P(slot k holds the item | context).
    propensity (m,), slot (m,) : the conditional propensity given the earlier slots, and the
        row's slot (0, 1, ... per decision).
    candidates : m arrays (n_d, d_i), each row's decision's candidate features; chosen (m,):
        the shown item's position among them.
    cold (m,) : whether the shown item was cold when it was shown.
    """

    context: np.ndarray
    item_features: np.ndarray
    reward: np.ndarray
    items: np.ndarray | None = None
    weight: np.ndarray | None = None
    pscore: np.ndarray | None = None
    propensity: np.ndarray | None = None
    slot: np.ndarray | None = None
    candidates: list | None = None
    chosen: np.ndarray | None = None
    cold: np.ndarray | None = None


OPTIONAL_INPUTS = ("items", "weight", "pscore", "propensity", "slot", "candidates", "chosen", "cold")


ENVIRONMENT = frozenset({"context_dim", "item_dim", "n_items", "popularity", "item_types", "item_columns", "mc_draws"})
"""The keys of the environment a policy is built with (:func:`banditrec.policies.make`'s
keyword arguments): what a deployment knows -- the context and item feature sizes, the
catalog's size, its items' popularity, product types and business columns, and the
Monte-Carlo draws behind sampled marginals. Every policy takes all of them (one environment
builds any policy; a policy ignores what it does not use) and refuses any other key."""


SENSITIVITY = {"off": 0.0, "low": 0.1, "medium": 0.25, "high": 0.5}
"""Weight ``w`` of the business objective: ``score' = (1 - w) * minmax(score) + w * value``."""


@dataclass(frozen=True)
class PolicyConfig:
    """Base of every policy's immutable configuration; fields are the policy's params.

    epsilon : exploration rate of each slot (score-based policies).
    explore_from : slots before this one do not explore (a per-slot exploration budget: e.g.
        ``explore_from=2`` keeps the first two slots greedy). The serving floor still applies.
    objective : name of a numeric item column (``item_columns`` in the environment) to blend
        into the scores, e.g. ``margin``; empty for none.
    sensitivity : ``off|low|medium|high``, the objective's weight (see ``SENSITIVITY``).
    max_per_type : at most this many items of one product type per slate (0: no limit); needs
        ``item_types`` in the environment. Marginals then come from Monte Carlo (``mc_draws``).
    value : name of a numeric item column (e.g. ``margin``) that multiplies the scores: a policy
        that learns the chance of a purchase (``kind=purchase``) then ranks by expected value,
        ``max(score, 0) x value[item]`` -- the same ranking as learning the reward ``value`` on
        purchase, with one shared model of purchase instead of one per value scale. Applied
        before the ``objective`` blend; empty for none.
    """

    epsilon: float = 0.1
    explore_from: int = 0
    objective: str = ""
    sensitivity: str = "off"
    max_per_type: int = 0
    value: str = ""

    def __post_init__(self):
        e = self.epsilon
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= e <= 1.0:
            raise ValidationError(f"epsilon must be a number in [0, 1], got {e!r}", "epsilon")
        f = self.explore_from
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValidationError(f"explore_from must be an integer >= 0, got {f!r}", "explore_from")
        if self.sensitivity not in SENSITIVITY:
            raise ValidationError(
                f"sensitivity must be one of {', '.join(SENSITIVITY)}, got {self.sensitivity!r}", "sensitivity"
            )
        if self.sensitivity != "off" and not self.objective:
            raise ValidationError(f"sensitivity={self.sensitivity} needs an objective column", "objective")
        m = self.max_per_type
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValidationError(f"max_per_type must be an integer >= 0, got {m!r}", "max_per_type")


def _item_column(columns: dict | None, name: str, field: str) -> np.ndarray:
    columns = columns or {}
    if name not in columns:
        raise ValidationError(
            f"{field} {name!r} is not an item column; known: "
            f"{', '.join(sorted(columns)) or 'none (pass item_columns=...)'}",
            field,
        )
    col = np.asarray(columns[name], dtype=float)
    if col.ndim != 1 or not np.isfinite(col).all():
        raise ValidationError(f"item column {name!r} must be a finite 1-D array", field)
    return col


def slot_counts(n_slots, n_requests: int) -> list[int]:
    """``n_slots`` (one count, or one per request) as a list of ``n_requests`` counts."""
    if isinstance(n_slots, (int, np.integer)) and not isinstance(n_slots, bool):
        return [int(n_slots)] * n_requests
    counts = list(n_slots)
    if len(counts) != n_requests:
        raise ValidationError(
            f"n_slots must be one count or one per request ({n_requests}), got {len(counts)}", "slots"
        )
    return counts


class Policy(ABC):
    """Base class: subclasses set ``name`` and ``Config`` and implement :meth:`scores`; a
    learner implements :meth:`learn` and declares in ``needs`` the optional inputs of
    :class:`Rows` it cannot learn without (callers read ``needs``, never the signature).

    Built as ``Policy(config, **env)`` with keys of :data:`ENVIRONMENT` only: any other key
    raises :class:`ValidationError` naming it and the policy."""

    name: str = ""
    Config: type[PolicyConfig] = PolicyConfig
    needs: frozenset[str] = frozenset()

    def __init__(
        self,
        config: PolicyConfig,
        *,
        item_columns: dict | None = None,
        item_types=None,
        mc_draws: int = DEFAULT_DRAWS,
        **env,
    ):
        # env carries what the deployment knows (ENVIRONMENT): keys a policy does not use are
        # fine, keys no policy knows (a typo, a stale name) are refused
        unknown = sorted(set(env) - ENVIRONMENT)
        if unknown:
            raise ValidationError(
                f"policy {self.name} does not know environment key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; the environment holds: "
                f"{', '.join(sorted(ENVIRONMENT))}",
                "policy",
            )
        self.config = config
        self.n_updates = 0
        self.mc_draws = int(mc_draws)
        # a policy that does not read the context still checks its width when it is known
        self.expected_context_dim = env.get("context_dim")
        self.item_types = None if item_types is None else np.asarray(item_types)
        if config.max_per_type and self.item_types is None:
            raise ValidationError(
                "max_per_type needs each item's product type: make(..., item_types=array)", "max_per_type"
            )
        self.objective_value: np.ndarray | None = None  # (n_items,) the objective column min-max scaled to [0, 1]
        if config.objective:
            col = _item_column(item_columns, config.objective, "objective")
            span = col.max() - col.min() if col.size else 0.0
            self.objective_value = (col - col.min()) / span if span > 0 else np.zeros_like(col)
        self.value_weight: np.ndarray | None = None  # (n_items,) the value column, multiplying the scores
        if config.value:
            self.set_value(_item_column(item_columns, config.value, "value"))

    def set_value(self, values) -> None:
        """Replace the per-item values that multiply the scores (``value`` in the config), e.g.
        when long-term values are re-estimated; they must be finite and >= 0."""
        if not self.config.value:
            raise ValidationError("this policy has no value column (value=COLUMN in its spec)", "value")
        col = np.asarray(values, dtype=float)
        if col.ndim != 1 or not np.isfinite(col).all() or (col < 0).any():
            raise ValidationError(
                f"item column {self.config.value!r} must be a finite 1-D array of values >= 0", "value"
            )
        if self.value_weight is not None and col.shape != self.value_weight.shape:
            raise ValidationError(
                f"values must have one entry per item ({len(self.value_weight)}), got {col.shape}", "value"
            )
        self.value_weight = col

    @property
    def params(self) -> dict:
        """The policy's hyperparameters, as written to the decision log."""
        return asdict(self.config)

    @property
    def spec(self) -> str:
        """A spec string that :func:`banditrec.policies.make` turns back into this config."""
        quiet = {
            "explore_from": 0,
            "objective": "",
            "sensitivity": "off",
            "max_per_type": 0,
            "value": "",
            "gamma": 1.0,
        }  # shown when set
        body = ",".join(f"{k}={v}" for k, v in self.params.items() if quiet.get(k, object()) != v)
        return f"{self.name}:{body}" if body else self.name

    @property
    def model_version(self) -> str:
        return f"{self.name}-{self.n_updates}"

    @abstractmethod
    def scores(self, request: Request) -> np.ndarray:
        """One score per candidate of ``request``, shape (n,); higher is better."""

    def score_terms(self, request: Request, names: FeatureNames) -> ScoreTerms | Unexplained:
        """The exact split of :meth:`scores` into named feature terms and an exploration bonus
        (docs/explanations.md); a policy whose scores have none says why."""
        return Unexplained(f"explanations are not available for {self.name}: its scores are not linear in features")

    def epsilon_per_slot(self, n_slots: int) -> np.ndarray:
        eps = np.full(n_slots, float(self.config.epsilon))
        eps[: self.config.explore_from] = 0.0
        return eps

    def blend(self, request: Request, scores: np.ndarray) -> np.ndarray:
        """Blend the business objective into ``scores`` (before exploration).

        First, with a value column (``value=...``), ``scores`` become :meth:`value_weighted`.
        Then ``(1 - w) * minmax(scores) + w * value[items]`` with ``w = SENSITIVITY[sensitivity]``,
        scores min-max scaled over this request's candidates (all-equal scores become 0) and
        the objective column min-max scaled over the catalog; ``off`` returns the scores of
        the first step. A ``(draws, n)`` array (posterior score samples) is blended row by row.
        """
        if self.value_weight is not None:
            scores = self.value_weighted(scores, request.items)
        w = SENSITIVITY[self.config.sensitivity]
        if w == 0.0:
            return scores
        # along the last axis, so that (draws, n) score samples blend draw by draw
        lo, hi = scores.min(axis=-1, keepdims=True), scores.max(axis=-1, keepdims=True)
        span = hi - lo
        scaled = np.where(span > 0, (scores - lo) / np.where(span > 0, span, 1.0), 0.0)
        assert self.objective_value is not None  # a sensitivity other than off needs an objective column
        return (1.0 - w) * scaled + w * self.objective_value[request.items]

    def value_weighted(self, scores: np.ndarray, items) -> np.ndarray:
        """``max(scores, 0) * value[items]``: a policy's scores weighted by its value column
        (``items`` catalog indices, broadcast against ``scores``)."""
        assert self.value_weight is not None  # only policies with a value column weight their scores
        return np.maximum(scores, 0.0) * self.value_weight[items]

    def distribution(self, request: Request, n_slots: int, min_epsilon: float = 0.0) -> SlateDistribution:
        """The slate distribution over ``request``'s candidates for ``n_slots`` slots.

        ``min_epsilon`` is the serving floor: each slot explores at least that much, so that
        every candidate keeps a probability of at least ``min_epsilon / n_candidates``.
        Score-based policies get an exact :class:`EpsilonGreedySlate`; others override this.
        """
        check_context(request.context, self.expected_context_dim)
        return self.slate_from_scores(request, self.scores(request), n_slots, min_epsilon)

    def distributions(self, requests, n_slots, min_epsilon: float = 0.0) -> list[SlateDistribution]:
        """The slate distributions of many requests: ``[distribution(r, k, min_epsilon) for r, k]``.

        ``n_slots`` is one count for every request or one per request. A policy may override
        this with a vectorised version (scoring every request's candidates in one product); it
        must return exactly what :meth:`distribution` returns request by request -- the same
        rankings and ties, hence the same slates, propensities and marginals for the same draws.
        """
        counts = slot_counts(n_slots, len(requests))
        return [self.distribution(r, k, min_epsilon) for r, k in zip(requests, counts)]

    def slate_from_scores(
        self, request: Request, scores: np.ndarray, n_slots: int, min_epsilon: float = 0.0
    ) -> SlateDistribution:
        """The epsilon-greedy slate distribution (see :meth:`distribution`) given ``request``'s
        scores from :meth:`scores`; the business objective is blended in here."""
        eps = np.maximum(self.epsilon_per_slot(n_slots), min_epsilon)
        scores = self.blend(request, scores)
        if self.config.max_per_type:
            return SequentialSlate(scores, eps, kind="greedy", draws=self.mc_draws, **self.type_cap(request))
        return EpsilonGreedySlate(scores, eps)

    def type_cap(self, request: Request) -> dict:
        """Keyword arguments that apply the diversity rule to a slate distribution."""
        if not self.config.max_per_type:
            return {}
        assert self.item_types is not None  # __init__ refuses max_per_type without item types
        return {"types": self.item_types[request.items], "max_per_type": self.config.max_per_type}

    def update(
        self,
        context: np.ndarray,
        item_features: np.ndarray,
        reward: np.ndarray,
        *,
        items: np.ndarray | None = None,
        weight: np.ndarray | None = None,
        pscore: np.ndarray | None = None,
        propensity: np.ndarray | None = None,
        slot: np.ndarray | None = None,
        candidates: list | None = None,
        chosen: np.ndarray | None = None,
        cold: np.ndarray | None = None,
    ) -> None:
        """Learn from ``m`` logged rows: the one update signature of every policy.

        Subclasses do not override it (they implement :meth:`learn`), so every policy accepts
        every input below; a policy reads what it learns from and ignores the rest. An input
        named in the policy's ``needs`` that is missing raises, saying why it is needed. Fixed
        policies learn nothing, but still refuse rows a learner would refuse, so bad input is
        caught whatever is served. Callers holding logged decisions use
        :func:`banditrec.offline.learn_from_log`, which builds these inputs.

        Parameters
        ----------
        context : (m, d_c) float
            Each row's decision context.
        item_features : (m, d_i) float
            The shown item's features.
        reward : (m,) float
            The row's reward.
        items : (m,) int, optional
            Catalog indices of the shown items (per-item models need them).
        weight : (m,) float, optional
            Importance weights for batch training on rows logged by another policy (a
            weighted ridge: each row counts ``weight`` times); ``None`` counts every row once.
        pscore : (m,) float, optional
            The logged marginal P(slot k holds the item | context).
        propensity : (m,) float, optional
            The logged conditional propensity given the earlier slots.
        slot : (m,) int, optional
            The row's slot (0, 1, ... per decision).
        candidates : list of m (n_d, d_i) float arrays, optional
            Each row's decision's candidate features.
        chosen : (m,) int, optional
            The shown item's position among ``candidates``.
        cold : (m,) bool, optional
            Whether the shown item was cold (no interaction history) when it was shown.

        Raises
        ------
        ValidationError
            Rows of the wrong shape or values, or an input of ``needs`` missing; nothing is
            learned then.
        """
        self.learn(
            Rows(
                context,
                item_features,
                reward,
                items=items,
                weight=weight,
                pscore=pscore,
                propensity=propensity,
                slot=slot,
                candidates=candidates,
                chosen=chosen,
                cold=cold,
            )
        )

    def learn(self, rows: Rows) -> None:
        """Learn from ``rows`` (checked by the policy). Fixed policies only check them."""
        check_rows(rows.context, rows.item_features, rows.reward, context_dim=self.expected_context_dim)
        check_weight(rows.weight, len(np.atleast_1d(np.asarray(rows.reward))))

    # ---- snapshots ----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The learned state as ``(arrays, meta)``; fixed policies have none."""
        return {}, {}

    def set_state(self, arrays: Mapping[str, np.ndarray | bytes], meta: dict) -> None:
        """Restore :meth:`state` (after construction with the same config and environment)."""
        if arrays:
            raise ValidationError(f"policy {self.name} keeps no arrays, the snapshot has {sorted(arrays)}", "snapshot")

    def save(self, path, *, provenance: dict | None = None) -> Path:
        """Write a snapshot (``.npz`` + ``.json`` manifest, atomic; see :mod:`.snapshot`);
        ``provenance``: integers saying where it came from (e.g. ``trained_until_seq``)."""
        arrays, meta = self.state()
        return snapshot.save(
            path,
            name=self.name,
            params=self.params,
            model_version=self.model_version,
            arrays=arrays,
            meta={**meta, "n_updates": int(self.n_updates)},
            provenance=provenance,
        )
