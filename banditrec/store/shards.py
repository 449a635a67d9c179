"""Event ids that carry the serving node's log shard, so that a reward finds its decision
through any node: ``{ms:012x}{shard:04x}{16 random hex digits}`` (32 hex digits, time-ordered).

Details: docs/deployment.md, "Serving on several machines".
"""

from __future__ import annotations

from ..errors import ValidationError

MAX_SHARD = 0xFFFF
_ID_DIGITS = 32
_SHARD_AT = slice(12, 16)  # after the 12 digits of the millisecond clock
_HEX = frozenset("0123456789abcdef")


def check_shard(shard, field: str = "shard") -> int:
    """``shard`` as an int in [0, MAX_SHARD], else a :class:`ValidationError` naming ``field``."""
    if isinstance(shard, bool) or not isinstance(shard, int):
        raise ValidationError(f"{field} must be an integer in [0, {MAX_SHARD}], got {shard!r}", field)
    if not 0 <= shard <= MAX_SHARD:
        raise ValidationError(f"{field} must be in [0, {MAX_SHARD}], got {shard}", field)
    return shard


def with_shard(event_id: str, shard: int) -> str:
    """``event_id`` (32 hex digits) with digits 12-15 replaced by ``shard``."""
    return f"{event_id[:12]}{shard:04x}{event_id[16:]}"


def shard_of(event_id) -> int:
    """The shard number an event id of a sharded node carries (digits 12-15).

    Raises :class:`ValidationError` (field ``event_id``) for anything that is not 32 lowercase
    hex digits, so that a mistyped id is refused where it is posted.
    """
    if not isinstance(event_id, str) or len(event_id) != _ID_DIGITS or not _HEX.issuperset(event_id):
        raise ValidationError(
            f"event id {event_id!r} does not carry a shard: ids of a sharded log are {_ID_DIGITS} lowercase hex "
            "digits (12 of time, 4 of shard, 16 random)",
            "event_id",
        )
    return int(event_id[_SHARD_AT], 16)


__all__ = ["MAX_SHARD", "check_shard", "shard_of", "with_shard"]
