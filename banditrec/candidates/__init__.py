"""Candidate generation: which items a policy may choose from for a request."""

from .itemknn import SOURCE_CF, SOURCE_POPULAR, ItemItemCF

__all__ = ["ItemItemCF", "SOURCE_CF", "SOURCE_POPULAR"]
