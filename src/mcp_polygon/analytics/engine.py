"""The query engine: one sandboxed in-process DuckDB, views over everything the server holds, run off the loop.

Per market and event type, one view (schema.VIEWS) over three parts, without duplicates:
- compacted segments: the Parquet files (compaction.py), read in place;
- recorder segments still in JSONL (the open one, and closed ones not compacted yet): their lines are parsed into
  internal.tail_<market> incrementally (a segment's new bytes only, so the open segment costs its new lines);
- buffered events not on disk yet (the last second before a flush, or everything when recording is off):
  frames from the live source, parsed into internal.live_<view> for the views a query reads, also incrementally
  (only frames not seen before), so a query over a 1,000-event buffer that barely moved parses next to nothing.
  The view reads the rows at or above its market's live floor (a session variable: newer than the disk and still
  in the ring), so rows that fell below it cost no DELETE per query; they are deleted once they outnumber the ring.
A segment is read as JSONL while its JSONL exists and as Parquet once it is gone (compaction removes the JSONL only
after its Parquet is complete, so a segment is never counted twice or missed). A buffered frame counts only when
it is newer than everything on disk: the recorder stamps frames with strictly increasing receive times, so
"newer than the newest recorded event" is exactly "not recorded yet".

The DuckDB database is in memory and locked down before any query runs: no external access except the data
directory (the views read the recordings there), no extensions, configuration locked, memory and threads bounded,
time zone UTC. Agents' SQL also passes sandbox.check_query first. Queries run one at a time in a worker thread, each
under a watchdog (one thread) that interrupts it at the time limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from mcp_polygon.analytics import eventsql, saved, summary
from mcp_polygon.analytics.compaction import list_compacted
from mcp_polygon.analytics.errors import AnalyticsError, QueryFailed, QueryRejected, QueryTimeout
from mcp_polygon.analytics.eventsql import literal, quote
from mcp_polygon.analytics.results import QueryResult
from mcp_polygon.analytics.sandbox import CheckedQuery, check_query
from mcp_polygon.analytics.schema import SCHEMAS, VIEWS, EventSchema, MarketSchema
from mcp_polygon.config import Settings
from mcp_polygon.streams.recorder import Segment, list_segments

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 100
MAX_ROWS_LIMIT = 10_000
_SAVED_CATALOG = "saved"
_CHECKED_KEPT = 256  # checked queries remembered (QueryEngine._check)


@dataclass(frozen=True)
class LiveFrame:
    """One buffered frame: the receive time the recorder stamped it with (Unix ns) and its JSON array of events.

    The stamp must be the recorder's (Recorder.write moves a time that is not after the previous frame's last event
    forward): with any other stamp a buffered frame could be taken for one already on disk, or counted twice.
    """

    recv_ns: int
    raw: bytes


# market name -> that market's buffered frames, oldest first. Called on the event loop thread (the buffer is not
# thread-safe); it should only copy references, the parsing happens in the worker thread.
LiveSource = Callable[[str], Sequence[LiveFrame]]


@dataclass
class _Tail:
    path: Path
    offset: int  # bytes of the segment already parsed (always at a line end)
    newest: int = -1  # the newest event ns parsed from it
    last_stamp: int = -1  # the stamp of the last trusted line parsed from it


@dataclass
class _Live:
    hi: int = -1  # newest live frame parsed into the view's live table
    low: int | None = None  # a lower bound of the rows in it; None when it is empty
    frames: int = 0  # frames parsed into it since it was last emptied of rows below the floor


@dataclass
class _MarketState:
    tails: dict[str, _Tail]  # segment key "<first_ns>-<pid>" -> what was parsed of it
    live: dict[str, _Live]  # event type -> its live table's state
    parquet: tuple[Path, ...] = ()  # the files the views read now
    with_tail: bool = True  # whether the views read the tail table (not while no JSONL segment is parsed)
    watermark: int = -1  # newest event ns on disk
    floor: int = 0  # the live floor the session variable holds: views read live rows received at or after it


class _FilesChanged(Exception):
    """A file a view named is gone (retention): refresh and run the query again."""


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0].strip()


def _frame_lines(frames: Sequence[LiveFrame]) -> tuple[list[int], list[str]]:
    """Buffered frames as ($ns, $arr); a frame that is not UTF-8 holds no events (the buffer decodes none)."""
    ns: list[int] = []
    arr: list[str] = []
    for frame in frames:
        try:
            text = frame.raw.decode()
        except UnicodeDecodeError:
            continue
        ns.append(frame.recv_ns)
        arr.append(text)
    return ns, arr


def _recv_ns(frame: LiveFrame) -> int:
    return frame.recv_ns


def _floor_variable(market: str) -> str:
    return f"live_floor_{market}"


# Above any receive time: the floor of a market whose buffer is empty (its live rows are all gone or on disk).
_NO_LIVE_ROWS = 2**62


def _segment_key(first_ns: int, pid: int) -> str:
    return f"{first_ns}-{pid}"


class _Watchdog:
    """Interrupts the running query at its time limit: one thread for the engine's life (started by the first
    query), where a threading.Timer per query would start and stop a thread each time (~0.15 ms on 2 cores).

    The engine runs one query at a time (its lock), so one deadline is armed at most. The interrupt is sent under
    the same lock disarm() takes, so once disarm() returns no interrupt meant for that query can reach the next."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, cursor: duckdb.DuckDBPyConnection, seconds: float) -> None:
        with self._changed:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name="mcp-polygon-query-limit", daemon=True)
                self._thread.start()
            self._cursor, self._deadline = cursor, time.monotonic() + seconds
            self._changed.notify()

    def disarm(self) -> None:
        with self._changed:
            self._cursor = None

    def close(self) -> None:
        with self._changed:
            self._closed, self._cursor = True, None
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                if self._cursor is None:
                    self._changed.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                self._cursor.interrupt()
                self._cursor = None


def default_threads() -> int:
    """DuckDB's threads: every core but one, which stays with the event loop (ingest, other tools) while a query
    runs. On 2 cores that is 1, which also answers small queries faster (each statement's fan-out to a second
    thread costs ~0.8 ms there) at the price of big scans (GROUP BY over 1M recorded trades: ~25 ms, not ~20)."""
    return max(1, (os.cpu_count() or 2) - 1)


class QueryEngine:
    """SQL over the stream views and saved tables. Thread-safe; the async methods run the work in a thread.

    Creating one opens DuckDB (~30 ms) and reads nothing else: a market's recordings are listed and its JSONL
    parsed when a query first reads it. Build it off the event loop (asyncio.to_thread) if 30 ms matter there."""

    def __init__(
        self,
        data_dir: Path,
        *,
        markets: Iterable[str] | None = None,
        timeout: float = 10.0,
        memory_mb: int = 1024,
        threads: int | None = None,
        live: LiveSource | None = None,
    ) -> None:
        # Resolved: the sandbox allows reads under this exact path, and the views name files by it.
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.markets = tuple(m for m in (SCHEMAS if markets is None else markets) if m in SCHEMAS)
        self.timeout = timeout
        self.memory_mb = memory_mb
        self._live = live
        self._lock = threading.Lock()
        self._watchdog = _Watchdog()
        self._state = {m: _MarketState(tails={}, live={e.ev: _Live() for e in SCHEMAS[m].events}) for m in self.markets}
        self._saved_path = self.data_dir / saved.SAVED_FILE
        self._saved_tables: tuple[str, ...] = ()
        # Queries that passed the sandbox, by (text, readable tables): an agent polling the same question (a VWAP
        # every few seconds) skips its parse, about 1 ms of a 10 ms query over a buffer. Only passes are kept.
        self._checked: OrderedDict[tuple[str, tuple[str, ...]], CheckedQuery] = OrderedDict()
        # Nothing is created on disk here: with recording off (or a data dir that cannot be written) the server
        # must still start, and the views list a missing directory as empty.
        self._db = duckdb.connect(
            ":memory:",
            config={
                "threads": default_threads() if threads is None else max(1, threads),
                "memory_limit": f"{memory_mb}MB",
                "temp_directory": "",  # never spill to disk: the memory limit is the limit
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "allow_community_extensions": False,
            },
        )
        # The one session every statement runs in (under self._lock): the views read its live floors, which are
        # session variables, and a statement costs no connection set-up.
        cur = self._session = self._db.cursor()
        cur.execute("SET TimeZone = 'UTC'")  # now() and TIMESTAMPTZ in UTC, like the views' times
        cur.execute("SET parquet_metadata_cache = true")  # views over many files bind without rereading footers
        cur.execute(f"SET allowed_directories = [{literal(str(self.data_dir) + os.sep)}]")
        cur.execute("SET enable_external_access = false")
        cur.execute("CREATE SCHEMA internal")
        for market in self.markets:
            cur.execute(f"SET VARIABLE {_floor_variable(market)} = 0")
            self._create_tables(cur, SCHEMAS[market])
            self._create_views(cur, SCHEMAS[market], (), True)  # files are listed when a query first reads the market
        self._attach_saved(cur)
        cur.execute("SET lock_configuration = true")
        self._reserved = frozenset(
            r[0]
            for r in cur.execute(
                "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'"
            ).fetchall()
        )

    @classmethod
    def from_settings(cls, settings: Settings, live: LiveSource | None = None) -> QueryEngine:
        """An engine for the server's settings: data_dir, stream_markets, query_timeout, query_memory_mb."""
        return cls(
            settings.data_dir,
            markets=settings.stream_markets,
            timeout=settings.query_timeout,
            memory_mb=settings.query_memory_mb,
            live=live,
        )

    # -- tables and views ------------------------------------------------------------------------------------

    def _create_tables(self, cur: duckdb.DuckDBPyConnection, market: MarketSchema) -> None:
        columns = ", ".join(f"{quote(n)} {k.stored_type}" for n, k in market.stored)
        cur.execute(
            f"CREATE TABLE internal.tail_{market.market} (segment VARCHAR, received_ns BIGINT, ev VARCHAR, {columns})"
        )
        for event in market.events:
            own = ", ".join(f"{quote(n)} {k.stored_type}" for n, k in eventsql.stored_columns(market, [event]))
            cur.execute(f"CREATE TABLE internal.live_{event.view} (received_ns BIGINT, ev VARCHAR, {own})")

    def _create_views(
        self, cur: duckdb.DuckDBPyConnection, market: MarketSchema, files: Sequence[Path], with_tail: bool
    ) -> None:
        """Each view: the Parquet files, the tail table when `with_tail` (an empty one still costs a query about
        1 ms: with recording off it is always empty) and the live table's rows at or above the market's floor."""
        floor = f"getvariable({literal(_floor_variable(market.market))})"
        for event in market.events:
            stored = ", ".join(["received_ns", *(quote(c.stored) for c in event.columns)])
            ev = literal(event.ev)
            parts = [f"SELECT {stored} FROM internal.live_{event.view} WHERE received_ns >= {floor}"]
            if with_tail:
                parts.insert(0, f"SELECT {stored} FROM internal.tail_{market.market} WHERE ev = {ev}")
            if files:
                listing = ", ".join(literal(str(p)) for p in files)
                parts.insert(0, f"SELECT {stored} FROM read_parquet([{listing}]) WHERE ev = {ev}")
            union = " UNION ALL ".join(parts)
            select = eventsql.view_select(event)
            cur.execute(f"CREATE OR REPLACE VIEW main.{quote(event.view)} AS SELECT {select} FROM ({union})")

    def _attach_saved(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._saved_tables = ()
        if not self._saved_path.exists():
            return
        try:
            cur.execute(f"ATTACH {literal(str(self._saved_path))} AS {_SAVED_CATALOG} (READ_ONLY)")
        except duckdb.Error as exc:  # a damaged file must not take the stream views down with it
            log.warning("saved tables unavailable: cannot open %s (%s)", self._saved_path, _first_line(exc))
            return
        names = [
            r[0]
            for r in cur.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY table_name", [_SAVED_CATALOG]
            ).fetchall()
        ]
        for name in names:
            if name in VIEWS:
                continue
            source = f"{_SAVED_CATALOG}.main.{quote(name)}"
            cur.execute(f"CREATE OR REPLACE VIEW main.{quote(name)} AS SELECT * FROM {source}")
        self._saved_tables = tuple(n for n in names if n not in VIEWS)

    def _detach_saved(self, cur: duckdb.DuckDBPyConnection) -> None:
        for name in self._saved_tables:
            cur.execute(f"DROP VIEW IF EXISTS main.{quote(name)}")
        if cur.execute("SELECT count(*) FROM duckdb_databases() WHERE database_name = ?", [_SAVED_CATALOG]).fetchall()[
            0
        ][0]:
            cur.execute(f"DETACH {_SAVED_CATALOG}")
        self._saved_tables = ()

    def table_names(self) -> tuple[str, ...]:
        """Every name a query may read: the views of this engine's markets and the saved tables."""
        views = tuple(e.view for m in self.markets for e in SCHEMAS[m].events)
        return views + self._saved_tables

    # -- keeping the views current ---------------------------------------------------------------------------

    def _refresh(
        self,
        cur: duckdb.DuckDBPyConnection,
        market: str,
        frames: Sequence[LiveFrame],
        views: Iterable[EventSchema] = (),
    ) -> None:
        """Bring one market's tail, its views' live rows and the views up to date with the disk and the buffer."""
        state = self._state[market]
        schema = SCHEMAS[market]
        directory = self.data_dir / market
        jsonl = {_segment_key(s.first_ns, s.pid): s for s in list_segments(directory)}
        watermark = -1
        for key, seg in jsonl.items():
            got = self._read_tail(cur, schema, state, key, seg)
            if got is None:  # compacted (or deleted) since it was listed: its Parquet is complete by now
                continue
            watermark = max(watermark, got)
            if seg.last_ns is not None:
                watermark = max(watermark, seg.last_ns)
        for key in [k for k in state.tails if k not in jsonl]:  # compacted or deleted by retention
            self._drop_tail(cur, market, state, key)
        # Listed after the JSONL was read: a segment compacted meanwhile is found here, complete.
        present = set(state.tails)
        compacted = [c for c in list_compacted(directory) if _segment_key(c.first_ns, c.pid) not in present]
        files = tuple(c.path for c in compacted)
        watermark = max([watermark, *(c.last_ns for c in compacted)])
        state.watermark = watermark
        floor = max(watermark + 1, frames[0].recv_ns) if frames else _NO_LIVE_ROWS
        for event in views:
            self._refresh_live(cur, schema, event, state, frames, floor)
        # The variable may lag the floor while no table read holds rows between the two (after a table is
        # replaced, it holds none below the floor): a lower floor hides nothing that should show. Once one does,
        # or the floor moved back, it is set.
        stale = any(low is not None and low < floor for low in (state.live[e.ev].low for e in views))
        if floor != state.floor and (stale or floor < state.floor):
            cur.execute(f"SET VARIABLE {_floor_variable(market)} = {floor}")
            state.floor = floor
        with_tail = bool(state.tails)
        if files != state.parquet or with_tail != state.with_tail:
            self._create_views(cur, schema, files, with_tail)
            state.parquet, state.with_tail = files, with_tail

    def _read_tail(
        self, cur: duckdb.DuckDBPyConnection, schema: MarketSchema, state: _MarketState, key: str, seg: Segment
    ) -> int | None:
        """Parse a JSONL segment's new complete lines into the tail table; the newest event ns held for it
        (-1 when none), or None when the file is gone."""
        path = seg.path
        tail = state.tails.get(key)
        try:
            size = path.stat().st_size
            if tail is not None and size == tail.offset:  # nothing new (the usual case for a closed segment)
                tail.path = path
                return tail.newest
            with open(path, "rb") as f:
                offset = tail.offset if tail is not None and tail.offset <= size else 0
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            self._drop_tail(cur, schema.market, state, key)
            return None
        except OSError:
            return tail.newest if tail is not None else -1
        if tail is not None and offset == 0 and tail.offset:  # shorter than what was parsed: not the same file
            self._drop_tail(cur, schema.market, state, key)
            tail = None
        if tail is None:
            tail = state.tails[key] = _Tail(path, 0)
        tail.path = path
        end = data.rfind(b"\n") + 1
        if end:
            chunk = data[:end]
            # The recorder's line rules, continued from the last trusted line of the bytes already parsed.
            ns, arr = eventsql.split_lines(chunk, max(seg.first_ns, tail.last_stamp + 1), seg.last_ns)
            if ns:
                tail.last_stamp = ns[-1]
            events = eventsql.present_events(schema, chunk)
            if ns and events:
                cur.execute(
                    f"INSERT INTO internal.tail_{schema.market} BY NAME "
                    f"SELECT {literal(key)} AS segment, * FROM ({eventsql.rows_sql(schema, events)})",
                    {"ns": ns, "arr": arr},
                )
                newest = cur.execute(
                    f"SELECT max(received_ns) FROM internal.tail_{schema.market} WHERE segment = ?", [key]
                ).fetchall()[0][0]
                tail.newest = -1 if newest is None else int(newest)
            tail.offset = offset + end
        return tail.newest

    def _drop_tail(self, cur: duckdb.DuckDBPyConnection, market: str, state: _MarketState, key: str) -> None:
        cur.execute(f"DELETE FROM internal.tail_{market} WHERE segment = ?", [key])
        state.tails.pop(key, None)

    def _refresh_live(
        self,
        cur: duckdb.DuckDBPyConnection,
        schema: MarketSchema,
        event: EventSchema,
        state: _MarketState,
        frames: Sequence[LiveFrame],
        floor: int,
    ) -> None:
        """Parse the buffered frames not seen before and newer than the disk into a view's live table. Its rows
        below `floor` (on disk, or out of the ring) are hidden by the view, and deleted once they may outnumber the
        ring's: a DELETE per query would cost more than the rows it removes."""
        table = f"internal.live_{event.view}"
        live = state.live[event.ev]
        # Frames come oldest first with strictly increasing stamps: the new ones are a tail, found by bisection.
        new = frames[bisect_right(frames, max(state.watermark, live.hi), key=_recv_ns) :]
        if new:  # (typed as segment lines are, by a statement made for the buffer's frames: see frame_rows_sql)
            ns, arr = _frame_lines(new)
            if ns and eventsql.present_events(schema, b"".join(f.raw for f in new), (event,)):
                rows = eventsql.frame_rows_sql(schema, event)
                if live.low is not None and live.hi >= frames[0].recv_ns:
                    cur.execute(f"INSERT INTO {table} BY NAME {rows}", {"ns": ns, "arr": arr})
                    live.frames += len(new)
                else:  # nothing parsed before is still in the ring: one statement instead of a DELETE and an INSERT
                    cur.execute(f"CREATE OR REPLACE TABLE {table} AS {rows}", {"ns": ns, "arr": arr})
                    live.low, live.frames = new[0].recv_ns, len(new)
            live.hi = new[-1].recv_ns
        if live.low is None or live.low >= floor:
            return
        if not frames:
            cur.execute(f"DELETE FROM {table}")
            live.low, live.frames = None, 0
        elif live.frames > 2 * len(frames):  # at least as many frames below the floor as in the ring
            cur.execute(f"DELETE FROM {table} WHERE received_ns < ?", [floor])
            live.low, live.frames = floor, len(frames)

    # -- running queries ---------------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Sequence[LiveFrame]]:
        if self._live is None:
            return {}
        return {m: self._live(m) for m in self.markets}

    async def query(self, sql: str, max_rows: int = DEFAULT_MAX_ROWS) -> QueryResult:
        """Run an agent's read-only SQL; raises an AnalyticsError subclass with one sentence on any failure."""
        snapshot = self._snapshot()  # on the loop: the buffers are not thread-safe
        return await asyncio.to_thread(self.query_sync, sql, max_rows, snapshot)

    def query_sync(
        self, sql: str, max_rows: int = DEFAULT_MAX_ROWS, live: Mapping[str, Sequence[LiveFrame]] | None = None
    ) -> QueryResult:
        """query() without the thread hop: for worker threads, tests and benchmarks."""
        if not 1 <= max_rows <= MAX_ROWS_LIMIT:
            raise QueryRejected(f"max_rows must be between 1 and {MAX_ROWS_LIMIT:,}, got {max_rows}.")
        started = time.monotonic()
        with self._locked() as cur:
            checked = self._check(cur, sql)
            views = [VIEWS[t] for t in checked.tables if t in VIEWS]
            return self._refresh_and_execute(cur, checked, views, live, max_rows, started)

    def _check(self, cur: duckdb.DuckDBPyConnection, sql: str) -> CheckedQuery:
        """check_query, remembered for the last _CHECKED_KEPT queries that passed (called under the lock)."""
        tables = self.table_names()
        key = (sql, tables)
        checked = self._checked.get(key)
        if checked is not None:
            self._checked.move_to_end(key)
            return checked
        checked = check_query(cur, sql, set(tables))
        self._checked[key] = checked
        if len(self._checked) > _CHECKED_KEPT:
            self._checked.popitem(last=False)
        return checked

    def _refresh_and_execute(
        self,
        cur: duckdb.DuckDBPyConnection,
        checked: CheckedQuery,
        views: Sequence[EventSchema],
        live: Mapping[str, Sequence[LiveFrame]] | None,
        max_rows: int,
        started: float,
    ) -> QueryResult:
        for attempt in (1, 2):
            self._refresh_views(cur, views, live)
            try:
                return self._execute(cur, checked, max_rows, started)
            except _FilesChanged:
                if attempt == 2:
                    break
                # Retention deleted a file a view still named: list the directories again and rerun, once.
        raise QueryFailed("The recordings changed on disk while the query ran; run it again.")

    def _refresh_views(
        self,
        cur: duckdb.DuckDBPyConnection,
        views: Iterable[EventSchema],
        live: Mapping[str, Sequence[LiveFrame]] | None,
    ) -> None:
        by_market: dict[str, list[EventSchema]] = {}
        for view in views:
            if view.market in self._state:
                by_market.setdefault(view.market, []).append(view)
        for market, events in sorted(by_market.items()):
            try:
                self._refresh(cur, market, (live or {}).get(market, ()), events)
            except duckdb.OutOfMemoryException:
                raise QueryFailed(
                    f"Loading the {market} events not yet compacted needed more than the {self.memory_mb} MB allowed "
                    "for queries (POLYGON_QUERY_MEMORY_MB); raise it, or query again once compaction caught up."
                ) from None
            except duckdb.Error as exc:
                raise QueryFailed(f"Reading the {market} recordings failed ({_first_line(exc)}); retry.") from None

    def _locked(self) -> _Session:
        return _Session(self)

    def _execute(
        self, cur: duckdb.DuckDBPyConnection, checked: CheckedQuery, max_rows: int, started: float
    ) -> QueryResult:
        remaining = max(0.05, self.timeout - (time.monotonic() - started))
        self._watchdog.arm(cur, remaining)
        try:
            rel = cur.execute(checked.sql)
            description = rel.description or []
            rows = rel.fetchmany(max_rows + 1)
            truncated = len(rows) > max_rows
            total: int | None = len(rows)
            if truncated:  # (the count's statement also ends this result, which the session would keep till the next)
                total = self._count(cur, checked)
        except duckdb.InterruptException:
            raise QueryTimeout(
                f"The query ran longer than {self.timeout:g} s and was stopped; narrow it (a WHERE on received, "
                "fewer rows or columns) or aggregate."
            ) from None
        except duckdb.OutOfMemoryException:
            raise QueryFailed(
                f"The query needed more than the {self.memory_mb} MB allowed for queries (POLYGON_QUERY_MEMORY_MB); "
                "aggregate, filter or select fewer columns."
            ) from None
        except duckdb.IOException as exc:
            if checked.tables & set(VIEWS) and ("No files found" in str(exc) or "No such file" in str(exc)):
                raise _FilesChanged from None
            raise self._failure(exc, checked) from None
        except duckdb.Error as exc:
            raise self._failure(exc, checked) from None
        finally:
            self._watchdog.disarm()
        return QueryResult(
            columns=tuple(str(d[0]) for d in description),
            types=tuple(str(d[1]) for d in description),
            rows=tuple(tuple(r) for r in rows[:max_rows]),
            total_rows=total,
            truncated=truncated,
            seconds=time.monotonic() - started,
        )

    def _count(self, cur: duckdb.DuckDBPyConnection, checked: CheckedQuery) -> int | None:
        if checked.explain:
            return None
        try:
            return int(cur.execute(f"SELECT count(*) FROM ({checked.sql})").fetchall()[0][0])
        except duckdb.Error:
            return None

    def _failure(self, exc: duckdb.Error, checked: CheckedQuery) -> AnalyticsError:
        message = _first_line(exc)
        for prefix in ("Binder Error: ", "Catalog Error: ", "Conversion Error: ", "Invalid Input Error: "):
            message = message.removeprefix(prefix)
        unknown_column = ("column" in message and "not found" in message) or "does not have a column" in message
        if isinstance(exc, duckdb.BinderException) and unknown_column:
            return QueryFailed(self._unknown_column(message, checked))
        return QueryFailed(f"The query failed: {message.rstrip('.!')}; fix it and retry.")

    def _unknown_column(self, message: str, checked: CheckedQuery) -> str:
        name = message.split('"')[1] if message.count('"') >= 2 else "?"
        listed = []
        for table in sorted(checked.tables):
            columns = self._columns_of(table)
            if columns:
                listed.append(f"{table} has {', '.join(columns)}")
        where = "; ".join(listed) if listed else "DESCRIBE <table> lists a table's columns"
        return f"Column {name} does not exist: {where}."

    def _columns_of(self, table: str) -> tuple[str, ...]:
        event = VIEWS.get(table)
        if event is not None:
            return event.view_columns
        if table in self._saved_tables:  # (asked under the lock, from _failure: the session is free)
            return tuple(r[0] for r in self._session.execute(f"DESCRIBE {quote(table)}").fetchall())
        return ()

    # -- trusted queries (stream summary) -----------------------------------------------------------------------

    def run_trusted_sync(
        self,
        sql: str,
        views: Iterable[str],
        live: Mapping[str, Sequence[LiveFrame]] | None = None,
        max_rows: int = MAX_ROWS_LIMIT,
    ) -> QueryResult:
        """Run SQL this package generated (not an agent's) over fresh `views`, with the same limits."""
        started = time.monotonic()
        chosen = [VIEWS[v] for v in views if v in VIEWS]
        with self._locked() as cur:
            checked = CheckedQuery(sql=sql, tables=frozenset(e.view for e in chosen), explain=False)
            return self._refresh_and_execute(cur, checked, chosen, live, max_rows, started)

    def summary_sync(
        self,
        market: str,
        symbols: str | Sequence[str] | None = None,
        since: str | int | float | None = None,
        live: Mapping[str, Sequence[LiveFrame]] | None = None,
    ) -> QueryResult:
        """The stream summary (summary.py): one row per symbol, columns without data left out."""
        if market not in self._state:
            raise QueryRejected(f"market must be one of {', '.join(self.markets)}, got {market!r}.")
        query = summary.summary_query(market, summary.normalize_symbols(symbols), summary.parse_window(since))
        return self.run_trusted_sync(query.sql, query.views, live).without_empty_columns()

    async def summary(
        self, market: str, symbols: str | Sequence[str] | None = None, since: str | int | float | None = None
    ) -> QueryResult:
        snapshot = self._snapshot()
        return await asyncio.to_thread(self.summary_sync, market, symbols, since, snapshot)

    # -- saved tables --------------------------------------------------------------------------------------------

    def save_sync(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> SaveSummary:
        """Save rows as table `name` (replacing one of that name) in <data_dir>/saved.duckdb; a short summary."""
        name = saved.check_table_name(name, frozenset(VIEWS), self._reserved)
        if not columns:
            raise AnalyticsError("There is nothing to save: the result has no columns; check the call's arguments.")
        started = time.monotonic()
        with self._locked() as cur:
            self._detach_saved(cur)
            try:
                written = saved.write_table(self._saved_path, name, columns, rows)
            except (duckdb.Error, OSError) as exc:
                raise AnalyticsError(f"Saving table {name} failed ({_first_line(exc)}); retry.") from None
            finally:
                self._attach_saved(cur)
            checked = CheckedQuery(sql=f"SELECT * FROM {quote(name)} LIMIT 5", tables=frozenset({name}), explain=False)
            preview = self._execute(cur, checked, 5, started)
        return SaveSummary(table=written, preview=preview)

    async def save(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> SaveSummary:
        return await asyncio.to_thread(self.save_sync, name, columns, rows)

    def close(self) -> None:
        self._watchdog.close()
        with self._lock:
            self._session.close()
            self._db.close()


@dataclass(frozen=True)
class SaveSummary:
    table: saved.WrittenTable
    preview: QueryResult  # the first 5 rows


class _Session:
    """The engine's lock (waited for up to the time limit) and its one session, as a context manager."""

    def __init__(self, engine: QueryEngine) -> None:
        self.engine = engine

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        if not self.engine._lock.acquire(timeout=self.engine.timeout):
            raise QueryTimeout(f"Another query kept the engine busy for {self.engine.timeout:g} s; retry in a moment.")
        return self.engine._session

    def __exit__(self, *exc: object) -> None:
        self.engine._lock.release()
