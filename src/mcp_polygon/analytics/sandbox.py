"""Which SQL an agent may run: decided by parsing, never by matching the text.

DuckDB's own parser splits the text into statements (extract_statements) and turns each SELECT into its syntax
tree (json_serialize_sql). A query passes when it is exactly one SELECT (WITH, SHOW, DESCRIBE, SUMMARIZE and FROM-first
queries all parse as SELECT), or EXPLAIN [ANALYZE] of one, and its whole tree holds
- no table function but range / generate_series / unnest (read_csv, read_parquet, glob, query, duckdb_settings, ...
  are table functions, however they are spelled or qualified);
- no scalar function that reads settings, variables or the environment, or writes the log;
- no table but the views, the saved tables and the query's own CTEs (a quoted path such as '/etc/passwd' in FROM
  is a table name to the parser: DuckDB would read the file through a replacement scan);
- no SHOW of anything but TABLES.
COPY, ATTACH, INSTALL, LOAD, SET, PRAGMA, CALL, CREATE, INSERT, ... are other statement types and never pass.
The connection the query then runs on is locked down as well (engine.py: no external access outside the
recordings, configuration locked), so a gap here is not a way out on its own.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from mcp_polygon.analytics.errors import QueryRejected

MAX_SQL_CHARS = 100_000
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
# Scalar functions that see beyond the data: settings (paths), variables, the environment, the log.
DENIED_FUNCTIONS = frozenset(
    {"getenv", "current_setting", "getvariable", "write_log", "json_execute_serialized_sql", "query", "query_table"}
)
DENIED_PREFIXES = ("read_", "parquet_", "duckdb_", "pragma_", "sniff_", "glob", "iceberg_", "delta_")
_SHOW_TABLES = '"tables"'
_NO_LOCATION = 18446744073709551615  # the parser's "no position" marker


@dataclass(frozen=True)
class CheckedQuery:
    """A query that passed: the one statement to run, and the tables it reads (lower case)."""

    sql: str
    tables: frozenset[str]
    explain: bool


def _position_text(sql: str, offset: int) -> str:
    line = sql.count("\n", 0, offset) + 1
    column = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _serialize(cur: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    rows = cur.execute("SELECT json_serialize_sql($sql)", {"sql": sql}).fetchall()
    result: dict[str, Any] = json.loads(rows[0][0])
    return result


def _syntax_error(cur: duckdb.DuckDBPyConnection, sql: str, fallback: str) -> QueryRejected:
    tree = _serialize(cur, sql)
    message = str(tree.get("error_message") or fallback).rstrip(".")
    where = ""
    position = tree.get("position")
    if position is not None and str(position).isdigit():
        where = f" ({_position_text(sql, int(position))})"
    return QueryRejected(f"SQL syntax error: {message}{where}; fix the query (DuckDB's dialect) and retry.")


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _where(sql: str, node: dict[str, Any]) -> str:
    loc = node.get("query_location")
    if isinstance(loc, int) and 0 <= loc < _NO_LOCATION and loc <= len(sql):
        return f" at {_position_text(sql, loc)}"
    return ""


def _denied_function(name: str) -> bool:
    return name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES)


def _check_tree(sql: str, tree: dict[str, Any], tables: Collection[str], listing: str) -> frozenset[str]:
    nodes = list(_nodes(tree))
    ctes = {
        str(entry.get("key", "")).lower()
        for node in nodes
        if isinstance(node.get("cte_map"), dict)
        for entry in node["cte_map"].get("map", [])
        if isinstance(entry, dict)
    }
    used: set[str] = set()
    for node in nodes:
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise QueryRejected(
                    f"Table function {name}(){_where(sql, node)} is not allowed: queries read only the views and "
                    f"saved tables ({listing}); FROM range(n), generate_series and unnest are the exceptions."
                )
        elif kind == "BASE_TABLE":
            used.add(_check_table(sql, node, tables, ctes, listing))
        elif kind == "SHOW_REF":
            name = str(node.get("table_name", ""))
            if node.get("show_type") == "SHOW_SPECIAL":
                if name != _SHOW_TABLES:
                    raise QueryRejected(
                        f"Only SHOW TABLES lists things here; DESCRIBE <table> shows a table's columns ({listing})."
                    )
            elif name:
                used.add(_check_name(name, "", "", tables, ctes, listing, ""))
        function_name = node.get("function_name")
        if isinstance(function_name, str) and _denied_function(function_name.lower()):
            raise QueryRejected(
                f"Function {function_name.lower()}(){_where(sql, node)} is not allowed: queries cannot read files, "
                "settings, variables or the environment; use the views and saved tables."
            )
    return frozenset(used)


def _check_table(sql: str, node: dict[str, Any], tables: Collection[str], ctes: set[str], listing: str) -> str:
    return _check_name(
        str(node.get("table_name", "")),
        str(node.get("schema_name", "")),
        str(node.get("catalog_name", "")),
        tables,
        ctes,
        listing,
        _where(sql, node),
    )


def _check_name(
    name: str, schema: str, catalog: str, tables: Collection[str], ctes: set[str], listing: str, where: str
) -> str:
    lowered = name.lower()
    if not catalog and schema in ("", "main") and (lowered in tables or (not schema and lowered in ctes)):
        return lowered
    if "/" in name or "\\" in name or "." in name:
        raise QueryRejected(
            f"Reading files is not allowed ('{name}'{where}); query the views and saved tables instead: {listing}."
        )
    qualified = ".".join(p for p in (catalog, schema, name) if p)
    raise QueryRejected(f"Table {qualified}{where} does not exist; the tables are: {listing}.")


def _explained(cur: duckdb.DuckDBPyConnection, text: str) -> str:
    """The statement after EXPLAIN [ANALYZE], found with DuckDB's tokenizer (comments and case do not matter)."""
    tokens = [(offset, kind) for offset, kind in duckdb.tokenize(text) if kind != duckdb.token_type.comment]
    if not tokens:
        raise QueryRejected("EXPLAIN needs a SELECT after it; write EXPLAIN SELECT ....")
    starts = [offset for offset, _ in tokens] + [len(text)]
    words = [text[starts[i] : starts[i + 1]].strip().lower() for i in range(len(tokens))]
    skip = 2 if len(words) > 1 and words[1] == "analyze" else 1
    if words[0] != "explain" or len(tokens) <= skip:
        raise QueryRejected("EXPLAIN needs a SELECT after it; write EXPLAIN SELECT ....")
    return text[starts[skip] :]


def check_query(cur: duckdb.DuckDBPyConnection, sql: str, tables: Collection[str]) -> CheckedQuery:
    """Parse `sql` and return it as a CheckedQuery, or raise QueryRejected with one sentence saying why not.

    `tables` are the names (lower case) a query may read; `cur` is any DuckDB cursor (the parser runs nothing).
    """
    listing = ", ".join(sorted(tables))
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise QueryRejected("The query is empty; write one SELECT, e.g. SELECT * FROM stocks_trades LIMIT 10.")
    if len(text) > MAX_SQL_CHARS:
        raise QueryRejected(f"The query is longer than {MAX_SQL_CHARS:,} characters; shorten it.")
    # The usual case in one parse: json_serialize_sql accepts SELECT statements only.
    tree = _serialize(cur, text)
    if not tree.get("error") and len(tree.get("statements", ())) == 1:
        return CheckedQuery(sql=text, tables=_check_tree(text, tree, tables, listing), explain=False)
    try:
        statements = cur.extract_statements(text)
    except duckdb.ParserException as exc:
        raise _syntax_error(cur, text, str(exc).splitlines()[0]) from None
    if len(statements) != 1:
        raise QueryRejected(f"Send exactly one statement (got {len(statements)}); run them one call at a time.")
    statement = statements[0]
    explain = statement.type == duckdb.StatementType.EXPLAIN
    inner = _explained(cur, statement.query) if explain else statement.query
    if explain:
        inner_statements = cur.extract_statements(inner)
        if len(inner_statements) != 1 or inner_statements[0].type != duckdb.StatementType.SELECT:
            raise QueryRejected("EXPLAIN takes one SELECT here; write EXPLAIN SELECT ....")
    elif statement.type != duckdb.StatementType.SELECT:
        kind = str(statement.type).rsplit(".", 1)[-1]
        if kind == "MULTI":  # PIVOT and UNPIVOT statements create types before they select
            raise QueryRejected("PIVOT statements are not allowed; pivot with GROUP BY and sum(x) FILTER (WHERE ...).")
        raise QueryRejected(
            f"Only SELECT, WITH, SHOW, DESCRIBE and EXPLAIN are allowed (this is {kind}): the data is read-only and "
            "queries cannot reach files, settings or the network."
        )
    tree = _serialize(cur, inner)
    if tree.get("error"):
        raise _syntax_error(cur, inner, str(tree.get("error_message", "")))
    used = _check_tree(inner, tree, tables, listing)
    return CheckedQuery(sql=text if not explain else statement.query.strip().rstrip(";"), tables=used, explain=explain)
