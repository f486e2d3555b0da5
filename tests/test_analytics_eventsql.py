"""analytics/eventsql.py: the buffer's statement (frame_rows_sql) types frames exactly as rows_sql does."""

from __future__ import annotations

import duckdb
import orjson
import pytest

from mcp_polygon.analytics import eventsql
from mcp_polygon.analytics.schema import SCHEMAS, EventSchema
from mcp_polygon.simulator.events import _BUILDERS, EventFactory
from mcp_polygon.streams.markets import MARKETS

T0 = 1_750_000_000 * 10**9
EVENTS = [event for schema in SCHEMAS.values() for event in schema.events]


def _rows(con: duckdb.DuckDBPyConnection, sql: str, frames: list[bytes]) -> list[dict[str, object]]:
    params = {"ns": [T0 + i * 1000 for i in range(len(frames))], "arr": [f.decode() for f in frames]}
    rel = con.execute(sql, params)
    names = [d[0] for d in rel.description or []]
    return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]


def _simulated(market: str, n: int = 4) -> list[bytes]:
    """Frames as the simulator sends them: every event type of the market, two tickers, mixed in each frame."""
    factory = EventFactory(11)
    example = MARKETS[market].ticker_example
    channels = [ch for (m, ch) in _BUILDERS if m == market]
    return [
        orjson.dumps([factory.event(market, ch, ticker, T0 + i) for ch in channels for ticker in (example, "ZZ")])
        for i in range(n)
    ]


def _odd(event: EventSchema) -> list[bytes]:
    """Frames a buffer can hold that the simulator never sends (the protocol's slow path keeps any object with a
    string `ev`): wrong types in every field, missing and unknown keys, nested values, escapes, non-ASCII, a frame
    that is not JSON."""
    ev = event.ev
    huge = b"123456789012345678901234567890"  # beyond every integer type
    wrong: dict[str, object] = {"ev": ev}
    for i, column in enumerate(event.columns):
        wrong[column.wire] = ["text", 1.5, -7, True, None, [1, "a"], {"k": 1}, "12.5", 1e300][i % 9]
    return [
        orjson.dumps([wrong, {"ev": ev}, {"ev": "OTHER", "p": 1}, {"ev": ev, "unknown": {"nested": [1, {"x": 2}]}}]),
        orjson.dumps([{"ev": ev, **{c.wire: 'caf\u00e9 "q" \\' for c in event.columns}}]),
        b'[{"ev":"' + ev.encode() + b'","p":1.2.3}]',
        b'[{"ev":"'
        + ev.encode()
        + b'",'
        + b",".join(b'"' + c.wire.encode() + b'":' + huge for c in event.columns)
        + b"}]",
        b"[]",
    ]


@pytest.fixture(scope="module")
def con():
    connection = duckdb.connect()
    yield connection
    connection.close()


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.view)
def test_the_buffer_statement_gives_the_rows_of_the_general_one(con, event):
    schema = SCHEMAS[event.market]
    frames = _simulated(event.market) + _odd(event)
    general = _rows(con, eventsql.rows_sql(schema, [event]), frames)
    buffered = _rows(con, eventsql.frame_rows_sql(schema, event), frames)
    assert [r for r in general if r["ev"] == event.ev], "the frames should hold events of this type"
    assert buffered == general


def test_each_event_of_a_frame_is_stamped_at_its_position(con):
    schema = SCHEMAS["stocks"]
    trades = schema.event("T")
    assert trades is not None
    frame = orjson.dumps([{"ev": "Q", "sym": "A"}, {"ev": "T", "sym": "B"}, {"ev": "T", "sym": "C"}])
    rows = _rows(con, eventsql.frame_rows_sql(schema, trades), [frame, frame])
    assert [(r["received_ns"] - T0, r["symbol"]) for r in rows] == [(1, "B"), (2, "C"), (1001, "B"), (1002, "C")]
