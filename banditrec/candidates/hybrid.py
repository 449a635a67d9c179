"""The other brains beside a fitted :class:`CandidateGenerator`: latent factors, reorder
timing and the product graph, fitted on the same events and plugged into the generator as
its ``factors``, ``reorder`` and ``accessory`` sources.

Details: docs/candidates.md, "Hybrid: every brain, with quotas".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError
from .factors import MODELS, LatentFactors
from .generator import CandidateGenerator
from .graph import GraphParams, ProductGraph, fit_graph
from .itemknn import _usable_cpus
from .reorder import ReorderModel
from .signals import Interactions

DEFAULT_QUOTAS = {"factors": 2, "reorder": 2, "accessory": 1}
"""Candidates kept per request from each of the other brains when it has any (``quotas``)."""


@dataclass(frozen=True)
class BrainSettings:
    """What :func:`fit_brains` fits. ``factors_model``: "als", "bpr" or "none"; ``factors_dim``:
    latent dimensions; ``seed``: the factors' initial draw; ``num_threads``: ALS's (None: the
    CPUs this process may use; ALS's result does not depend on it, BPR always runs on one);
    ``graph``: the product graph's thresholds (None: its defaults)."""

    factors_model: str = "als"
    factors_dim: int = 32
    seed: int = 0
    num_threads: int | None = None
    reorder: bool = True
    graph: GraphParams | None = None

    def __post_init__(self) -> None:
        if self.factors_model not in (*MODELS, "none"):
            raise ValidationError(
                f"factors_model must be one of {', '.join(MODELS)} or none; got {self.factors_model!r}",
                "factors_model",
            )


@dataclass
class Brains:
    factors: LatentFactors | None
    reorder: ReorderModel | None
    graph: ProductGraph


def fit_brains(
    generator: CandidateGenerator,
    events: Interactions,
    types,
    *,
    consumable=None,
    brand=None,
    price=None,
    now: float | None = None,
    settings: BrainSettings | None = None,
    typed: bool = True,
) -> Brains:
    """Fit the latent factors, the reorder model (when some type is ``consumable``, a bool per
    type) and the product graph on ``events``, and plug them into the fitted ``generator``.

    The factors learn from the same recency-weighted user x item matrix as item-item CF. The
    generator's ``accessory`` table is the graph's ``accessory_of`` edges reversed (from the
    main item to its accessories), so a cart or a purchase seeds its accessories. ``typed``:
    False when the catalog has no product types (``types`` all 0): no ``same_type`` edges."""
    settings = settings or BrainSettings()
    if not generator.fitted:
        raise ValidationError("fit the CandidateGenerator before its brains", "generator")
    types = np.asarray(types, dtype=np.int64)
    now = float(events.ts.max()) if now is None and len(events) else float(now or 0.0)
    factors = None
    if settings.factors_model != "none":
        X = events.user_items(None, half_life_s=generator.half_life_s, now=now)
        factors = LatentFactors(
            settings.factors_model,
            settings.factors_dim,
            random_state=settings.seed,
            num_threads=settings.num_threads or _usable_cpus(),
        ).fit(X, active=generator.active)
    reorder = None
    if settings.reorder and consumable is not None and np.asarray(consumable, dtype=bool).any():
        reorder = ReorderModel().fit(
            events, types, np.asarray(consumable, dtype=bool), now=now, active=generator.active
        )
    graph = fit_graph(events, types if typed else None, generator, brand=brand, price=price, params=settings.graph)
    generator.factors, generator.reorder = factors, reorder
    generator.accessory = graph.edge_matrix("accessory_of").T.tocsr()
    return Brains(factors, reorder, graph)


def factor_embedding(factors: LatentFactors, dim: int, previous=None, active=None) -> np.ndarray:
    """(n_items, dim) policy features from the item factors: their ``dim`` leading principal
    directions (of :meth:`LatentFactors.item_embedding`), each column's sign set so that its
    largest entry is positive.

    Features are frozen across rebuilds, as the catalog's are (a policy's learned weights
    keep their meaning): with ``previous`` (the last build's embedding, ``(n_previous, dim)``,
    same item order) the items it holds keep their rows, and the new items get theirs from
    the refitted factors rotated onto the old ones by orthogonal Procrustes over the items
    both hold (active ones), since refitted factors are the old ones up to a rotation at
    best."""
    from scipy.linalg import orthogonal_procrustes

    E = np.asarray(factors.item_embedding(), dtype=float)
    _, _, vt = np.linalg.svd(E, full_matrices=False)
    Z = E @ vt[:dim].T
    if Z.shape[1] < dim:  # fewer factors than asked for: zero columns keep the width
        Z = np.hstack([Z, np.zeros((len(Z), dim - Z.shape[1]))])
    peak = np.argmax(np.abs(Z), axis=0)
    sign = np.sign(Z[peak, np.arange(dim)])
    Z *= np.where(sign == 0, 1.0, sign)
    if previous is not None:
        prev = np.asarray(previous, dtype=float)
        if prev.ndim == 2 and prev.shape[1] == dim and len(prev):
            m = min(len(prev), len(Z))
            both = np.ones(m, bool) if active is None else np.asarray(active, dtype=bool)[:m]
            if both.sum() >= dim:
                R, _ = orthogonal_procrustes(Z[:m][both], prev[:m][both])
                Z = Z @ R
            Z[:m] = prev[:m]
    return Z
