"""Request and response models (pydantic): the only place request shapes are defined."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    StrictStr,
    model_serializer,
)

from ..store.checks import MAX_ABS_REWARD
from .config import MAX_HIDE_TTL_S

BATCH_HARD_MAX = 10_000  # the configured batch_max (ServiceConfig) is checked below this

# strict: a JSON number only (ints are fine); no numeric strings, no booleans, no NaN or infinities
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
ItemId = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Kind = Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class DecideRequest(BaseModel):
    """One carousel to fill. ``candidates`` absent: the candidate generator proposes them from
    the user's history and session (recent ``/v1/events``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    slots: Annotated[StrictInt, Field(ge=1, le=100)]
    # a list of numbers (an engine without context features), or the named fields of a shop's
    # context (docs/data-formats.md), e.g. {"device": "mobile"}
    context: (
        Annotated[list[FiniteFloat], Field(max_length=4096)]
        | Annotated[
            dict[
                Annotated[StrictStr, Field(min_length=1, max_length=64)],
                Annotated[StrictStr, Field(max_length=256)] | FiniteFloat,
            ],
            Field(max_length=256),
        ]
        | None
    ) = None
    candidates: Annotated[list[ItemId], Field(min_length=1, max_length=10_000)] | None = None
    # with candidates: the source that proposed each (logged; `banditrec ablation` reads it)
    candidate_sources: (
        Annotated[list[Annotated[StrictStr, Field(min_length=1, max_length=64)]], Field(max_length=10_000)] | None
    ) = None
    exclude: Annotated[list[ItemId], Field(max_length=10_000)] | None = None
    surface: Annotated[StrictStr, Field(min_length=1, max_length=64)] = "home"
    # promotions that take the first slots in this order (propensity 1, never learned from)
    pinned: Annotated[list[ItemId], Field(max_length=100)] | None = None
    # items the policy must consider: added to the candidates with source "promoted"
    promoted: Annotated[list[ItemId], Field(max_length=1_000)] | None = None
    # the shop's own ranking, best first: served as it is in apprentice mode and to the control
    # arm, while the policy's draw is logged (docs/production.md); ignored otherwise
    baseline: Annotated[list[ItemId], Field(min_length=1, max_length=10_000)] | None = None
    # true: each slot of the response carries its `explanation` (docs/explanations.md); not in a batch
    explain: StrictBool = False


class ContributionOut(BaseModel):
    """One named term of a score: ``ctx:device=mobile × item:price`` is the context field's value
    times the item attribute's times their learned coefficient; ``other`` sums the terms left out."""

    feature: str
    value: float


class ExplanationOut(BaseModel):
    """Why a slot's item scored what it did (with ``explain: true``; docs/explanations.md).

    ``available``: ``score == base + bonus + objective`` to floating tolerance, ``base`` is the
    sum of ``contributions`` (the largest by magnitude, then ``other``); ``score`` is what the
    sampler ranked by; ``bonus`` the exploration part of kind ``kind`` (``ucb``: the confidence
    width, ``posterior-draw``: a Thompson draw minus the mean, ``none``, ``vw-audit``);
    ``objective`` what the business blend added. Not available (a policy without a linear score,
    a pinned slot): ``why`` says so and the numbers are ``null``. ``why`` may also qualify an
    available explanation."""

    available: bool
    kind: str | None
    score: float | None
    base: float | None
    bonus: float | None
    objective: float | None
    contributions: list[ContributionOut]
    why: str | None


class SlotOut(BaseModel):
    """``propensity``: P(item | earlier slots) at decision time; ``marginal``: P(this slot holds
    this item); ``source``: where the candidate came from (cf, popular, request, pinned). A
    Monte-Carlo value is ``null`` in the response: the service logs it after answering
    (docs/policies.md, "Deferred marginals")."""

    position: int
    item_id: str
    propensity: float | None
    marginal: float | None
    source: str
    explanation: ExplanationOut | None = None  # present only when the request asked to explain

    @model_serializer(mode="wrap")
    def _absent_without_explain(self, handler: SerializerFunctionWrapHandler) -> dict:
        out = handler(self)
        if self.explanation is None:  # the answer without explain has no such key
            out.pop("explanation", None)
        return out


class DecideResponse(BaseModel):
    event_id: str
    policy: str
    model_version: str
    shop_build: str | None  # the shop-directory build that served it (None: not served from one)
    # what filled the slots: the policy, or the request's baseline (apprentice mode, control arm)
    served: Literal["policy", "baseline"]
    arm: Literal["main", "holdout", "control"]  # the user's analysis group
    slots: list[SlotOut]


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    # the log's bound (beyond it a reward is a unit or encoding mistake)
    reward: Annotated[FiniteFloat, Field(ge=-MAX_ABS_REWARD, le=MAX_ABS_REWARD)]
    position: Annotated[StrictInt, Field(ge=0)] | None = None
    kind: Kind = "click"


class RewardResponse(BaseModel):
    event_id: str
    position: int | None
    kind: str
    # "late": recorded after the decision's reward window, flagged, and not learned from;
    # "routed": the decision is another shard's, the reward is kept here for compaction to join
    status: Literal["recorded", "duplicate", "late", "routed"]


class BatchDecideRequest(BaseModel):
    """Up to the configured ``batch_max`` decide requests, logged in one transaction."""

    model_config = ConfigDict(extra="forbid", strict=True)

    requests: Annotated[list[DecideRequest], Field(min_length=1, max_length=BATCH_HARD_MAX)]


class BatchDecideResponse(BaseModel):
    decisions: list[DecideResponse]


class EventRequest(BaseModel):
    """An interaction (view, cart, purchase): it joins the user's session at once, for every
    serving process. Or negative feedback (``hide``, or its synonym ``not_interested``): the
    user's decisions leave out the item (``scope`` ``"type"``: every item of its product type)
    for ``ttl_s`` seconds from ``ts`` (absent: the service's ``hide_window_s``); with
    ``event_id``, the slot that showed it (``position``, or found by its item) may get the
    configured negative reward (docs/feedback.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    item_id: ItemId
    kind: Literal["view", "cart", "purchase", "hide", "not_interested"]
    # seconds since the epoch; absent: now
    ts: Annotated[float, Field(allow_inf_nan=False, strict=True, ge=0, le=1e11)] | None = None
    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    # hide and not_interested only
    scope: Literal["item", "type"] | None = None
    ttl_s: Annotated[float, Field(allow_inf_nan=False, strict=True, gt=0, le=MAX_HIDE_TTL_S)] | None = None
    position: Annotated[StrictInt, Field(ge=0)] | None = None


class EventResponse(BaseModel):
    """``scope`` and ``expires_ts`` (when its suppression ends) for a hide, else ``null``;
    ``reward_status``: the negative reward's (``kept_existing``: the slot already had a reward of
    that kind, which stands), ``null`` when none was recorded."""

    seq: int
    user_id: str
    item_id: str
    kind: str
    ts: float
    status: Literal["recorded"]
    scope: Literal["item", "type"] | None = None
    expires_ts: float | None = None
    reward_status: Literal["recorded", "late", "duplicate", "routed", "kept_existing"] | None = None


class BlockRequest(BaseModel):
    """Items no user may be shown (legal, recall), with the reason and who asks; exactly one of
    ``item_id`` and ``item_ids``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: ItemId | None = None
    item_ids: Annotated[list[ItemId], Field(min_length=1, max_length=10_000)] | None = None
    reason: Annotated[StrictStr, Field(min_length=1, max_length=1000)]
    # what the audit trail records as the actor (the bearer token does not identify a person)
    actor: Annotated[StrictStr, Field(min_length=1, max_length=256)] = "api"


class BlockedItemOut(BaseModel):
    item_id: str
    ts: float
    reason: str
    actor: str


class BlockStatus(BaseModel):
    item_id: str
    status: Literal["blocked", "already_blocked", "unblocked"]


class BlockResponse(BaseModel):
    items: list[BlockStatus]


class BlocklistResponse(BaseModel):
    items: list[BlockedItemOut]


class ModelVersion(BaseModel):
    version: str
    policy: str
    params: dict
    created_ts: float
    path: str | None
    sha256: str | None
    n_updates: int
    trained_until_seq: int


ModelSource = Literal["built", "pointer", "fallback"]


class Serving(BaseModel):
    """``source``: where the served model came from -- ``built`` (no snapshot loaded), ``pointer``
    (the published snapshot), ``fallback`` (the newest valid snapshot, because the pointer or its
    snapshot was refused); ``last_reload_error``: why the last check refused, ``None`` once a
    check succeeds."""

    policy: str
    model_version: str
    params: dict
    snapshot: str | None
    source: ModelSource
    loaded_ts: float | None
    last_reload_error: str | None
    shop_build: str | None = None  # the shop-directory build served (None: not a shop directory)
    last_shop_error: str | None = None  # why the newest published build was refused, if it was


class ModelsResponse(BaseModel):
    serving: Serving
    versions: list[ModelVersion]


class ReloadResponse(BaseModel):
    status: Literal["loaded", "unchanged"]
    model_version: str
    previous: str


class HealthResponse(BaseModel):
    """``degraded``: the worker serves, but its last snapshot check was refused
    (``last_reload_error`` says why; ``source`` says what it serves instead), or the newest
    shop build was (``last_shop_error``; the build before keeps serving)."""

    status: Literal["ok", "degraded"]
    policy: str
    model_version: str
    source: ModelSource
    last_reload_error: str | None
    shop_build: str | None = None  # the shop-directory build served
    last_shop_error: str | None = None  # why the newest published build was refused, if it was


class ModeRequest(BaseModel):
    """Switch the serving mode of every process on this log. Going live needs a safe verdict
    for the served policy recorded by ``banditrec evaluate --record``, unless ``force``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: Literal["apprentice", "live"]
    reason: Annotated[StrictStr, Field(min_length=1, max_length=1_000)]
    actor: Annotated[StrictStr, Field(min_length=1, max_length=256)] = "api"
    force: bool = False


class ModeResponse(BaseModel):
    """The serving mode: ``since`` the switch (``None``: the starting mode, no switch recorded),
    with who asked, why, and the verdict it relied on."""

    mode: Literal["apprentice", "live"]
    since: float | None
    actor: str | None
    reason: str | None
    gate: dict | None


class ErrorField(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    status: int
    message: str
    fields: list[ErrorField]


class ErrorResponse(BaseModel):
    error: ErrorDetail
