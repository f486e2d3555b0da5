"""analytics/saved.py and QueryEngine.save: REST results as tables that survive restarts and join the views."""

from __future__ import annotations

import datetime as dt

import duckdb
import orjson
import pytest

from mcp_polygon.analytics.engine import LiveFrame, QueryEngine
from mcp_polygon.analytics.errors import InvalidName, QueryFailed
from mcp_polygon.analytics.results import render_csv

S = 1_000_000_000
T0 = 1_750_000_000 * S

# Rows as rest/tables.py flattens an aggregates answer: the vendor's short names, `T` and `t` both present.
COLUMNS = ["T", "v", "vw", "o", "c", "h", "l", "t", "n", "tags", "extra"]
ROWS = [
    ["AAPL", 5.0e7, 229.1, 228.0, 230.0, 231.0, 227.5, 1_750_000_000_000, 420_000, ["a", "b"], {"k": 1}],
    ["MSFT", 2.1e7, 418.2, 417.0, 419.0, 420.0, 416.0, 1_750_000_000_000, 210_000, [], None],
    ["NVDA", 9.9e7, 131.0, 130.0, 132.0, 133.0, 129.0, 1_750_000_000_000, 990_000, ["c"], {"k": 2}],
]


def one_trade(recv_ns: int, *, price: float, size: float) -> dict[str, list[LiveFrame]]:
    """A stocks buffer holding one AAPL trade, received at recv_ns: the live side of a join with a saved table."""
    return {"stocks": [LiveFrame(recv_ns, orjson.dumps([{"ev": "T", "sym": "AAPL", "p": price, "s": size, "t": 1}]))]}


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


def test_save_then_query_and_join_with_a_stream_view(data):
    engine = QueryEngine(data, markets=["stocks"])
    try:
        summary = engine.save_sync("daily_bars", COLUMNS, ROWS)
        assert summary.table.rows == 3
        assert summary.table.columns[7] == "t_2" and ("t", "t_2") in summary.table.renamed  # `T` and `t` collide
        types = dict(zip(summary.table.columns, summary.table.types, strict=True))
        assert (
            types["T"] == "VARCHAR" and types["v"] == "DOUBLE" and types["t_2"] == "BIGINT" and types["n"] == "BIGINT"
        )
        assert types["tags"] == "JSON"
        assert len(summary.preview.rows) == 3 and summary.preview.columns == summary.table.columns
        joined = engine.query_sync(
            "SELECT d.T, d.c, t.price, t.price - d.c AS change "
            "FROM daily_bars d JOIN stocks_trades t ON t.symbol = d.T",
            10,
            one_trade(T0, price=230.5, size=10),
        )
        assert joined.rows == (("AAPL", 230.0, 230.5, 0.5),)
        assert "daily_bars" in [r[0] for r in engine.query_sync("SHOW TABLES", 100).rows]
    finally:
        engine.close()


def test_saving_again_replaces_and_tables_survive_a_restart(data):
    engine = QueryEngine(data, markets=["stocks"])
    engine.save_sync("bars", COLUMNS, ROWS)
    engine.save_sync("bars", ["ticker", "close"], [["AAPL", 1.5]])
    engine.save_sync("other", ["x"], [[1], [2]])
    engine.close()
    again = QueryEngine(data, markets=["stocks"])
    try:
        assert again.query_sync("SELECT * FROM bars").rows == (("AAPL", 1.5),)
        assert again.query_sync("SELECT sum(x) FROM other").rows == ((3,),)
    finally:
        again.close()


def test_preview_is_five_rows_and_renders_as_csv(data):
    engine = QueryEngine(data, markets=["stocks"])
    try:
        summary = engine.save_sync("many", ["i", "name"], [[i, f"n{i}"] for i in range(40)])
        assert summary.table.rows == 40 and len(summary.preview.rows) == 5
        text = render_csv(summary.preview, 2000)
        assert text.splitlines()[1:3] == ["i,name", "0,n0"]
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Bad", "not a valid table name"),
        ("1x", "not a valid table name"),
        ("a-b", "not a valid table name"),
        ("x" * 64, "not a valid table name"),
        ("stocks_trades", "the name of a stream view"),
        ("crypto_l2", "the name of a stream view"),
        ("select", "reserved in SQL"),
        ("duckdb_tables", "reserved in SQL"),
    ],
)
def test_names_follow_the_rules(data, name, says):
    engine = QueryEngine(data, markets=["stocks"])
    try:
        with pytest.raises(InvalidName, match=says):
            engine.save_sync(name, ["a"], [[1]])
    finally:
        engine.close()
    assert not (data / "saved.duckdb").exists()  # refused before anything was written


def test_the_saved_file_is_attached_read_only(data):
    engine = QueryEngine(data, markets=["stocks"])
    try:
        engine.save_sync("bars", ["x"], [[1]])
        cur = engine._db.cursor()  # trusted code, past the statement check: DuckDB itself refuses the write
        with pytest.raises(duckdb.Error, match="read-only"):
            cur.execute("INSERT INTO saved.main.bars VALUES (2)")
        assert engine.query_sync("SELECT * FROM bars").rows == ((1,),)
    finally:
        engine.close()


def test_a_damaged_saved_file_leaves_the_stream_views_working(data):
    data.mkdir(parents=True)
    (data / "saved.duckdb").write_bytes(b"this is not a database" * 100)
    engine = QueryEngine(data, markets=["stocks"])
    try:
        assert engine.query_sync("SELECT count(*) FROM stocks_trades").rows == ((0,),)
    finally:
        engine.close()


def test_iso_times_are_saved_as_times_that_compare_and_join_with_the_stream_views(data):
    engine = QueryEngine(data, markets=["stocks"])
    columns = ["ticker", "sip_time", "day", "note"]
    rows = [
        ["AAPL", "2025-06-15T14:26:40.000000001Z", "2025-06-15", "2025-06-15T14:26:40Z"],
        ["AAPL", "2025-06-15T14:26:41Z", None, "not a time"],
    ]
    try:
        table = engine.save_sync("aapl_times", columns, rows).table
        assert dict(zip(table.columns, table.types, strict=True)) == {
            "ticker": "VARCHAR", "sip_time": "TIMESTAMP_NS", "day": "DATE", "note": "VARCHAR",
        }  # fmt: skip
        # Nanoseconds are kept, and the times compare with the views' TIMESTAMPs (received, timestamp).
        first = engine.query_sync("SELECT epoch_ns(min(sip_time)) % 1000, max(day) FROM aapl_times", 10).rows
        assert first == ((1, dt.date(2025, 6, 15)),)
        recv_ns = 1_750_000_001 * 10**9  # 2025-06-15T14:26:41Z
        joined = engine.query_sync(
            "SELECT count(*) FROM aapl_times a "
            "JOIN stocks_trades t ON t.symbol = a.ticker AND a.sip_time <= t.received",
            10,
            one_trade(recv_ns, price=1.0, size=1),
        )
        assert joined.rows == ((2,),)
    finally:
        engine.close()


def test_an_unknown_column_of_a_saved_table_lists_its_columns(data):
    engine = QueryEngine(data, markets=["stocks"])
    try:
        engine.save_sync("daily_bars", COLUMNS, ROWS)
        with pytest.raises(QueryFailed) as err:
            engine.query_sync("SELECT close FROM daily_bars")
        listed = "T, v, vw, o, c, h, l, t_2, n, tags, extra"
        assert str(err.value) == f"Column close does not exist: daily_bars has {listed}."
        assert engine.query_sync("SELECT count(*) FROM daily_bars").rows == ((3,),)  # the session answers on
    finally:
        engine.close()
