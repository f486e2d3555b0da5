"""analytics/sandbox.py and the engine's connection: strictly read-only SQL, decided by parsing; no files, network,
settings or environment, whatever the spelling."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from mcp_polygon.analytics.engine import QueryEngine
from mcp_polygon.analytics.errors import QueryRejected
from mcp_polygon.analytics.sandbox import check_query

TABLES = {"stocks_trades", "stocks_quotes", "aapl_daily"}


@pytest.fixture(scope="module")
def cur():
    con = duckdb.connect()
    yield con
    con.close()


@pytest.mark.parametrize(
    ("sql", "tables", "explain"),
    [
        ("SELECT * FROM stocks_trades", {"stocks_trades"}, False),
        ("select symbol, count(*) from Stocks_Trades group by 1;", {"stocks_trades"}, False),
        ("FROM stocks_trades LIMIT 3", {"stocks_trades"}, False),
        ("WITH t AS (SELECT * FROM stocks_trades) SELECT * FROM t", {"stocks_trades", "t"}, False),
        ("SHOW TABLES", set(), False),
        ("DESCRIBE stocks_trades", {"stocks_trades"}, False),
        ("SHOW stocks_quotes", {"stocks_quotes"}, False),
        ("SUMMARIZE stocks_trades", {"stocks_trades"}, False),
        ("EXPLAIN SELECT * FROM stocks_trades", {"stocks_trades"}, True),
        ("/* why */ explain analyze select 1", set(), True),
        ("SELECT * FROM range(5)", set(), False),
        ("SELECT * FROM unnest([1, 2])", set(), False),
        (
            "SELECT * FROM aapl_daily a JOIN stocks_trades t ON t.symbol = a.ticker",
            {"aapl_daily", "stocks_trades"},
            False,
        ),
        (
            "SELECT * FROM stocks_trades t ASOF JOIN stocks_quotes q "
            "ON t.symbol = q.symbol AND t.received >= q.received",
            {"stocks_trades", "stocks_quotes"},
            False,
        ),
        ("SELECT time_bucket(INTERVAL 1 MINUTE, received) FROM stocks_trades", {"stocks_trades"}, False),
    ],
)
def test_read_only_statements_pass(cur, sql, tables, explain):
    checked = check_query(cur, sql, TABLES)
    assert checked.tables == tables and checked.explain is explain


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "Table function read_csv()"),
        ("SELECT * FROM READ_CSV_AUTO('/etc/passwd')", "Table function read_csv_auto()"),
        ("SELECT * FROM \"read_csv\"('/etc/passwd')", "Table function read_csv()"),
        ("SELECT * FROM main.read_text('/etc/passwd')", "Table function read_text()"),
        ("SELECT * FROM system.main.read_blob('/etc/passwd')", "Table function read_blob()"),
        ("SELECT * FROM read_parquet('/data/stocks/*.parquet')", "Table function read_parquet()"),
        ("SELECT * FROM glob('/*')", "Table function glob()"),
        ("SELECT * FROM query('SELECT 1')", "Table function query()"),
        ("SELECT * FROM duckdb_settings()", "Table function duckdb_settings()"),
        ("SELECT * FROM '/etc/passwd'", "Reading files is not allowed"),
        ("SELECT * FROM 'https://example.com/x.csv'", "Reading files is not allowed"),
        ("SELECT * FROM stocks_trades WHERE symbol IN (SELECT * FROM read_json('x.json'))", "read_json()"),
        ("WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x", "read_csv()"),
        ("SELECT getenv('HOME')", "Function getenv()"),
        ("SELECT GetEnv('HOME')", "Function getenv()"),
        ("SELECT current_setting('allowed_directories')", "Function current_setting()"),
        ("SELECT getvariable('x')", "Function getvariable()"),
        ("SELECT '/etc/passwd'.read_text()", "Function read_text()"),
        ("SELECT write_log('x')", "Function write_log()"),
        ("COPY stocks_trades TO '/tmp/out.csv'", "this is COPY"),
        ("ATTACH '/tmp/x.duckdb' AS x", "this is ATTACH"),
        ("DETACH saved", "this is DETACH"),
        ("INSTALL httpfs", "this is LOAD"),
        ("LOAD httpfs", "this is LOAD"),
        ("SET enable_external_access = true", "this is SET"),
        ("RESET lock_configuration", "this is SET"),
        ("PRAGMA version", "this is PRAGMA"),
        ("CALL pragma_version()", "this is CALL"),
        ("CREATE TABLE x AS SELECT 1", "this is CREATE"),
        ("INSERT INTO stocks_trades VALUES (1)", "this is INSERT"),
        ("DELETE FROM stocks_trades", "this is DELETE"),
        ("UPDATE stocks_trades SET price = 0", "this is UPDATE"),
        ("EXPORT DATABASE '/tmp/db'", "this is EXPORT"),
        ("EXPLAIN COPY stocks_trades TO '/tmp/x'", "EXPLAIN takes one SELECT"),
        ("EXPLAIN SELECT * FROM read_csv('/etc/passwd')", "read_csv()"),
        ("PIVOT stocks_trades ON symbol", "PIVOT statements are not allowed"),
        ("SELECT 1; SELECT 2", "exactly one statement (got 2)"),
        ("SELECT 1; COPY stocks_trades TO '/tmp/x'", "exactly one statement"),
        ("SELECT * FROM information_schema.tables", "Table information_schema.tables"),
        ("SELECT * FROM internal.tail_stocks", "Table internal.tail_stocks"),
        ("SELECT * FROM saved.main.aapl_daily", "Table saved.main.aapl_daily"),
        ("SHOW DATABASES", "Only SHOW TABLES"),
        ("SHOW ALL TABLES", "Only SHOW TABLES"),
        ("", "The query is empty"),
    ],
)
def test_everything_else_is_refused_with_one_sentence(cur, sql, says):
    with pytest.raises(QueryRejected) as err:
        check_query(cur, sql, TABLES)
    message = str(err.value)
    assert says in message
    assert message.endswith(".") and "\n" not in message


def test_unknown_tables_list_the_ones_there_are(cur):
    with pytest.raises(QueryRejected) as err:
        check_query(cur, "SELECT * FROM stocks_trade", TABLES)
    assert str(err.value) == (
        "Table stocks_trade at line 1, column 15 does not exist; the tables are: aapl_daily, stocks_quotes, "
        "stocks_trades."
    )


def test_a_syntax_error_says_where(cur):
    with pytest.raises(QueryRejected) as err:
        check_query(cur, "SELECT symbol,\n  count(*)\nFORM stocks_trades", TABLES)
    assert str(err.value) == (
        'SQL syntax error: syntax error at or near "stocks_trades" (line 3, column 6); fix the query '
        "(DuckDB's dialect) and retry."
    )


def test_the_engine_connection_is_locked_down_even_for_sql_that_skips_the_checker(tmp_path: Path):
    """Defense in depth: the engine's own cursor (trusted code) cannot reach outside the data directory either,
    and nothing can unlock it."""
    secret = tmp_path / "secret.csv"
    secret.write_text("key\nhunter2\n")
    engine = QueryEngine(tmp_path / "data", markets=["stocks"])
    try:
        cur = engine._db.cursor()
        with pytest.raises(duckdb.PermissionException):
            cur.execute(f"SELECT * FROM read_csv('{secret}')").fetchall()
        with pytest.raises(duckdb.PermissionException):
            cur.execute(f"SELECT * FROM '{secret}'").fetchall()
        for setting in ("enable_external_access = true", "lock_configuration = false", "memory_limit = '100GB'"):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                cur.execute(f"SET {setting}")
        with pytest.raises(duckdb.Error):
            cur.execute("LOAD httpfs")
        with pytest.raises(duckdb.CatalogException):
            cur.execute("SELECT getenv('HOME')").fetchall()
    finally:
        engine.close()


def test_the_engine_refuses_before_running(tmp_path: Path):
    engine = QueryEngine(tmp_path / "data", markets=["stocks"])
    try:
        with pytest.raises(QueryRejected, match="this is COPY"):
            engine.query_sync(f"COPY (SELECT 1) TO '{tmp_path / 'data' / 'stocks' / 'x.csv'}'")
        assert not (tmp_path / "data" / "stocks" / "x.csv").exists()
    finally:
        engine.close()
