"""The one cell formatter (mcp_polygon/cells.py): its rules, its fast column paths checked cell for cell against
the rules on random columns, and REST and stream answers agreeing through a real MCP client."""

from __future__ import annotations

import csv
import io
import math
import random
import re
import struct

import orjson
import pytest

from conftest import text_of
from mcp_polygon import cells
from mcp_polygon.cells import cell_text, csv_column, csv_field, csv_line
from mcp_polygon.rest.tables import Section, render
from mcp_polygon.simulator.events import EventFactory
from mcp_polygon.streams.formatting import csv_sections, csv_sections_within
from mcp_polygon.streams.markets import MARKETS

# ---- the rules -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-17, "-17"),
        (135647456.0, "135647456"),
        (100.0, "100"),
        (-0.0, "-0"),
        (74.6099, "74.6099"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e15, "1000000000000000"),
        (1e16, "1e+16"),
        (2.5e20, "2.5e+20"),
        (1e-05, "1e-05"),
        (1.5e-07, "1.5e-07"),
        (0.0001, "0.0001"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (1517562000015577000, "1517562000015577000"),
        (2**64, "18446744073709551616"),
        (-(2**100), str(-(2**100))),
        (10**40, "1" + "0" * 40),
        ("", ""),
        ("a,b", "a,b"),  # quoting is csv_field's business, not the text's
        ("Zürich ☕ 株", "Zürich ☕ 株"),
    ],
)
def test_scalar_text(value, text):
    assert cell_text(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ([], ""),
        ([12, 41], "12|41"),
        ([37], "37"),
        ([1.0, 2.5, None, True, "s p"], "1|2.5||true|s p"),
        ((1, 2), "1|2"),  # a tuple is a list
        ([[1.0, 2.0], [0.5, 1.0]], "1:2|0.5:1"),  # book levels: [price, size] pairs
        ([[], [3]], "|3"),
        ([1, [2, 3]], "1|2:3"),
        ([[1, [2]]], "[[1,[2]]]"),  # deeper than one level: JSON
        ([{"ticker": "UBS", "sentiment": "positive"}], '[{"ticker":"UBS","sentiment":"positive"}]'),
        ({"a": 1, "b": [1.5, None]}, '{"a":1,"b":[1.5,null]}'),
        ({"name": "Zürich"}, '{"name":"Zürich"}'),  # non-ASCII kept, not \\u-escaped
        ({"big": 2**70}, '{"big":1180591620717411303424}'),
    ],
)
def test_list_and_object_text(value, text):
    assert cell_text(value) == text


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("plain", "plain"),
        ("a,b", '"a,b"'),
        ('say "hi"', '"say ""hi"""'),
        ("two\nlines", '"two\nlines"'),
        ("cr\ronly", '"cr\ronly"'),  # the csv module leaves a bare CR unquoted with "\n" line ends; RFC 4180 does not
        (" padded\t", " padded\t"),
        ("Zürich, ☕", '"Zürich, ☕"'),
        (["a,b", "c"], '"a,b|c"'),
        ({"a": 1, "b": 2}, '"{""a"":1,""b"":2}"'),
        (None, ""),
    ],
)
def test_csv_field_quotes_only_where_csv_needs_it(value, field):
    assert csv_field(value) == field


def test_quoted_fields_read_back_with_the_csv_module():
    values = ["a,b", 'q"q', "l\nl", "c\rc", "plain", "", 1.5, [1, 2], {"k": "v,w"}]
    line = csv_line([csv_field(v) for v in values])
    assert next(csv.reader(io.StringIO(line, newline=""))) == [cell_text(v) for v in values]


def test_a_line_of_one_empty_field_is_not_blank():
    assert csv_line([""]) == '""'
    assert csv_line(["", ""]) == ","
    assert csv_line(["a", "b"]) == "a,b"
    assert csv_line([]) == ""


# ---- the fast column paths produce exactly what the rule produces ---------------------------------------------------

EDGE_FLOATS = [0.0, -0.0, 1.0, 100.0, 1e15, 1e16, 2.0**53, 1e-4, 1e-05, 1.5e-7, 5e-324, 1.7976931348623157e308]
EDGE_FLOATS += [math.nan, math.inf, -math.inf, 10.00001, 0.30000000000000004, 123456789.0]
EDGE_INTS = [0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**64), 10**30]


def _random_float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.3:  # any bit pattern: every exponent, subnormals, NaN, infinities
        return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
    if pick < 0.4:
        return rng.choice(EDGE_FLOATS)
    if pick < 0.6:
        return float(rng.randint(-(10**6), 10**6))  # whole numbers: the `.0` case
    return round(rng.uniform(-1e4, 1e4), rng.randint(0, 8)) * 10.0 ** rng.randint(-9, 18)


def _random_int(rng: random.Random) -> int:
    return rng.choice(EDGE_INTS) if rng.random() < 0.05 else rng.randint(-(10**19), 10**19)


def _random_text(rng: random.Random) -> str:
    alphabet = "abcXYZ019 -./é☕" + (',"\n\r' if rng.random() < 0.2 else "")
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))


def _random_scalar(rng: random.Random) -> object:
    return rng.choice([None, True, False, _random_float(rng), _random_int(rng), _random_text(rng)])


COLUMN_KINDS = {
    "floats": lambda rng: _random_float(rng),
    "ints": _random_int,
    "numbers": lambda rng: _random_float(rng) if rng.random() < 0.5 else _random_int(rng),
    "texts": _random_text,
    "texts and ints": lambda rng: _random_text(rng) if rng.random() < 0.7 else _random_int(rng),
    "ints or None": lambda rng: None if rng.random() < 0.3 else _random_int(rng),
    "lists of numbers": lambda rng: [
        _random_float(rng) if rng.random() < 0.5 else _random_int(rng) for _ in range(rng.randint(0, 4))
    ],
    "lists of ints": lambda rng: [rng.randint(0, 60) for _ in range(rng.randint(0, 3))],
    "book levels": lambda rng: [[_random_float(rng), rng.randint(1, 9)] for _ in range(rng.randint(0, 3))],
    "anything": _random_scalar,
}


@pytest.mark.parametrize("kind", list(COLUMN_KINDS))
def test_csv_column_is_csv_field_cell_for_cell_on_random_columns(kind):
    rng = random.Random(f"cells-{kind}")
    make = COLUMN_KINDS[kind]
    for _ in range(400):
        column = [make(rng) for _ in range(rng.randint(1, 30))]
        assert csv_column(column) == [csv_field(v) for v in column], column


@pytest.mark.parametrize(
    "column",
    [
        [1e-05, 2.0],  # orjson writes 0.00001, repr 1e-05
        [1.5e-07],  # orjson 1.5e-7, repr 1.5e-07
        [1e16, 3],  # repr switches to an exponent at 1e16
        [-1e17, 1.0],
        [math.nan, 1.0],  # orjson writes null
        [math.inf],
        [2**64, 1.5],  # beyond orjson's 64 bits
        [2**64, 1],
        [[2**64], [1]],
        [[1e-05], [2.0]],
        [[math.nan]],
        [10.00001, 100.0],  # a false alarm for the tiny-number check: still right
        [-0.0, 0.0, 100.0, 1.05, 10.0],
        [[1.0], [], [10.0, 2.0]],
    ],
)
def test_csv_column_edges(column):
    assert csv_column(column) == [csv_field(v) for v in column]


def test_csv_column_stays_exact_if_orjson_writes_big_numbers_out(monkeypatch):
    """The installed orjson switches to an exponent at 1e16 as repr does; one that wrote big floats out in full (as
    JavaScript does, up to 1e21) must still not change a cell."""
    real = orjson.dumps
    monkeypatch.setattr(cells.orjson, "dumps", lambda v: real(v).replace(b"1e+16", b"10000000000000000.0"))
    assert csv_column([1e16, 3.5]) == ["1e+16", "3.5"]
    assert csv_column([[1e16], [3.5]]) == ["1e+16", "3.5"]


def test_the_usual_stream_columns_take_the_fast_path():
    """The fast paths are there for bench/reads.py's cold read; this keeps the simulator's columns on them."""
    factory = EventFactory(3)
    for channel in ("T", "Q", "A", "AM"):
        events = [factory.event("stocks", channel, "AAPL", 1_700_000_000_000_000_000 + i) for i in range(200)]
        for key in events[0]:
            column = [event.get(key) for event in events]
            assert cells._fast_column(column) is not None, (channel, key, column[:3])
            assert csv_column(column) == [csv_field(v) for v in column]


# ---- one rule for REST and stream answers --------------------------------------------------------------------------

EVENT = {"ev": "T", "sym": "MS,FT", "p": 171.0, "s": 100, "x": 4, "c": [12, 41], "t": 1517562000015}


def test_rest_and_stream_csv_write_the_same_cells():
    stream_lines = csv_sections(MARKETS["stocks"], [(None, EVENT)], None)
    rest_lines = render([Section(None, [{k: v for k, v in EVENT.items() if k != "ev"}])], max_chars=10_000).text
    stream_row = next(csv.reader(io.StringIO(stream_lines[2])))
    rest_row = next(csv.reader(io.StringIO(rest_lines.splitlines()[1])))
    assert stream_row == rest_row == ["MS,FT", "171", "100", "4", "12|41", "1517562000015"]


def test_stream_lines_stay_one_per_event_whatever_the_columns():
    """A lone empty cell is `""` as in REST; events with no field but `ev` still get a line each, so pricing a
    replay (no lead column) against a small budget no longer indexes past the lines (IndexError before issue 8)."""
    market = MARKETS["stocks"]
    lone = csv_sections(market, [(None, {"ev": "T", "zz": None}), (None, {"ev": "T", "zz": 2})], None)
    assert lone[1:] == ["zz", '""', "2"]
    bare = [(None, {"ev": "T"})] * 5
    assert len(csv_sections(market, bare, None)) == 2 + 5
    assert csv_sections_within(market, bare, None, 10) == ([], 0)


async def test_an_agent_sees_one_rule_in_rest_and_stream_answers(client, app):
    """Before issue 8 the same trade read `12|41` over REST and `12 41` from a stream, `171` and `171.0`."""
    rest = text_of(await client.call_tool("list_trades", {"ticker": "AAPL", "limit": 1}))
    header, first = rest.splitlines()[1:3] if rest.startswith("#") else rest.splitlines()[:2]
    rest_row = dict(zip(header.split(","), first.split(","), strict=True))
    assert rest_row["conditions"] == "12|41" and rest_row["price"] == "171.55"

    app.streams.stream("stocks").feed(orjson.dumps([EVENT]))
    answer = text_of(await client.call_tool("get_stocks_stream_messages", {"since_seq": 0}))
    assert re.search(r'^1,"MS,FT",171,100,4,12\|41,1517562000015$', answer, re.M), answer
