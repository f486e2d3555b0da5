"""Closed recorder segments -> one Parquet file each (zstd, typed columns), atomically; and replay from them.

A closed segment `<first_ns>-<last_ns>-<pid>.jsonl` becomes `<first_ns>-<last_ns>-<pid>.parquet` beside it:
one file per segment with the market's union of typed columns (schema.MarketSchema.stored) plus `received_ns`
(the event's unique stamp, as replay numbers it), `ev`, and `extra` (the event's JSON text when the typed columns
cannot give it back exactly; see eventsql). One file per segment, not one per event type, so that a single rename
publishes the whole segment: the Parquet is written to a hidden temporary name, flushed to disk and renamed, and
only then is the JSONL removed. A crash at any point leaves either the complete JSONL (compacted again by
finish_pending) or the complete Parquet; never a segment in neither, and readers take the JSONL while it exists.
Processes sharing a data dir may queue the same segment (the shared feed hands recording from one to another, and
the new recorder queues every closed segment it finds): a compaction holds an exclusive lock on the JSONL from
its first read to its removal, and any other steps aside (SegmentBusy), so one temporary file is written at a time.

Replay reads a compacted segment back as the exact (event ns, raw event dict) pairs a JSONL replay gives: the
rows are filtered by DuckDB (time window and channel filter pushed down, so a `T.AAPL` replay decodes only the
AAPL trades) and each event's JSON is rebuilt from its typed columns in the key order the vendor used (kept per
event type in the file's metadata), or taken from `extra`.

Everything here is safe to call from worker threads (asyncio.to_thread): each call uses its own cursor of one
process-wide DuckDB instance (one thread, bounded memory), and DuckDB releases the GIL while it works.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import duckdb
import orjson

from mcp_polygon.analytics import eventsql
from mcp_polygon.analytics.eventsql import literal, quote
from mcp_polygon.analytics.schema import SCHEMAS, EventSchema, MarketSchema
from mcp_polygon.streams.recorder import finalize_orphans, named_files

log = logging.getLogger(__name__)

_CLOSED_JSONL = re.compile(r"^(\d{1,20})-(\d{1,20})-(\d+)\.jsonl$")
_PARQUET = re.compile(r"^(\d{1,20})-(\d{1,20})-(\d+)\.parquet$")
_TMP_SUFFIX = ".parquet.tmp"
_META_KEY = "mcp_polygon"
_FORMAT = 1
_WORKER_MEMORY = "512MB"
# Rows per row group: small enough that a time window or a symbol skips most of a segment by the groups' min/max,
# large enough that zstd still finds its repeats (the file is as small as with one group per segment).
_ROW_GROUP = 16384

_db_lock = threading.Lock()
_db: duckdb.DuckDBPyConnection | None = None


class ChannelSelection(Protocol):
    """What replay_compacted needs of a channel filter (streams' ChannelFilter has it): the `T.*` prefixes, the
    `*.AAPL` tickers and the `T.AAPL` pairs, or all_events."""

    @property
    def all_events(self) -> bool: ...
    @property
    def prefixes(self) -> frozenset[str]: ...
    @property
    def tickers(self) -> frozenset[str]: ...
    @property
    def pairs(self) -> frozenset[tuple[str, str]]: ...


class CompactionError(OSError):
    """A segment could not be compacted; the message says which and why. The JSONL is left as it was."""


class SegmentBusy(CompactionError):
    """Another compaction holds the segment (in this process or another sharing the data dir), or the JSONL is gone
    (published and removed by one, or deleted by retention): nothing is wrong and nothing is left to do."""


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[None]:
    """Hold a segment for one compaction: an exclusive, non-blocking flock on the JSONL, which the kernel releases
    if the process dies. Raises SegmentBusy when another holds it, or when the name no longer is the file locked
    (the holder published it and removed the JSONL before this lock was granted)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SegmentBusy(f"{path.name} was compacted meanwhile") from None
    except OSError as exc:
        raise CompactionError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SegmentBusy(f"{path.name} is being compacted by another process or thread") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            raise SegmentBusy(f"{path.name} was compacted meanwhile")
        yield
    finally:
        os.close(fd)  # (releases the lock)


@dataclass(frozen=True)
class CompactedSegment:
    path: Path
    first_ns: int
    last_ns: int
    pid: int
    size: int


@dataclass(frozen=True)
class CompactionResult:
    source: Path  # the JSONL segment, now removed
    target: Path  # its Parquet file
    events: int  # events written
    kept_raw: int  # of which stored with their JSON text (`extra`)
    source_bytes: int
    target_bytes: int
    seconds: float


@dataclass(frozen=True)
class CompactedReplay:
    events: list[tuple[int, dict[str, object]]]  # (event ns, raw event), oldest first
    more: bool  # more matching events in the window after the last one returned


def _cursor() -> duckdb.DuckDBPyConnection:
    """A cursor of the process-wide worker database: opening a database costs ~30 ms, a cursor ~1 ms."""
    global _db
    with _db_lock:
        if _db is None:
            _db = duckdb.connect(
                ":memory:",
                config={"threads": 1, "memory_limit": _WORKER_MEMORY, "temp_directory": ""},
            )
        return _db.cursor()


def parquet_path(segment: Path) -> Path:
    """Where a closed JSONL segment's Parquet goes."""
    return segment.with_suffix(".parquet")


def list_compacted(directory: Path) -> list[CompactedSegment]:
    """Compacted segments in `directory`, oldest first. Missing directory -> []."""
    out = [
        CompactedSegment(path, int(m.group(1)), int(m.group(2)), int(m.group(3)), size)
        for path, m, size in named_files(directory, _PARQUET)
    ]
    out.sort(key=lambda s: (s.first_ns, s.path.name))
    return out


def _market_of(path: Path, market: str | None) -> MarketSchema:
    name = market or path.parent.name
    schema = SCHEMAS.get(name)
    if schema is None:
        raise CompactionError(f"{path}: '{name}' is not a market ({', '.join(SCHEMAS)}); pass market=")
    return schema


def _key_orders(cur: duckdb.DuckDBPyConnection, market: MarketSchema) -> dict[str, tuple[str, ...]]:
    known = ", ".join(literal(e.ev) for e in market.events)
    # A sample is enough: the order only decides how many events need their text kept, the comparison with each
    # event's own text keeps the result exact whatever the sample missed.
    rows = cur.execute(
        "SELECT ev, json_keys(CAST(raw AS JSON)) AS keys, count(*) AS n FROM rows "
        f"WHERE ev IN ({known}) AND (rowid < 2000 OR rowid % 8 = 0) GROUP BY ALL ORDER BY n DESC LIMIT 200"
    ).fetchall()
    by_ev: dict[str, list[list[str]]] = {}
    for ev, keys, _n in rows:
        by_ev.setdefault(ev, []).append(keys)
    orders: dict[str, tuple[str, ...]] = {}
    for event in market.events:
        if event.ev in by_ev:
            orders[event.ev] = eventsql.merge_key_orders(by_ev[event.ev], [c.wire for c in event.columns])
    return orders


def _rebuild_case(market: MarketSchema, orders: dict[str, tuple[str, ...]]) -> str:
    """SQL: an event's JSON rebuilt from its row, by event type; NULL for a type without a key order."""
    whens = [
        f"WHEN {literal(e.ev)} THEN {eventsql.rebuild_sql(e, orders[e.ev])}" for e in market.events if e.ev in orders
    ]
    return f"(CASE ev {' '.join(whens)} END)" if whens else "CAST(NULL AS VARCHAR)"


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# One VARCHAR column per line: chr(1) cannot occur in a line replay keeps (a raw control character is not JSON),
# and a line DuckDB cannot read (not UTF-8, or holding one) is skipped, as replay skips it.
_LINES_CSV = (
    "columns={'line': 'VARCHAR'}, delim=chr(1), quote='', escape='', header=false, auto_detect=false, "
    "new_line='\\n', max_line_size=1073741824, ignore_errors=true"
)


@dataclass(frozen=True)
class _Lines:
    """A segment's lines as rows_sql reads them."""

    source: str  # eventsql.PARAMETERS or a temporary table of (ns, arr) in file order
    params: dict[str, object] | None
    present: tuple[EventSchema, ...]  # the market's event types the segment holds
    size: int  # bytes


def _lines(cur: duckdb.DuckDBPyConnection, path: Path, schema: MarketSchema, low: int, high: int) -> _Lines:
    """The segment's lines, read by DuckDB when it can (no GIL held while it works), by Python when it must."""
    lines = _lines_in_duckdb(cur, path, schema, low, high)
    if lines is not None:
        return lines
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CompactionError(f"cannot read {path}: {exc.strerror or exc}") from None
    ns, arr = eventsql.split_lines(data, low, high)
    return _Lines(eventsql.PARAMETERS, {"ns": ns, "arr": arr}, eventsql.present_events(schema, data), len(data))


def _lines_in_duckdb(
    cur: duckdb.DuckDBPyConnection, path: Path, schema: MarketSchema, low: int, high: int
) -> _Lines | None:
    """The usual segment, read and judged by DuckDB itself; None when Python must judge it line by line.

    When every line's time is digits, inside the segment's named range and above the line before, the recorder's
    judgment (recorder.judged_lines) trusts every line, so nothing is left to decide in Python. Anything else
    (a damaged line, a last line cut short, bytes that are not UTF-8) goes through eventsql.split_lines, which
    applies that judgment line by line. The checks here run in DuckDB too: on 8 MB a Python bytes search holds the
    GIL for milliseconds, which the event loop would feel.
    """
    file = literal(str(path))
    # The event types present, and whether a key is written with spaces (then every type counts), as
    # eventsql.present_events finds them.
    found = ", ".join("contains(content, " + literal('"ev":"' + e.ev + '"') + ")" for e in schema.events)
    spaced = " OR ".join(f"contains(content, {literal(n)})" for n in ('"ev" ', '"ev": ', '"ev":\t'))
    try:
        size, newlines, complete, spaced_ev, *present = cur.execute(
            f"SELECT strlen(content), strlen(content) - strlen(replace(content, chr(10), '')), "
            f"suffix(content, chr(10)), {spaced}, {found} FROM read_text({file})"
        ).fetchall()[0]
        if not complete:
            return None
        cur.execute(f"CREATE OR REPLACE TEMP TABLE lines AS SELECT line FROM read_csv({file}, {_LINES_CSV})")
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE segment_lines AS SELECT rowid AS n, "
            "CASE WHEN regexp_full_match(t, '[0-9]{1,19}') THEN TRY_CAST(t AS BIGINT) END AS ns, arr FROM ("
            "SELECT rowid, split_part(line, ' ', 1) AS t, "
            "CASE WHEN strpos(line, ' ') > 0 THEN line[strpos(line, ' ') + 1:] ELSE '' END AS arr FROM lines)"
        )
        count, untrusted = cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE ns IS NULL OR ns < $low OR ns > $high OR ns <= prev) "
            "FROM (SELECT ns, lag(ns) OVER (ORDER BY n) AS prev FROM segment_lines)",
            {"low": low, "high": high},
        ).fetchall()[0]
    except duckdb.Error:  # e.g. not UTF-8: read_text refuses the file, Python takes it
        return None
    if untrusted or count != newlines:  # (a line DuckDB skipped had a time the judgment must see)
        return None
    events = schema.events if spaced_ev else tuple(e for e, hit in zip(schema.events, present, strict=True) if hit)
    return _Lines("segment_lines", None, events, int(size))


def compact_segment(path: Path, market: str | None = None) -> CompactionResult:
    """Compact one closed JSONL segment into its Parquet file and remove the JSONL. Safe from a worker thread.

    `market` defaults to the segment's directory name (the recorder's layout: <data_dir>/<market>/).
    Raises CompactionError (the JSONL is then untouched) when the file is not a closed segment or cannot be read
    or written, and its SegmentBusy when another compaction holds the segment or the JSONL is gone already.
    """
    path = Path(path)
    named = _CLOSED_JSONL.match(path.name)
    if named is None:
        raise CompactionError(f"{path.name} is not a closed recorder segment (<first_ns>-<last_ns>-<pid>.jsonl)")
    schema = _market_of(path, market)
    started = time.perf_counter()
    if not path.exists():  # (another compaction published it and removed the JSONL, or retention deleted it)
        raise SegmentBusy(f"{path.name} is gone: compacted or deleted meanwhile")
    if not path.is_file():
        raise CompactionError(f"cannot read {path}: not a file")
    with claimed(path):
        return _compact_claimed(path, schema, named, started)


def _compact_claimed(path: Path, schema: MarketSchema, named: re.Match[str], started: float) -> CompactionResult:
    target = parquet_path(path)
    tmp = path.with_name("." + path.stem + _TMP_SUFFIX)
    cur = _cursor()
    try:
        lines = _lines(cur, path, schema, int(named.group(1)), int(named.group(2)))
        parse = eventsql.rows_sql(schema, lines.present, keep_raw=True, all_columns=True, source=lines.source)
        cur.execute("CREATE OR REPLACE TEMP TABLE rows AS " + parse, lines.params)
        cur.execute("DROP TABLE IF EXISTS lines")
        orders = _key_orders(cur, schema)
        rebuilt = _rebuild_case(schema, orders)
        columns = ", ".join(quote(n) for n, _ in schema.stored)
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE typed AS SELECT received_ns, ev, {columns}, "
            f"CASE WHEN raw IS NOT DISTINCT FROM {rebuilt} THEN NULL ELSE raw END AS extra FROM rows"
        )
        cur.execute("DROP TABLE rows")
        cur.execute("DROP TABLE IF EXISTS segment_lines")
        counts = cur.execute("SELECT count(*), count(extra) FROM typed").fetchall()
        meta = json.dumps(
            {"format": _FORMAT, "market": schema.market, "key_orders": orders, "extra_rows": counts[0][1]},
            separators=(",", ":"),
        )
        # Lines come in time order, so this sort only guards against a damaged stamp that still passed; it is
        # cheap without the JSON text (extra is NULL for nearly every row).
        cur.execute(
            f"COPY (SELECT * FROM typed ORDER BY received_ns) TO {literal(str(tmp))} "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {_ROW_GROUP}, "
            f"KV_METADATA {{{_META_KEY}: {literal(meta)}}})"
        )
        cur.execute("DROP TABLE typed")
    except duckdb.Error as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CompactionError(f"cannot compact {path.name}: {exc}") from None
    finally:
        cur.close()
    try:
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent, directory=True)
        path.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CompactionError(f"cannot publish {target.name}: {exc.strerror or exc}") from None
    events, kept_raw = counts[0]
    return CompactionResult(
        source=path,
        target=target,
        events=int(events),
        kept_raw=int(kept_raw),
        source_bytes=lines.size,
        target_bytes=target.stat().st_size,
        seconds=time.perf_counter() - started,
    )


def pending_segments(directory: Path) -> list[Path]:
    """Closed JSONL segments in `directory` waiting for compaction, oldest first."""
    try:
        names = sorted(e.name for e in os.scandir(directory) if _CLOSED_JSONL.match(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(directory) / n for n in names]


def _remove_temporaries(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            if entry.name.startswith(".") and entry.name.endswith(_TMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def finish_pending(directory: Path, market: str | None = None) -> list[CompactionResult]:
    """After a restart: drop temporary files left by an interrupted compaction and compact every closed JSONL
    segment of `directory` (a Parquet beside a surviving JSONL is rewritten from it: the JSONL is the truth until
    it is gone). Segments still open (or left open by a dead process: the recorder renames those when it starts)
    are not touched. Safe from a worker thread; a segment that fails is skipped and the others still run."""
    directory = Path(directory)
    _remove_temporaries(directory)
    results: list[CompactionResult] = []
    for segment in pending_segments(directory):
        with contextlib.suppress(CompactionError, FileNotFoundError):
            results.append(compact_segment(segment, market))
    return results


class Compactor:
    """Compacts closed segments one after another in a thread of its own, at a lower CPU priority than the rest
    of the process (Linux: the thread's nice value), so ingest never waits for it and does not share its core
    with it when it needs the core.

    submit() only puts the path on a queue, so the recorder can call it from the event loop the moment it closes
    a segment; submit_pending() queues a restart's leftovers (finish_pending). `on_result(path, result or error)`
    runs in the compactor's thread after each segment (use loop.call_soon_threadsafe to reach the loop).
    """

    def __init__(
        self,
        *,
        nice: int = 10,
        on_result: Callable[[Path, CompactionResult | CompactionError], None] | None = None,
    ) -> None:
        self.nice = nice
        self.on_result = on_result
        self.compacted = 0
        self.failed = 0
        self.last_error: str | None = None
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._pending = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, path: Path, market: str | None = None) -> None:
        """Queue one closed JSONL segment; returns at once."""
        self._put(lambda: self._compact(Path(path), market))

    def submit_pending(self, directory: Path, market: str | None = None) -> None:
        """Queue what a restart left: temporary files go, every closed JSONL segment of `directory` is compacted."""

        def job() -> None:
            _remove_temporaries(Path(directory))
            for segment in pending_segments(Path(directory)):
                self._compact(segment, market)

        self._put(job)

    def submit_leftovers(self, directory: Path, market: str | None = None) -> None:
        """Queue what earlier runs left in `directory`, for a market whose stream this run may never start (its
        recorder would queue the same when it starts, and a segment queued twice is compacted once): segments left
        open by processes that are gone are closed, then every closed segment is compacted. Temporary files stay:
        another process sharing the data dir may be writing one."""

        def job() -> None:
            finalize_orphans(Path(directory))
            for segment in pending_segments(Path(directory)):
                self._compact(segment, market)

        self._put(job)

    def wait(self, timeout: float | None = None) -> bool:
        """Until every queued segment is done; False when `timeout` (seconds) ran out first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued (up to `timeout`), then stop the thread. Later submits are refused."""
        with self._changed:
            self._closed = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)

    def _put(self, job: Callable[[], None]) -> None:
        with self._changed:
            if self._closed:
                raise RuntimeError("the compactor is closed")
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mcp-polygon-compactor", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: normal priority then
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a bug must not stop every later compaction: say so, keep going
                log.exception("compaction job failed")
            finally:
                with self._changed:
                    self._pending -= 1
                    self._changed.notify_all()

    def _compact(self, path: Path, market: str | None) -> None:
        if not path.exists():  # compacted or deleted by retention since it was queued
            return
        outcome: CompactionResult | CompactionError
        try:
            outcome = compact_segment(path, market)
            self.compacted += 1
        except SegmentBusy as exc:  # another process sharing the data dir has it: not a failure, nothing to report
            log.debug("compaction skipped: %s", exc)
            return
        except CompactionError as exc:
            outcome = exc
            self.failed += 1
            self.last_error = str(exc)
        if self.on_result is not None:
            self.on_result(path, outcome)


# -- replay ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileMeta:
    schema: MarketSchema
    key_orders: dict[str, tuple[str, ...]]
    extra_rows: int | None  # rows kept as text (None: a file from before this was recorded)


_meta_lock = threading.Lock()
_meta_cache: dict[tuple[str, int, int], _FileMeta] = {}  # (path, size, mtime ns) -> metadata; files never change


def _metadata(cur: duckdb.DuckDBPyConnection, path: Path) -> _FileMeta:
    try:
        st = path.stat()
    except OSError as exc:
        raise CompactionError(f"cannot read {path}: {exc.strerror or exc}") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _meta_lock:
        cached = _meta_cache.get(key)
    if cached is not None:
        return cached
    rows = cur.execute(
        "SELECT value FROM parquet_kv_metadata(?) WHERE key = ?", [str(path), _META_KEY.encode()]
    ).fetchall()
    if not rows:
        raise CompactionError(f"{path.name} was not written by mcp-polygon's compaction (no {_META_KEY} metadata)")
    meta = json.loads(bytes(rows[0][0]))
    found = _FileMeta(
        SCHEMAS[meta["market"]],
        {ev: tuple(keys) for ev, keys in meta["key_orders"].items()},
        meta.get("extra_rows"),
    )
    with _meta_lock:
        if len(_meta_cache) > 4096:  # (compacted files are a few per GB of recordings; this bound is never hit)
            _meta_cache.clear()
        _meta_cache[key] = found
    return found


def _prefilter(meta: _FileMeta, flt: ChannelSelection | None) -> str:
    """SQL over a row: a superset of the events `flt` matches (rows kept as JSON text are let through, and the
    exact predicate runs on every decoded event afterwards). A file without such rows gets the plain terms, which
    DuckDB pushes into the scan."""
    if flt is None or flt.all_events:
        return "TRUE"
    terms = [] if meta.extra_rows == 0 else ["extra IS NOT NULL"]
    if flt.prefixes:
        terms.append(f"ev IN ({', '.join(literal(p) for p in sorted(flt.prefixes))})")
    if flt.tickers:
        terms.append(f"symbol IN ({', '.join(literal(t) for t in sorted(flt.tickers))})")
    for ev, ticker in sorted(flt.pairs):
        terms.append(f"(ev = {literal(ev)} AND symbol = {literal(ticker)})")
    return "(" + " OR ".join(f"({t})" for t in terms) + ")"


def replay_compacted(
    path: Path,
    from_ns: int,
    to_ns: int,
    *,
    limit: int = 1000,
    channels: ChannelSelection | None = None,
    match: Callable[[dict[str, object]], bool] | None = None,
) -> CompactedReplay:
    """Events of one compacted segment with from_ns <= event ns <= to_ns, oldest first, at most `limit`, as the
    JSONL replay gives them. `channels` is pushed down to DuckDB; `match` (the same filter's exact predicate, e.g.
    ReadPlan.matches) then decides on each decoded event. Safe from a worker thread."""
    path = Path(path)
    cur = _cursor()
    try:
        meta = _metadata(cur, path)
        raw = f"coalesce(extra, {_rebuild_case(meta.schema, meta.key_orders)})"
        events = [e for e in meta.schema.events if e.ev in meta.key_orders]
        needed = ", ".join(
            ["received_ns", "ev", "extra", *(quote(n) for n, _ in eventsql.stored_columns(meta.schema, events))]
        )
        # The file is in time order and a scan keeps it (preserve_insertion_order), so LIMIT stops the scan early;
        # MATERIALIZED makes DuckDB rebuild the JSON of the rows returned only, not of every row it scanned.
        # One row comes back, the stamps as a list and the events as one JSON array: DuckDB hands a list or a string
        # to Python in one step (a row costs ~4 us, a string in a list ~1.5 us), and orjson decodes the array in one.
        sql = (
            f"WITH page AS MATERIALIZED (SELECT {needed} FROM read_parquet({literal(str(path))}) "
            f"WHERE received_ns BETWEEN $lo AND $hi AND {_prefilter(meta, channels)} LIMIT $n) "
            f"SELECT list(received_ns ORDER BY received_ns), "
            f"'[' || coalesce(string_agg({raw}, ',' ORDER BY received_ns), '') || ']' FROM page"
        )
        return _page(cur, sql, from_ns, to_ns, limit, match)
    except duckdb.Error as exc:
        raise CompactionError(f"cannot replay {path.name}: {exc}") from None
    finally:
        cur.close()


def _page(
    cur: duckdb.DuckDBPyConnection,
    sql: str,
    from_ns: int,
    to_ns: int,
    limit: int,
    match: Callable[[dict[str, object]], bool] | None,
) -> CompactedReplay:
    out: list[tuple[int, dict[str, object]]] = []
    batch = max(64, limit + 1)
    lo = from_ns
    while True:
        stamps, text = cur.execute(sql, {"lo": lo, "hi": to_ns, "n": batch}).fetchall()[0]
        stamps = stamps or []
        events: list[dict[str, object]] = orjson.loads(text)
        if match is None:
            out += zip(stamps, events, strict=True)
            if len(out) > limit:
                return CompactedReplay(out[:limit], True)
        else:
            for ns, event in zip(stamps, events, strict=True):
                if not match(event):
                    continue
                if len(out) >= limit:
                    return CompactedReplay(out, True)
                out.append((ns, event))
        if len(stamps) < batch:
            return CompactedReplay(out, False)
        lo = stamps[-1] + 1
