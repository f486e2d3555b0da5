"""analytics/results.py: the CSV of a query's rows, formatted a column at a time, equals the csv module's lines of
the cell rules (the reference), and follows the shared quoting rule of every other answer."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import random

from mcp_polygon.analytics.results import QueryResult, cell_text, render_csv

# Everything DuckDB hands back for the views and saved tables, and the awkward texts CSV must quote.
POOL: list[object] = [
    None, "", "plain", "a,b", 'q"x', "line\nbreak", " spaced ", "ünïcode", 0, 1, -2, 2**70, 3.0, 0.1, -0.0, 1e20,
    1e-7, float("nan"), float("inf"), True, False, [1, 2.5], [[1, 2], [3, 4]], ["x", None], [], {"k": 1},
    dt.datetime(2026, 1, 2, 3, 4, 5, 123456), dt.datetime(2026, 1, 2, tzinfo=dt.UTC), dt.date(2026, 1, 2),
    decimal.Decimal("1.50"), b"\x00\xff",
]  # fmt: skip


def reference(result: QueryResult) -> str:
    """The lines the csv module writes for the same cells."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow([cell_text(v) for v in row])
    return out.getvalue()


def body(text: str) -> str:
    return "".join(line + "\n" for line in text.split("\n")[1:])  # (after the row-count line)


def test_rows_match_the_csv_module_for_any_mix_of_values():
    rnd = random.Random(5)
    for _ in range(3000):
        width, height = rnd.randint(1, 4), rnd.randint(0, 8)
        # Half the trials draw a column from one type, as query answers are: that takes the whole-column paths.
        columns = [
            [rnd.choice(POOL) for _ in range(height)]
            if rnd.random() < 0.5
            else [type(seed)(seed) if isinstance(seed, int | float | str) else seed for _ in range(height)]
            for seed in (rnd.choice(POOL) for _ in range(width))
        ]
        rows = tuple(zip(*columns, strict=True)) if height else ()
        names = tuple(rnd.choice(["a", "b,c", 'd"', "", "vwap"]) for _ in range(width))
        result = QueryResult(names, ("X",) * width, rows, len(rows), False)
        assert body(render_csv(result, 10**7)) == reference(result), (names, rows)


def test_a_lone_empty_cell_is_quoted_and_a_carriage_return_is_quoted_as_in_every_other_answer():
    lone = QueryResult(("x",), ("VARCHAR",), (("",), (None,)), 2, False)
    assert render_csv(lone, 1000).split("\n")[1:] == ["x", '""', '""']
    cr = QueryResult(("x", "y"), ("VARCHAR", "VARCHAR"), (("a\rb", "c"),), 1, False)
    assert render_csv(cr, 1000).split("\n")[2] == '"a\rb",c'
