"""Candidate generation: which items a policy may choose from for a request (item-item CF,
pair signals, directional complements, metadata neighbours, the generator, business rules).

Details: docs/candidates.md, "The package (`candidates/__init__.py`)".
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
