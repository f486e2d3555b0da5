"""The errors of the analytics engine. Each carries one actionable sentence meant for the agent as it stands.

The tools raise them as ToolError(str(exc)); nothing here ever holds the API key (the engine never sees it).
"""

from __future__ import annotations


class AnalyticsError(Exception):
    """One sentence: what happened and what to do next."""


class QueryRejected(AnalyticsError):
    """The SQL was refused before it ran: not one read-only statement, a syntax error, an unknown table, a
    function or table function that could touch files, the network or the environment."""


class QueryFailed(AnalyticsError):
    """DuckDB refused the query while binding or running it (unknown column, type error, out of memory, ...)."""


class QueryTimeout(AnalyticsError):
    """The query ran past the time limit and was interrupted."""


class InvalidName(AnalyticsError):
    """A name for a saved table does not follow the rules."""
