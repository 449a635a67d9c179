"""The decision log (SQLite via sqlite-utils): all SQL lives here."""

from .log import WHOLE_DECISION, DecisionLog, LoggedDecisions

__all__ = ["DecisionLog", "LoggedDecisions", "WHOLE_DECISION"]
