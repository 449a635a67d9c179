"""One family of errors, so callers can catch everything banditrec raises on purpose.

Each carries ``field``, the name of the offending input, so an HTTP layer can point at it.
"""

from __future__ import annotations


class BanditRecError(Exception):
    """Base class of every error banditrec raises on purpose."""

    # set only on an error a batch write raised (banditrec.store.log): which list ("items" or
    # "rewards"), the item's index in it and the unprefixed message; the service's batch
    # endpoint adds the request field the index refers to
    batch: str
    index: int
    reason: str
    batch_field: str

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(BanditRecError, ValueError):
    """An input has the wrong shape, type or value."""


class NotFoundError(BanditRecError, LookupError):
    """Something referred to by id (an event, an item) does not exist."""


class ConflictError(BanditRecError):
    """A write contradicts what is already recorded (e.g. a different value for the same reward)."""
