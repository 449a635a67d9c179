"""Off-policy evaluation: estimators as small classes over ``LoggedBandit`` arrays."""

from ..types import Estimate, LoggedBandit
from .estimators import (
    DM,
    DR,
    ESTIMATORS,
    IPS,
    SNDR,
    SNIPS,
    ClippedIPS,
    OPEWarning,
    Replay,
    SlatePI,
    SwitchDR,
    Terms,
    resolve_target_pscore,
)
from .ranking import RankingMetrics, coverage, ranking_metrics, ranking_metrics_per_user
from .reward_model import (
    REWARD_MODELS,
    GBTRewardModel,
    LogisticRewardModel,
    RewardModel,
    RidgeRewardModel,
    make_reward_model,
)

__all__ = [
    "DM",
    "DR",
    "ESTIMATORS",
    "GBTRewardModel",
    "IPS",
    "LogisticRewardModel",
    "REWARD_MODELS",
    "RewardModel",
    "make_reward_model",
    "SNDR",
    "SNIPS",
    "ClippedIPS",
    "Estimate",
    "LoggedBandit",
    "OPEWarning",
    "RankingMetrics",
    "Replay",
    "RidgeRewardModel",
    "SlatePI",
    "SwitchDR",
    "Terms",
    "coverage",
    "ranking_metrics",
    "ranking_metrics_per_user",
    "resolve_target_pscore",
]
