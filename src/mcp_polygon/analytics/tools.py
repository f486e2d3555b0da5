"""The analytics tools: query_market_data (SQL over everything the server holds) and get_stream_summary, and the
Analytics bundle the app owns (engine + compaction queue) that also backs the REST tools' `store_as`.

Both tools are registered once (not per market), and only when a stream market is enabled. Their answers pass the
same redaction and size budget as every other answer; every AnalyticsError becomes a ToolError with its sentence.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from mcp_polygon.analytics.compaction import Compactor
from mcp_polygon.analytics.engine import DEFAULT_MAX_ROWS, MAX_ROWS_LIMIT, LiveFrame, QueryEngine
from mcp_polygon.analytics.errors import AnalyticsError
from mcp_polygon.analytics.results import QueryResult, render_csv
from mcp_polygon.analytics.schema import SCHEMAS
from mcp_polygon.config import Settings
from mcp_polygon.redaction import Redactor
from mcp_polygon.streams.manager import StreamManager

log = logging.getLogger(__name__)

SIMULATED_LINE = "# SIMULATED DATA (mcp-polygon --simulate): not real market data"
STORE_PREVIEW_ROWS = 5
ERROR_CHARS = 2_000
# Reads only this process's recordings, buffers and saved tables: nothing is changed, nothing outside is called.
_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
_CLOSE_WAIT = 5.0  # seconds the compaction queue may finish at shutdown; what is left is finished at the next start


@dataclass
class Analytics:
    """The query engine and the compaction queue, for the life of the process."""

    engine: QueryEngine
    compactor: Compactor
    redact: Redactor
    settings: Settings
    _closed: bool = field(default=False, init=False)

    async def aclose(self) -> None:
        """After the streams are closed (their last segments are queued by then): let compaction finish a little,
        then close the engine. Safe more than once."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self.compactor.close, _CLOSE_WAIT)
        await asyncio.to_thread(self.engine.close)

    async def store(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[object]], source: str) -> str:
        """Save rows as table `name` and answer with rows, columns and a 5-row preview (store_as)."""
        try:
            saved = await self.engine.save(name, columns, rows)
        except AnalyticsError as exc:
            raise ToolError(self.redact(str(exc))) from None
        table = saved.table
        header = [SIMULATED_LINE] if self.settings.simulated else []
        rows = f"{table.rows:,} row{'' if table.rows == 1 else 's'}"
        typed = ", ".join(f"{c} {t}" for c, t in zip(table.columns, table.types, strict=True))
        header.append(f"# saved {rows} of {source} as table {table.name} ({len(table.columns)} columns: {typed})")
        if table.renamed:
            header.append("# renamed columns: " + ", ".join(f"{a} -> {b}" for a, b in table.renamed))
        footer = [f"# query it with query_market_data, e.g. SELECT count(*) FROM {table.name}"]
        preview = saved.preview
        text = render_csv(
            QueryResult(preview.columns, preview.types, preview.rows, table.rows, table.rows > len(preview.rows)),
            self.settings.max_response_chars,
            header=header,
            footer=footer,
        )
        return self.redact(text.replace(" shown (max_rows); aggregate, filter or add LIMIT for the rest", " shown"))


def live_source(manager: StreamManager) -> Callable[[str], Sequence[LiveFrame]]:
    """The engine's view of the buffers: each market's frames with the recorder's exact stamps (on the loop)."""

    def frames(market: str) -> Sequence[LiveFrame]:
        return [LiveFrame(f.recv_ns, f.raw) for f in manager.buffered_frames(market)]

    return frames


def build_analytics(settings: Settings, manager: StreamManager) -> Analytics:
    """The engine over settings.data_dir, wired to the manager: its buffers feed the views, and every segment a
    recorder closes goes to the compaction queue. What earlier runs left uncompacted is queued now, for every
    stream market (its stream may never start in this run); until it is done the views read it as JSONL."""
    compactor = Compactor()
    engine = QueryEngine.from_settings(settings, live_source(manager))
    manager.on_segment_closed = compactor.submit
    for market in engine.markets:
        compactor.submit_leftovers(engine.data_dir / market, market)  # (listed in the compactor's thread)
    return Analytics(engine=engine, compactor=compactor, redact=manager.redact, settings=settings)


def _views_text() -> str:
    return "; ".join(f"{m}: {', '.join(e.view.removeprefix(m + '_') for e in s.events)}" for m, s in SCHEMAS.items())


def _guard(fn: Callable[..., Awaitable[str]], name: str, redact: Redactor, max_chars: int) -> Callable[..., Any]:
    """Every failure a ToolError with one sentence, the key masked everywhere, no answer over max_chars."""

    @functools.wraps(fn)  # (keeps the signature: it is the tool's input schema)
    async def wrapper(*args: Any, **kwargs: Any) -> str:
        try:
            text = await fn(*args, **kwargs)
        except AnalyticsError as exc:
            raise ToolError(_clip(redact(str(exc)), ERROR_CHARS)) from None
        except ToolError as exc:
            raise ToolError(_clip(redact(str(exc)), ERROR_CHARS)) from None
        except Exception as exc:
            log.exception("tool %s failed", name)
            raise ToolError(
                f"{name} failed unexpectedly ({type(exc).__name__}); the server log has details - retry."
            ) from None
        return _clip(redact(text), max_chars)

    return wrapper


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def register_analytics_tools(server: MCPServer, analytics: Analytics, settings: Settings) -> None:
    """query_market_data and get_stream_summary, once, when at least one stream market is enabled."""
    markets = tuple(m for m in settings.stream_markets if m in SCHEMAS)
    if not markets:
        return
    engine, redact, cap = analytics.engine, analytics.redact, settings.max_response_chars
    header = [SIMULATED_LINE] if settings.simulated else []

    async def query_market_data(
        sql: Annotated[str, Field(description="One read-only DuckDB statement.")],
        max_rows: Annotated[int, Field(ge=1, le=MAX_ROWS_LIMIT)] = DEFAULT_MAX_ROWS,
    ) -> str:
        result = await engine.query(sql, max_rows)
        return render_csv(result, cap, header=header)

    async def get_stream_summary(
        market: Annotated[str, Field(description=f"One of {', '.join(markets)}.")],
        symbols: Annotated[
            list[str] | str | None, Field(description="Symbols (list or comma-separated); default all.")
        ] = None,
        since: Annotated[
            str | None, Field(description="Window start: ISO, Unix time, or relative like -5m; default all held.")
        ] = None,
    ) -> str:
        result = await engine.summary(market, symbols, since)
        window = f"since {since}" if since else "over everything held"
        return render_csv(result, cap, header=[*header, f"# {market} summary per symbol, {window}"])

    server.add_tool(
        _guard(query_market_data, "query_market_data", redact, cap),
        name="query_market_data",
        title="SQL over market data",
        description=(
            "Read-only SQL (DuckDB dialect: time_bucket, window functions, ASOF JOIN) over every stream event the "
            "server holds (recordings on disk + buffer, across restarts) and tables saved with store_as; CSV answer "
            "with row count. Views are <market>_<event>: " + _views_text() + ". Columns as in the stream CSV; "
            "symbol; received and timestamp are UTC TIMESTAMP. SHOW TABLES and DESCRIBE <view> work. "
            "Only SELECT/WITH/SHOW/DESCRIBE/EXPLAIN; no files or settings."
        ),
        annotations=_READ,
        structured_output=False,
    )
    server.add_tool(
        _guard(get_stream_summary, "get_stream_summary", redact, cap),
        name="get_stream_summary",
        title="Where each symbol is now",
        description=(
            "One row per symbol from the stream data held: last price/size/time, bid, ask, spread (last quote), "
            "open, high, low, close, volume, vwap, trades, events_per_s over the window; prices from trades "
            "(indices: values), else bars. Columns without data are left out."
        ),
        annotations=_READ,
        structured_output=False,
    )
