"""Candidate generation: which items a policy may choose from for a request.

* :class:`ItemItemCF` — item-to-item CF (cosine, tf-idf, BM25) on a users x items csr matrix.
* :class:`Interactions`, :func:`pair_signals` — events and the co-view, view-then-buy and
  co-purchase signals.
* :class:`ComplementModel` — directional complements from co-purchase-only pairs, with a
  product-type transition matrix.
* :class:`MetadataIndex` — hashed TF-IDF over titles and categorical fields plus numeric
  attributes: neighbours for items without interactions (cold start).
* :class:`CandidateGenerator` — a request's candidates from complements of the cart and recent
  purchases, neighbours of recent views, new items and popular-in-segment items, filtered by
  business rules (:class:`Filters` of :class:`Rule`) and spread across product types.

The engine asks a :class:`CandidateSource` (any object with ``candidates_for_session``; both
:class:`ItemItemCF` and :class:`CandidateGenerator` are) for a request's candidates.

Every fitted model saves to plain arrays and JSON metadata (``to_arrays`` / ``from_arrays``).
Scale, the saved format and growing catalogs: ``docs/candidates.md``.
"""

from .complements import ComplementModel
from .generator import SOURCES, STEPS, CandidateGenerator
from .itemknn import SOURCE_CF, SOURCE_POPULAR, ItemItemCF
from .metadata import MetadataIndex
from .rules import AlreadyBought, ExcludeCategories, Filters, OutOfStock, Rule, UserState, diversify
from .signals import Interactions, PairSignals, pair_signals
from .source import CandidateSource, SessionItems

__all__ = [
    "AlreadyBought",
    "CandidateGenerator",
    "CandidateSource",
    "ComplementModel",
    "ExcludeCategories",
    "Filters",
    "Interactions",
    "ItemItemCF",
    "MetadataIndex",
    "OutOfStock",
    "PairSignals",
    "Rule",
    "SOURCES",
    "SOURCE_CF",
    "SOURCE_POPULAR",
    "STEPS",
    "SessionItems",
    "UserState",
    "diversify",
    "pair_signals",
]
