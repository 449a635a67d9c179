"""Off-policy evaluation: estimators as small classes over ``LoggedBandit`` arrays."""

from ..types import Estimate, LoggedBandit
from .estimators import ESTIMATORS, IPS, SNIPS, resolve_target_pscore

__all__ = ["ESTIMATORS", "Estimate", "IPS", "LoggedBandit", "SNIPS", "resolve_target_pscore"]
