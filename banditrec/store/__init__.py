"""The decision log (SQLite via sqlite-utils): all SQL lives here."""

from .log import WHOLE_DECISION, DecisionLog, DecisionRecord, LoggedDecisions, LoggedEvents

__all__ = ["DecisionLog", "DecisionRecord", "LoggedDecisions", "LoggedEvents", "WHOLE_DECISION"]
