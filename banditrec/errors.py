"""One family of errors, so callers can catch everything banditrec raises on purpose.

Each carries ``field``, the name of the offending input, so an HTTP layer can point at it.
"""

from __future__ import annotations


class BanditRecError(Exception):
    """Base class of every error banditrec raises on purpose."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(BanditRecError, ValueError):
    """An input has the wrong shape, type or value."""


class NotFoundError(BanditRecError, LookupError):
    """Something referred to by id (an event, an item) does not exist."""


class ConflictError(BanditRecError):
    """A write contradicts what is already recorded (e.g. a different value for the same reward)."""
