"""Answers, not rows: SQL (DuckDB, in process) over everything the server holds, and columnar recordings.

Modules
    schema      the one table of views: per (market, event type) its view name and typed columns (SCHEMAS, VIEWS)
    eventsql    the SQL that turns recorder lines into typed rows and rows back into the vendor's JSON
    compaction  closed JSONL segments -> Parquet (zstd), atomically; replay from Parquet exactly as from JSONL
    sandbox     which SQL an agent may run, decided by DuckDB's parser
    engine      QueryEngine: the locked-down DuckDB, the views, the time limit, saved tables
    summary     the per-symbol stream summary and its window parser
    saved       tables of REST results in <data_dir>/saved.duckdb
    results     QueryResult and render_csv
    errors      AnalyticsError and its kinds; every message is one sentence for the agent

Wiring it in (what the recorder and the tools call)
    compact_segment(path: Path, market: str | None = None) -> CompactionResult
        After Recorder closes a segment: `await asyncio.to_thread(compact_segment, closed_path)`. Writes
        <first>-<last>-<pid>.parquet beside it (temporary name, fsync, rename), then removes the JSONL. Raises
        CompactionError (an OSError) and leaves the JSONL untouched when it cannot. Safe in any thread.
    Compactor(*, nice=10, on_result=None): .submit(path, market=None), .submit_pending(directory, market=None),
        .wait(timeout=None) -> bool, .close(timeout=None), counters compacted / failed / last_error
        The recommended way: one background thread at a lower CPU priority (Linux nice 10) that compacts in order;
        submit() only queues, so the recorder can call it on the loop when it closes a segment. on_result(path,
        result or CompactionError) runs in that thread.
    finish_pending(directory: Path, market: str | None = None) -> list[CompactionResult]
        At start-up, after Recorder._prepare has closed orphaned segments: compacts every closed JSONL left over
        and deletes temporary files of an interrupted compaction.
    list_compacted(directory: Path) -> list[CompactedSegment]     (path, first_ns, last_ns, pid, size)
        For retention (POLYGON_RECORD_MAX_MB counts JSONL and Parquet) and for replay's segment choice.
    replay_compacted(path, from_ns, to_ns, *, limit=1000, channels=None, match=None)
            -> CompactedReplay(events: list[(event ns, raw event dict)], more: bool)
        What recorder._replay_segment gives for a JSONL segment, for a Parquet one: the same pairs, in the same
        key order with the same int/float types. From a ReadPlan: channels=plan.channels (pushed down to DuckDB:
        anything with all_events / prefixes / tickers / pairs), match=plan.matches (the exact check on each
        decoded event; None for everything). A segment present both as JSONL and as Parquet (the moment between
        rename and unlink) must be read as JSONL. The lines kept are those recorder.judged_lines trusts (looked
        up at call time), so both paths hold the same events.

    QueryEngine(data_dir, *, markets=None, timeout=10.0, memory_mb=1024, threads=cores-1, live: LiveSource | None)
    QueryEngine.from_settings(settings, live)       data_dir, stream_markets, query_timeout, query_memory_mb
        live(market) -> Sequence[LiveFrame(recv_ns, raw)] is called on the event loop before each query: the
        market's buffered frames, oldest first. recv_ns must be the stamp the Recorder wrote for that frame
        (Recorder.write moves a stamp forward when it is not after the previous frame's last event; today the
        buffer keeps float seconds, which are not exact): the engine counts a buffered frame only when it is newer
        than everything on disk.
    await engine.query(sql, max_rows=100) -> QueryResult                 query_market_data
    await engine.summary(market, symbols=None, since=None) -> QueryResult get_stream_summary
    await engine.save(name, columns, rows) -> SaveSummary(table: WrittenTable, preview: QueryResult)  store_as
    engine.table_names(); engine.close()
    render_csv(result, max_chars, *, header=(), footer=()) -> str         the answer text, within max_chars
    Every failure is an AnalyticsError (QueryRejected, QueryFailed, QueryTimeout, InvalidName) whose str() is the
    one sentence to raise as ToolError; the engine never sees the API key.
"""

from mcp_polygon.analytics.compaction import (
    CompactedReplay,
    CompactedSegment,
    CompactionError,
    CompactionResult,
    Compactor,
    compact_segment,
    finish_pending,
    list_compacted,
    pending_segments,
    replay_compacted,
)
from mcp_polygon.analytics.engine import LiveFrame, LiveSource, QueryEngine, SaveSummary
from mcp_polygon.analytics.errors import AnalyticsError, InvalidName, QueryFailed, QueryRejected, QueryTimeout
from mcp_polygon.analytics.results import QueryResult, render_csv
from mcp_polygon.analytics.schema import SCHEMAS, VIEWS

__all__ = [
    "SCHEMAS",
    "VIEWS",
    "AnalyticsError",
    "CompactedReplay",
    "CompactedSegment",
    "CompactionError",
    "CompactionResult",
    "Compactor",
    "InvalidName",
    "LiveFrame",
    "LiveSource",
    "QueryEngine",
    "QueryFailed",
    "QueryRejected",
    "QueryResult",
    "QueryTimeout",
    "SaveSummary",
    "compact_segment",
    "finish_pending",
    "list_compacted",
    "pending_segments",
    "render_csv",
    "replay_compacted",
]
