"""The decision log (SQLite via sqlite-utils): all SQL lives here."""

from .log import WHOLE_DECISION, DecisionLog, LoggedDecisions, LoggedEvents

__all__ = ["DecisionLog", "LoggedDecisions", "LoggedEvents", "WHOLE_DECISION"]
