"""The service's settings: one small immutable object, from arguments or the environment
(the ``BANDITREC_*`` variables ``banditrec serve`` passes to its gunicorn workers).

Details: docs/service.md, "Settings (`service/config.py`)".
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..apprentice import Arms
from ..errors import ValidationError
from ..store.checks import MAX_ABS_REWARD
from ..store.modes import check_mode
from ..store.shards import MAX_SHARD, check_shard

MIN_TOKEN_CHARS = 16
HIDE_WINDOW_S = 30 * 86400.0  # a hide without its own ttl_s lasts this long
MAX_HIDE_TTL_S = 10 * 365 * 86400.0


def check_token(token, source: str) -> str:
    """``token`` if it can serve as the API token: a string of at least ``MIN_TOKEN_CHARS``
    characters without whitespace (surrounding whitespace, such as a file's final newline, is
    removed first); else a ``ValidationError`` naming ``source``. An empty token is an error,
    never "no auth"."""
    if not isinstance(token, str):
        raise ValidationError(f"the API token from {source} must be a string, got {type(token).__name__}", source)
    text = token.strip()
    if not text:
        raise ValidationError(
            f"the API token from {source} is empty; it needs at least {MIN_TOKEN_CHARS} "
            f"characters (an empty token would leave every route open)",
            source,
        )
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValidationError(f"the API token from {source} holds whitespace or control characters", source)
    if len(text) < MIN_TOKEN_CHARS:
        raise ValidationError(
            f"the API token from {source} has {len(text)} characters; it needs at least {MIN_TOKEN_CHARS} characters",
            source,
        )
    return text


def read_token_file(path) -> str:
    """The token in the file ``path`` (see :func:`check_token`)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read the token file {path}: {exc}", "token_file") from None
    return check_token(text, f"the token file {path}")


def _int(env, name: str, default: int, low: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer, got {raw!r}", name) from None
    if value < low:
        raise ValidationError(f"{name} must be >= {low}, got {value}", name)
    return value


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of one app.

    ``token``: the bearer token; ``None`` leaves every route open, which is for in-process use
    (tests, the demo's test client) -- ``banditrec serve`` always sets one.

    ``shard``: this node's log shard when several nodes serve behind a load balancer (each node
    logs to its own file; docs/deployment.md); ``None``: the log's own (unsharded by default).

    Negative feedback (docs/feedback.md): ``hide_window_s`` is how long a hide event without
    its own ``ttl_s`` suppresses its item; ``hide_reward`` (``None``: off) is the reward of kind
    ``hide_reward_kind`` recorded for the slot a hide event names.
    """

    token: str | None = None
    decide_requires_auth: bool = False
    max_body_bytes: int = 1 << 20
    max_batch_bytes: int = 16 << 20
    batch_max: int = 256
    snapshots: str | None = None
    reload_check_ms: int = 1000
    durable: bool = False
    defer_marginals: bool = True  # Monte-Carlo propensities logged off the request path (Engine.defer_marginals)
    shard: int | None = None
    # apprentice mode and the analysis holdout (banditrec/apprentice.py; docs/production.md): the
    # mode a log without a recorded switch starts in, and the holdout's and control arm's shares
    mode: str = "live"
    holdout: float = 0.0
    control: float = 0.0
    salt: str = "banditrec-holdout"
    hide_window_s: float = HIDE_WINDOW_S
    hide_reward: float | None = None
    hide_reward_kind: str = "click"
    # a file `banditrec monitor --prom` writes: /metrics serves its gauges beside the service's own
    monitor_prom: str | None = None

    @property
    def synchronous(self) -> str:
        """The decision log's ``PRAGMA synchronous``: ``FULL`` when durable, else ``NORMAL``."""
        return "FULL" if self.durable else "NORMAL"

    def __post_init__(self):
        if self.token is not None:
            object.__setattr__(self, "token", check_token(self.token, "token"))
        for name in ("max_body_bytes", "max_batch_bytes", "batch_max"):
            if getattr(self, name) < 1:
                raise ValidationError(f"{name} must be >= 1, got {getattr(self, name)}", name)
        if self.shard is not None:
            check_shard(self.shard)
        check_mode(self.mode)
        self.arms()  # checks the shares and the salt
        if self.reload_check_ms < 0:
            raise ValidationError(f"reload_check_ms must be >= 0, got {self.reload_check_ms}", "reload_check_ms")
        window = self.hide_window_s
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window <= MAX_HIDE_TTL_S:
            raise ValidationError(
                f"hide_window_s must be a number of seconds in (0, {MAX_HIDE_TTL_S:g}], got {window!r}", "hide_window_s"
            )
        reward = self.hide_reward
        if reward is not None and (
            isinstance(reward, bool)
            or not isinstance(reward, (int, float))
            or not math.isfinite(reward)
            or abs(reward) > MAX_ABS_REWARD
        ):
            raise ValidationError(
                f"hide_reward must be a finite number within +-{MAX_ABS_REWARD:g} or None, got {reward!r}",
                "hide_reward",
            )
        if not isinstance(self.hide_reward_kind, str) or not re.fullmatch(
            r"[a-z][a-z0-9_]{0,31}", self.hide_reward_kind
        ):
            raise ValidationError(
                f"hide_reward_kind must be a reward kind such as 'click', got {self.hide_reward_kind!r}",
                "hide_reward_kind",
            )

    def arms(self) -> Arms:
        """The analysis holdout these settings configure."""
        return Arms(holdout=self.holdout, control=self.control, salt=self.salt)

    @classmethod
    def from_env(cls, env=None) -> ServiceConfig:
        env = os.environ if env is None else env
        token = None
        if env.get("BANDITREC_API_TOKEN") is not None:  # set, even to "": it must be a token
            token = check_token(env["BANDITREC_API_TOKEN"], "BANDITREC_API_TOKEN")
        elif env.get("BANDITREC_API_TOKEN_FILE") is not None:
            token = read_token_file(env["BANDITREC_API_TOKEN_FILE"])
        return cls(
            token=token,
            decide_requires_auth=env.get("BANDITREC_DECIDE_AUTH", "0") not in ("", "0", "false", "no"),
            max_body_bytes=_int(env, "BANDITREC_MAX_BODY_BYTES", 1 << 20, 1),
            max_batch_bytes=_int(env, "BANDITREC_MAX_BATCH_BYTES", 16 << 20, 1),
            batch_max=_int(env, "BANDITREC_BATCH_MAX", 256, 1),
            snapshots=env.get("BANDITREC_SNAPSHOTS") or None,
            reload_check_ms=_int(env, "BANDITREC_RELOAD_CHECK_MS", 1000, 0),
            durable=env.get("BANDITREC_DURABLE", "0") not in ("", "0", "false", "no"),
            defer_marginals=env.get("BANDITREC_EAGER_MARGINALS", "0") in ("", "0", "false", "no"),
            shard=_shard(env),
            mode=env.get("BANDITREC_MODE") or "live",
            holdout=_share(env, "BANDITREC_HOLDOUT"),
            control=_share(env, "BANDITREC_CONTROL"),
            salt=env.get("BANDITREC_SALT") or "banditrec-holdout",
            hide_window_s=_float(env, "BANDITREC_HIDE_WINDOW_S", HIDE_WINDOW_S),
            hide_reward=_float(env, "BANDITREC_HIDE_REWARD", None),
            hide_reward_kind=env.get("BANDITREC_HIDE_REWARD_KIND") or "click",
            monitor_prom=env.get("BANDITREC_MONITOR_PROM") or None,
        )


def _share(env, name: str) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a number in [0, 1], got {raw!r}", name) from None
    if not 0.0 <= value <= 1.0:
        raise ValidationError(f"{name} must be a number in [0, 1], got {raw!r}", name)
    return value


def _float(env, name: str, default):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a number, got {raw!r}", name) from None


def _shard(env) -> int | None:
    raw = env.get("BANDITREC_SHARD")
    if raw is None or raw == "":
        return None
    value = _int(env, "BANDITREC_SHARD", 0, 0)
    if value > MAX_SHARD:
        raise ValidationError(f"BANDITREC_SHARD must be <= {MAX_SHARD}, got {value}", "BANDITREC_SHARD")
    return value
