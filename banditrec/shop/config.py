"""The build configuration: which columns play which role, which event types count as what,
the feature and candidate-model settings. One frozen object; a TOML file overrides defaults.

Every key is documented in ``docs/data-formats.md``; an unknown key or a bad value is an error
that names it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..candidates.hybrid import DEFAULT_QUOTAS
from ..errors import ValidationError

CONTEXT_FEATURES = ("segment", "user_numeric", "taste", "recency", "time", "reorder")
EVENT_KINDS = ("view", "cart", "purchase")


def _tuple(value, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{key} must be a list of strings, got {value!r}", key)
    return tuple(value)


@dataclass(frozen=True)
class BuildConfig:
    """Settings of ``banditrec build`` (see ``docs/data-formats.md`` for every key)."""

    # [interactions]: which event_type values count as which kind; others are counted and left out
    view_events: tuple[str, ...] = ("view", "detail", "detail_view", "pageview", "page_view", "click", "rating")
    cart_events: tuple[str, ...] = ("cart", "add_to_cart", "addtocart", "basket")
    purchase_events: tuple[str, ...] = ("purchase", "buy", "order", "transaction", "checkout")
    timestamp_unit: str = "s"
    session_gap_minutes: float = 30.0
    # [items]
    text_columns: tuple[str, ...] | None = None  # default: title, description, when present
    categorical_columns: tuple[str, ...] | None = None  # default: the other text columns
    numeric_columns: tuple[str, ...] | None = None  # default: every column whose cells are numbers
    not_features: tuple[str, ...] = ()  # columns kept as attributes but not turned into features
    consumable_types: tuple[str, ...] = ()  # product types bought again (not filtered once bought)
    metadata_fields: tuple[str, ...] | None = None  # categorical columns of metadata similarity (default: all)
    # [users]
    segment_column: str = "segment"
    # [features]
    item_dim: int = 16
    max_categories: int = 16
    text_dims: int = 4
    # [context]
    context_features: tuple[str, ...] = CONTEXT_FEATURES
    request_fields: dict = field(default_factory=lambda: {"device": ("desktop", "mobile", "app")})
    encoding: str | None = None  # a `banditrec import` context-encoding JSON: its columns become request fields
    # [candidates]
    n_neighbors: int = 50
    weighting: str = "cosine"
    half_life_days: float = 30.0
    window_days: float = 7.0
    max_per_type: int = 5
    type_decay: float = 0.7
    min_new: int = 1
    weights: dict = field(default_factory=dict)
    new_item_days: float = 30.0  # an item created this recently and without interactions is "new"
    quotas: dict = field(default_factory=lambda: dict(DEFAULT_QUOTAS))
    # [factors]: latent factors (implicit's ALS or BPR; "none" leaves them out)
    factors_model: str = "als"
    factors_dim: int = 32
    embedding_dim: int = 8  # the factors' leading directions appended to the item features (0: none)
    seed: int = 0
    # [graph]
    brand_column: str = "brand"
    # [build]
    keep_builds: int = 5

    def __post_init__(self) -> None:
        for name in (
            "view_events",
            "cart_events",
            "purchase_events",
            "not_features",
            "consumable_types",
            "context_features",
        ):
            object.__setattr__(self, name, _tuple(getattr(self, name), name))
        for name in ("text_columns", "categorical_columns", "numeric_columns", "metadata_fields"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _tuple(getattr(self, name), name))
        seen: dict[str, str] = {}
        for kind in EVENT_KINDS:
            for v in getattr(self, f"{kind}_events"):
                if v.lower() in seen:
                    raise ValidationError(
                        f"event type {v!r} is listed as both {seen[v.lower()]} and {kind}", f"{kind}_events"
                    )
                seen[v.lower()] = kind
        if self.timestamp_unit not in ("s", "ms"):
            raise ValidationError(f'timestamp_unit must be "s" or "ms", got {self.timestamp_unit!r}', "timestamp_unit")
        bad = [f for f in self.context_features if f not in CONTEXT_FEATURES]
        if bad:
            raise ValidationError(
                f"context_features: unknown {bad[0]!r}; known: {', '.join(CONTEXT_FEATURES)}", "context_features"
            )
        fields: dict[str, str | tuple[str, ...]] = {}
        for name, vocab in dict(self.request_fields).items():
            if vocab == "number":
                fields[name] = "number"
            else:
                fields[name] = _tuple(vocab, f"request_fields.{name}")
                if not fields[name]:
                    raise ValidationError(
                        f'request_fields.{name} needs at least one value (or "number")', f"request_fields.{name}"
                    )
        object.__setattr__(self, "request_fields", fields)
        for name, low in (
            ("item_dim", 1),
            ("max_categories", 1),
            ("text_dims", 0),
            ("n_neighbors", 1),
            ("max_per_type", 1),
            ("min_new", 0),
            ("keep_builds", 1),
            ("factors_dim", 1),
            ("embedding_dim", 0),
            ("seed", 0),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValidationError(f"{name} must be an integer >= {low}, got {v!r}", name)
        for name in ("half_life_days", "window_days", "session_gap_minutes", "new_item_days"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValidationError(f"{name} must be a number > 0, got {v!r}", name)
        if self.factors_model not in ("als", "bpr", "none"):
            raise ValidationError(
                f'factors_model must be "als", "bpr" or "none", got {self.factors_model!r}', "factors_model"
            )
        if self.embedding_dim > self.factors_dim:
            raise ValidationError(
                f"embedding_dim ({self.embedding_dim}) must not exceed factors_dim ({self.factors_dim})",
                "embedding_dim",
            )
        if not isinstance(self.quotas, dict):
            raise ValidationError(f"quotas must be a table of source = count, got {self.quotas!r}", "quotas")
        if not 0 < self.type_decay <= 1:
            raise ValidationError(f"type_decay must be in (0, 1], got {self.type_decay!r}", "type_decay")

    def event_kind(self) -> dict[str, str]:
        """event_type (lower case) -> view, cart or purchase."""
        return {v.lower(): kind for kind in EVENT_KINDS for v in getattr(self, f"{kind}_events")}

    def as_json(self) -> dict:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_toml(cls, path) -> BuildConfig:
        """Read a TOML file: keys at the top level or under any table ([items], [candidates], ...)."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ValidationError(f"cannot read the build config {path}: {exc.strerror}", "config") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError(f"{Path(path).name}: not valid TOML: {exc}", "config") from None
        known = {f.name for f in dataclasses.fields(cls)}
        flat: dict = {}
        for key, value in raw.items():
            if isinstance(value, dict) and key not in known:
                for k, v in value.items():
                    _put(flat, k, v, known, f"[{key}] {k}", path)
            else:
                _put(flat, key, value, known, key, path)
        try:
            return cls(**flat)
        except TypeError as exc:
            raise ValidationError(f"{Path(path).name}: {exc}", "config") from None

    @classmethod
    def from_json(cls, data: dict) -> BuildConfig:
        return cls(**data)


def _put(flat: dict, key: str, value, known: set, where: str, path) -> None:
    if key not in known:
        raise ValidationError(f"{Path(path).name}: unknown setting {where}; see docs/data-formats.md", key)
    if key in flat:
        raise ValidationError(f"{Path(path).name}: {key} is set twice", key)
    flat[key] = value
