"""Input checks of the log's write path that need no database: each raises
:class:`~banditrec.errors.ValidationError` naming the field and what was found."""

from __future__ import annotations

import json
import math

import numpy as np

from ..errors import ValidationError
from ..types import Reward
from .codecs import WHOLE_DECISION

MAX_ABS_REWARD = 1e12  # beyond this a reward is a unit or encoding mistake, and it would
# overflow a learner's sums of squares


def check_name(value, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field} must be a non-empty string, got {value!r}", field)
    return value


def check_time(value, field: str) -> float:
    """``value`` as a finite number of seconds; a :class:`ValidationError` on ``field`` if not."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{field} must be a number of seconds, got {value!r}", field) from None
    if not math.isfinite(out):
        raise ValidationError(f"{field} must be finite, got {value!r}", field)
    return out


def check_count(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValidationError(f"{field} must be a non-negative integer, got {value!r}", field)
    return int(value)


def json_object(value, field: str) -> str:
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be a dict, got {type(value).__name__}", field)
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{field} must be JSON-serialisable with finite numbers: {exc}", field) from None


def checked_reward(reward: Reward) -> tuple[int, float]:
    """The checks of a reward that need no database: ``(position, ts)``."""
    if not math.isfinite(reward.value) or abs(reward.value) > MAX_ABS_REWARD:
        raise ValidationError(
            f"reward must be a finite number within +-{MAX_ABS_REWARD:g}, got {reward.value!r}", "reward"
        )
    position = WHOLE_DECISION if reward.position is None else int(reward.position)
    return position, check_time(reward.ts, "ts")
