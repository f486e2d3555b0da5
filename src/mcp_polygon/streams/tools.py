"""The 8 stream tools per market, registered for every market in settings.stream_markets from one implementation.

Tools read the buffer and the manager's state; they never touch a socket. Every refusal is a ToolError with
one actionable sentence; every text that leaves here passes through `_redact`, so the API key cannot leak.
"""

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from mcp_polygon.config import Settings
from mcp_polygon.streams.formatting import (
    TimeFormatError,
    ago,
    csv_sections,
    iso,
    iso_ns,
    json_events,
    parse_time_ns,
)
from mcp_polygon.streams.manager import ChangeOutcome, StreamError, StreamManager
from mcp_polygon.streams.markets import MARKETS, Market

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000
SIMULATED_LINE = "SIMULATED DATA: this stream comes from the built-in simulator; it is not real market data."


def _redactor(settings: Settings) -> Callable[[str], str]:
    key = settings.api_key
    if not key or len(key) < 4:
        return lambda text: text
    return lambda text: text.replace(key, "***")


def _guard(fn: Callable[..., Awaitable[str]], tool_name: str, redact: Callable[[str], str]):
    """Every outcome becomes text or a ToolError with an actionable message; the key never leaves."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs) -> str:
        try:
            return redact(await fn(*args, **kwargs))
        except ToolError as exc:
            raise ToolError(redact(str(exc))) from None
        except (StreamError, TimeFormatError) as exc:
            raise ToolError(redact(str(exc))) from None
        except Exception as exc:
            log.exception("tool %s failed", tool_name)
            raise ToolError(
                f"{tool_name} failed unexpectedly ({type(exc).__name__}); the server log has details - "
                "retry, or check get_*_stream_status."
            ) from None

    return wrapper


def _list(items: list[str], limit: int = 40) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... and {len(items) - limit} more"


def _state_text(state: str, auth: str) -> str:
    return {
        "streaming": "streaming (authenticated)",
        "authenticating": "connected, authenticating",
        "connecting": "connecting",
        "reconnecting": "disconnected, reconnecting",
        "cooldown": "paused: another connection on this API key holds the slot",
        "auth_failed": "stopped: authentication failed",
        "failed": "stopped: endpoint unusable",
        "stopped": "stopped",
        "idle": "not started",
    }.get(state, state)


def _outcome_lines(o: ChangeOutcome, verb: str) -> list[str]:
    lines = []
    if o.acknowledged:
        lines.append(f"{verb} (acknowledged by the server): {_list(o.acknowledged)}")
    if o.pending:
        lines.append(
            f"pending (no acknowledgement yet; sent when connected, or the server ignored an unknown channel): "
            f"{_list(o.pending)}"
        )
    if o.rejected:
        lines.append("REJECTED by the server: " + "; ".join(f"{t} ({r})" for t, r in o.rejected.items()))
    return lines


class _Tools:
    """The tool bodies, parameterised by market."""

    def __init__(self, manager: StreamManager, settings: Settings, market: Market) -> None:
        self.manager = manager
        self.settings = settings
        self.market = market
        self.m = market.name

    def _head(self) -> list[str]:
        return [SIMULATED_LINE] if self.settings.simulated else []

    # -- control ---------------------------------------------------------------------------------------------

    async def start(self, channels, endpoint) -> str:
        o = await self.manager.start(self.m, channels, endpoint)
        lines = self._head()
        if o.state == "streaming":
            head = f"{self.m} stream: streaming from {o.endpoint}"
        elif o.state == "cooldown":
            head = (
                f"{self.m} stream: NOT streaming - the server reported max_connections (another connection on this "
                f"API key and market took the slot); retrying at {iso(o.retry_at, ms=False)} instead of fighting it. "
                f"To take the slot back now: stop_{self.m}_stream, then start_{self.m}_stream (evicts the other)."
            )
        elif o.auth != "authenticated":
            why = f": {o.error}" if o.error else ""
            head = (
                f"{self.m} stream: NOT connected yet{why}. It keeps retrying in the background "
                f"({o.endpoint}); check get_{self.m}_stream_status."
            )
        else:
            head = f"{self.m} stream: {_state_text(o.state, o.auth)} ({o.endpoint})"
        lines.append(head + (" - already subscribed to all of these." if o.already else ""))
        lines += _outcome_lines(o, "subscribed")
        b = self.manager.stream(self.m).buffer
        lines.append(f"next: get_{self.m}_stream_messages(since_seq={b.head}) returns only events after this call.")
        return "\n".join(lines)

    async def stop(self) -> str:
        was = await self.manager.stop(self.m)
        b = self.manager.stream(self.m).buffer
        state = "stopped; connection closed" if was else "was not running"
        return "\n".join(
            [
                *self._head(),
                f"{self.m} stream {state}. Subscriptions cleared. The buffer stays readable: {len(b)} events "
                f"(seq {b.oldest if b.head else 0}-{b.head}) via get_{self.m}_stream_messages; recordings via "
                f"replay_{self.m}_stream_messages.",
            ]
        )

    async def subscribe(self, channels) -> str:
        o = await self.manager.subscribe(self.m, channels)
        lines = [*self._head(), f"{self.m} stream: {_state_text(o.state, o.auth)}."]
        if o.already:
            lines.append("already subscribed to all of these.")
        lines += _outcome_lines(o, "subscribed")
        return "\n".join(lines)

    async def unsubscribe(self, channels) -> str:
        o = await self.manager.unsubscribe(self.m, channels)
        lines = [*self._head()]
        if o.acknowledged:
            lines.append(f"unsubscribed: {_list(o.acknowledged)}")
        if o.pending:
            lines.append(f"unsubscribe sent, not yet acknowledged: {_list(o.pending)}")
        if o.unknown:
            lines.append(f"not subscribed (nothing to do): {_list(o.unknown)}")
        left = list(self.manager.stream(self.m).session.topics)
        lines.append(f"still subscribed: {_list(left) if left else 'nothing'}")
        return "\n".join(lines)

    async def list_subscriptions(self) -> str:
        groups = self.manager.subscriptions(self.m)
        st = self.manager.stream(self.m)
        lines = [
            *self._head(),
            f"{self.m} subscriptions ({len(st.session.topics)}), stream {_state_text(st.state, '')}:",
        ]
        if not groups:
            lines.append(f"none. Subscribe with start_{self.m}_stream(channels=[...]).")
        for prefix, g in groups.items():
            et = self.market.events.get(prefix)
            title = f"{prefix} ({et.title})" if et else prefix
            parts = []
            if g["acknowledged"]:
                parts.append("acknowledged " + _list([t.partition(".")[2] for t in g["acknowledged"]], 200))
            if g["pending"]:
                parts.append("pending " + _list([t.partition(".")[2] for t in g["pending"]], 200))
            if g["rejected"]:
                parts.append("rejected " + "; ".join(f"{t.partition('.')[2]} ({r})" for t, r in g["rejected"].items()))
            lines.append(f"{title}: " + " | ".join(parts))
        return "\n".join(lines)

    async def status(self) -> str:
        s = self.manager.status(self.m)
        now = time.time()
        lines = self._head()
        lines.append(f"{self.m} stream: {_state_text(s['state'], s['auth'])}; endpoint {s['endpoint']}")
        if s["state"] == "cooldown":
            lines.append(
                f"max_connections: another connection on this API key and market took the slot; "
                f"next attempt {iso(s['retry_at'], ms=False)} ({ago(s['retry_at'], now)})."
            )
        elif s["retry_at"]:
            lines.append(f"next reconnect attempt {ago(s['retry_at'], now)}.")
        subs = s["subscriptions"]
        sub = f"subscriptions: {len(subs['acknowledged'])} acknowledged"
        if subs["acknowledged"]:
            sub += f" ({_list(subs['acknowledged'], 20)})"
        sub += f"; {len(subs['pending'])} pending"
        if subs["pending"]:
            sub += f" ({_list(subs['pending'], 20)})"
        sub += f"; {len(subs['rejected'])} rejected"
        if subs["rejected"]:
            sub += " (" + "; ".join(f"{t}: {r}" for t, r in list(subs["rejected"].items())[:20]) + ")"
        lines.append(sub)
        per = ", ".join(f"{k} {v}" for k, v in sorted(s["events_per_channel"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"events: {s['events_total']} total"
            + (f" ({per})" if per else "")
            + f"; rate {s['rate_per_s']:.1f}/s over the last 10 s; last event {ago(s['last_event_at'], now)}"
        )
        b = s["buffer"]
        lines.append(
            f"buffer: {b['size']}/{b['capacity']} events"
            + (f", seq {b['oldest_seq']}-{b['newest_seq']}" if b["newest_seq"] else "")
            + f", {b['overwritten']} overwritten (read with since_seq often enough to keep up)"
        )
        conn = f"connection: {s['connects']} connects, {s['reconnects']} reconnects"
        if s["connected_since"]:
            conn += f"; connected since {iso(s['connected_since'], ms=False)}"
        if s["last_disconnect"]:
            conn += f"; last disconnect {ago(s['last_disconnect_at'], now)}: {s['last_disconnect']}"
        lines.append(conn)
        if s["last_status"]:
            lines.append(f"last status message: {s['last_status']}")
        if s["last_error"]:
            lines.append(f"last error ({ago(s['last_error_at'], now)}): {s['last_error']}")
        if s["malformed_frames"] or s["malformed_events"]:
            lines.append(
                f"malformed input dropped: {s['malformed_frames']} frames, {s['malformed_events']} events "
                f"(last: {s['last_malformed']})"
            )
        r = s["recording"]
        if r["error"]:
            lines.append(f"recording: OFF after an error: {r['error']}")
        elif r["enabled"]:
            lines.append(f"recording: on ({r['bytes_written'] / 1e6:.1f} MB written this run) in {r['directory']}")
        else:
            lines.append("recording: off (POLYGON_RECORD=false)")
        lines.append(f"now: {iso(now, ms=False)}")
        return "\n".join(lines)

    # -- reading ---------------------------------------------------------------------------------------------

    async def messages(self, limit, channel_filter, since_timestamp, since_seq, format) -> str:
        fmt = _format(format)
        limit = _limit(limit, 100)
        since_time = None
        if since_timestamp is not None and str(since_timestamp).strip() != "":
            since_time = parse_time_ns(since_timestamp, "since_timestamp") / 1e9
        if since_seq is not None and since_seq < 0:
            raise ToolError("since_seq must be 0 or more (use the next since_seq from the previous response).")
        r = self.manager.read(
            self.m, limit=limit, channel_filter=channel_filter, since_seq=since_seq, since_time=since_time
        )
        st = self.manager.stream(self.m)
        notes = []
        if r.gap:
            notes.append(
                f"GAP: {r.gap} events after since_seq={since_seq} were overwritten before they could be read "
                f"(buffer holds {st.buffer.capacity}); poll more often, or use replay_{self.m}_stream_messages."
            )
        more = ""
        if r.more and (since_seq is not None or since_time is not None):
            more = f"more matching events are waiting: call again with since_seq={r.next_seq}."
        elif r.more:
            more = "older matching events exist; narrow the filter or use since_seq to page forward."
        if fmt == "json":
            stamps: dict[float, str] = {}  # events of one frame share a receive time: format it once
            events = [
                {"seq": seq, "received_at": stamps.get(t) or stamps.setdefault(t, iso(t)), **ev}
                for seq, t, ev in r.events
            ]
            body = {
                "market": self.m,
                "simulated": self.settings.simulated,
                "count": len(events),
                "next_since_seq": r.next_seq,
                "gap": r.gap,
                "more": r.more,
                "events": events,
            }
            if notes:
                body["notes"] = notes
            return json_events(body)
        lines = self._head()
        lines += notes
        if r.events:
            first_t, last_t = r.events[0][1], r.events[-1][1]
            lines.append(
                f"{self.m}: {len(r.events)} events, seq {r.events[0][0]}-{r.events[-1][0]}, "
                f"received {iso(first_t)} to {iso(last_t)} (times in rows are the vendor's Unix timestamps)"
            )
            lines += csv_sections(self.market, [(seq, ev) for seq, _, ev in r.events], "seq")
        else:
            lines.append(self._empty_text(st, r, channel_filter))
        if more:
            lines.append(more)
        lines.append(f"next since_seq={r.next_seq}")
        return "\n".join(lines)

    def _empty_text(self, st, r, channel_filter) -> str:
        if not r.head:
            if st.active:
                return f"{self.m}: no events received yet (state: {_state_text(st.state, '')})."
            return (
                f"{self.m}: no events in memory; the stream is not running. Start it with start_{self.m}_stream; "
                f"earlier sessions' events are on disk: replay_{self.m}_stream_messages."
            )
        what = f" matching '{channel_filter}'" if channel_filter else ""
        return f"{self.m}: no new events{what} (buffer seq {r.oldest}-{r.head})."

    async def replay(self, from_timestamp, to_timestamp, channel_filter, format, limit) -> str:
        fmt = _format(format)
        limit = _limit(limit, 1000)
        from_ns = parse_time_ns(from_timestamp, "from_timestamp")
        to_ns = (
            parse_time_ns(to_timestamp, "to_timestamp")
            if to_timestamp is not None and str(to_timestamp).strip()
            else time.time_ns()
        )
        if to_ns < from_ns:
            raise ToolError(f"to_timestamp ({iso_ns(to_ns)}) is before from_timestamp ({iso_ns(from_ns)}); swap them.")
        r = await self.manager.replay(self.m, from_ns, to_ns, channel_filter=channel_filter, limit=limit)
        st = self.manager.stream(self.m)
        more = ""
        if r.more and r.next_from_ns is not None:
            more = f"more events in the window: call again with from_timestamp={r.next_from_ns} (Unix ns)."
        if fmt == "json":
            events = [{"received_ns": ns, **ev} for ns, ev in r.events]
            body = {
                "market": self.m,
                "simulated": self.settings.simulated,
                "count": len(events),
                "more": r.more,
                "next_from_timestamp": r.next_from_ns,
                "events": events,
            }
            return json_events(body)
        lines = self._head()
        if not r.events:
            if not r.segments_total:
                rec = "on" if st.recorder is not None else "off (POLYGON_RECORD=false)"
                lines.append(f"{self.m}: no recordings yet in {st.record_dir} (recording is {rec}).")
            else:
                what = f" matching '{channel_filter}'" if channel_filter else ""
                lines.append(
                    f"{self.m}: no recorded events{what} between {iso_ns(from_ns)} and {iso_ns(to_ns)}; "
                    f"recordings cover {iso_ns(r.recorded_from_ns)} to {iso_ns(r.recorded_to_ns)}."
                )
            return "\n".join(lines)
        lines.append(
            f"{self.m} recorded: {len(r.events)} events received {iso_ns(r.events[0][0])} to "
            f"{iso_ns(r.events[-1][0])} ({r.segments_read} of {r.segments_total} segments read)"
        )
        lines += csv_sections(self.market, [(None, ev) for _, ev in r.events], None)
        lines.append(more or "end of the window.")
        return "\n".join(lines)


def _format(value: str | None) -> str:
    fmt = (value or "csv").strip().lower()
    if fmt not in ("csv", "json"):
        raise ToolError(f"format must be 'csv' or 'json', got {value!r}.")
    return fmt


def _limit(value: int | None, default: int) -> int:
    if value is None:
        return default
    if value < 1 or value > MAX_LIMIT:
        raise ToolError(f"limit must be between 1 and {MAX_LIMIT}, got {value}.")
    return value


def _channels_help(market: Market) -> str:
    prefixes = ", ".join(f"{p} {e.title}" for p, e in market.events.items())
    no_wild = [p for p, e in market.events.items() if not e.wildcard]
    extra = f" {', '.join(no_wild)} takes no '*'." if no_wild else ""
    return f"Channels '<PREFIX>.<ticker>' or '<PREFIX>.*': {prefixes}. Ticker e.g. {market.ticker_example}.{extra}"


def register_stream_tools(server: MCPServer, manager: StreamManager, settings: Settings) -> None:
    redact = _redactor(settings)
    for name in settings.stream_markets:
        market = MARKETS[name]
        _register_market(server, manager, settings, market, redact)


def _register_market(server, manager, settings, market: Market, redact) -> None:
    t = _Tools(manager, settings, market)
    m = market.name
    example = f"{market.prefixes[0]}.{market.ticker_example}"
    Channels = Annotated[
        list[str] | str,
        Field(description=f"e.g. ['{example}', '{market.prefixes[0]}.*']. {_channels_help(market)}"),
    ]
    Filter = Annotated[
        str | None,
        Field(
            description=f"keep only these channels, comma separated: '{example}', '{market.prefixes[0]}.*', "
            f"'*.{market.ticker_example}'"
        ),
    ]
    Format = Annotated[str, Field(description="'csv' (compact, one section per event type) or 'json' (raw fields)")]

    async def start_stream(
        channels: Channels,
        endpoint: Annotated[
            str | None,
            Field(
                description="optional feed: a base like wss://delayed.massive.com (15-min delayed; market path "
                f"appended) or a full URL like wss://socket.massive.com/{market.path}"
            ),
        ] = None,
    ) -> str:
        return await t.start(channels, endpoint)

    async def stop_stream() -> str:
        return await t.stop()

    async def get_stream_status() -> str:
        return await t.status()

    async def subscribe_channels(channels: Channels) -> str:
        return await t.subscribe(channels)

    async def unsubscribe_channels(channels: Channels) -> str:
        return await t.unsubscribe(channels)

    async def list_subscriptions() -> str:
        return await t.list_subscriptions()

    async def get_stream_messages(
        limit: Annotated[int, Field(description=f"max events (1-{MAX_LIMIT})")] = 100,
        channel_filter: Filter = None,
        since_timestamp: Annotated[
            str | int | float | None,
            Field(description="only events received at/after this: ISO 8601, Unix s/ms/ns, or relative like -5m"),
        ] = None,
        since_seq: Annotated[
            int | None, Field(description="only events after this seq: pass `next since_seq` from the last call")
        ] = None,
        format: Format = "csv",
    ) -> str:
        return await t.messages(limit, channel_filter, since_timestamp, since_seq, format)

    async def replay_stream_messages(
        from_timestamp: Annotated[
            str | int | float, Field(description="window start (receive time): ISO 8601, Unix s/ms/ns, or -15m")
        ],
        to_timestamp: Annotated[str | int | float | None, Field(description="window end; default now")] = None,
        channel_filter: Filter = None,
        format: Format = "csv",
        limit: Annotated[int, Field(description=f"max events (1-{MAX_LIMIT})")] = 1000,
    ) -> str:
        return await t.replay(from_timestamp, to_timestamp, channel_filter, format, limit)

    sim = " Data is SIMULATED (built-in simulator)." if settings.simulated else ""
    specs = [
        (
            f"start_{m}_stream",
            start_stream,
            f"Start the live {m} WebSocket stream (one shared connection) and subscribe to channels; idempotent. "
            f"Returns auth result and which channels the server acknowledged or rejected.{sim}",
        ),
        (
            f"stop_{m}_stream",
            stop_stream,
            f"Close the {m} stream and clear its subscriptions; buffered events stay readable.",
        ),
        (
            f"get_{m}_stream_status",
            get_stream_status,
            f"State of the {m} stream: connection, subscriptions (acknowledged/pending/rejected), event counts and "
            "rate, buffer fill, reconnects, last server status and error.",
        ),
        (f"subscribe_{m}_channels", subscribe_channels, f"Add channels to the running {m} stream."),
        (f"unsubscribe_{m}_channels", unsubscribe_channels, f"Remove channels from the {m} stream."),
        (f"list_{m}_subscriptions", list_subscriptions, f"The {m} stream's channels, grouped by channel type."),
        (
            f"get_{m}_stream_messages",
            get_stream_messages,
            f"Buffered {m} events, oldest first, as CSV (one section per event type) or JSON. Without since_seq: "
            "the newest `limit`. With since_seq (from the previous response's `next since_seq=N`): only newer "
            "events, no duplicates; gaps from buffer overwrites are reported.",
        ),
        (
            f"replay_{m}_stream_messages",
            replay_stream_messages,
            f"Recorded {m} events from disk between two receive times (survives restarts), oldest first.",
        ),
    ]
    for tool_name, fn, description in specs:
        server.add_tool(_guard(fn, tool_name, redact), name=tool_name, description=description, structured_output=False)
