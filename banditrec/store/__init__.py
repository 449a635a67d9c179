"""The decision log (SQLite via sqlite-utils): all SQL lives here."""

from .codecs import WHOLE_DECISION
from .log import DecisionLog
from .writer import DecisionRecord

__all__ = ["DecisionLog", "DecisionRecord", "WHOLE_DECISION"]
