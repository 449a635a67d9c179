"""Request and response models (pydantic): the only place request shapes are defined."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

# strict: a JSON number only (ints are fine); no numeric strings, no booleans, no NaN or infinities
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
ItemId = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Kind = Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    slots: Annotated[StrictInt, Field(ge=1, le=100)]
    context: Annotated[list[FiniteFloat], Field(max_length=4096)] | None = None
    candidates: Annotated[list[ItemId], Field(min_length=1, max_length=10_000)] | None = None
    exclude: Annotated[list[ItemId], Field(max_length=10_000)] | None = None
    surface: Annotated[StrictStr, Field(min_length=1, max_length=64)] = "home"


class SlotOut(BaseModel):
    position: int
    item_id: str
    propensity: float
    marginal: float
    source: str


class DecideResponse(BaseModel):
    event_id: str
    policy: str
    model_version: str
    slots: list[SlotOut]


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    reward: FiniteFloat
    position: Annotated[StrictInt, Field(ge=0)] | None = None
    kind: Kind = "click"


class RewardResponse(BaseModel):
    event_id: str
    position: int | None
    kind: str
    # "late": recorded after the decision's reward window, flagged, and not learned from
    status: Literal["recorded", "duplicate", "late"]
