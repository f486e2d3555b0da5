"""The 8 stream tools per market, registered for every market in settings.stream_markets from one implementation.

Tools read the manager's typed snapshots (ChangeOutcome, StreamStatus, SubscriptionList, BufferStatus) and render
them; they never touch a socket, a session, a buffer or a recorder. Every refusal is a ToolError with one actionable
sentence. Redaction happens once, at this boundary: `_guard` passes every answer and error through the manager's one
`Redactor`, so the API key cannot leak; the only other masking here is of outside text about to be clipped
(`_shown`), because a clip could cut the key in two and leave half of it for `_guard` not to find. Every answer stays
within settings.max_response_chars: reads stop adding rows at the budget, say so and say where to continue, and any
other answer is cut with a marker.
"""

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from mcp_polygon.config import Settings
from mcp_polygon.redaction import Redactor
from mcp_polygon.streams.buffer import ReadResult
from mcp_polygon.streams.connection import ConnectionState
from mcp_polygon.streams.formatting import (
    TimeFormatError,
    ago,
    clip,
    csv_sections_within,
    iso,
    iso_ns,
    joined_length,
    json_events,
    json_items_within,
    parse_time_ns,
)
from mcp_polygon.streams.manager import (
    FUTURES_EXCHANGES,
    ChangeOutcome,
    MarketStream,
    StreamError,
    StreamManager,
    StreamStatus,
)
from mcp_polygon.streams.markets import MARKETS, Market
from mcp_polygon.streams.protocol import AuthState
from mcp_polygon.streams.recorder import RecordingState, ReplayResult

if TYPE_CHECKING:  # streams/shared.py (and redis) load only with POLYGON_REDIS_URL set
    from mcp_polygon.streams.shared import SharedChange, SharedPicture

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000
MAX_SEQ = 2**63 - 1  # seq numbers never get near it; a bigger since_seq is a typing mistake (and not 64-bit JSON)
SIMULATED_LINE = "SIMULATED DATA: this stream comes from the built-in simulator; it is not real market data."
OUTSIDE_CHARS = 300  # how much of a vendor message, an error or an echoed argument one line repeats
ERROR_CHARS = 2_000  # an error is one sentence; longer means it echoes something huge


def _guard(
    fn: Callable[..., Awaitable[str]], tool_name: str, redact: Redactor, max_chars: int
) -> Callable[..., Awaitable[str]]:
    """Every outcome becomes text or a ToolError with an actionable message; the key never leaves, and no
    answer is longer than `max_chars`."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> str:
        try:
            text = await fn(*args, **kwargs)
        except (ToolError, StreamError, TimeFormatError) as exc:
            raise ToolError(_elide(redact(str(exc)), ERROR_CHARS)) from None
        except Exception as exc:
            log.exception("tool %s failed", tool_name)
            raise ToolError(
                f"{tool_name} failed unexpectedly ({type(exc).__name__}); the server log has details - "
                "retry, or check the stream's status tool."
            ) from None
        return _within(redact(text), max_chars)

    return wrapper


def _within(text: str, max_chars: int) -> str:
    """The safety net under every answer: whole lines up to `max_chars`, then a marker. Reads fit themselves
    to the budget (with a cursor to continue), so this only cuts an answer nothing else priced."""
    if len(text) <= max_chars:
        return text
    marker = f"# truncated: answer capped at {max_chars} characters; ask for less (fewer channels, a smaller limit)."
    cut = text.rfind("\n", 0, max(0, max_chars - len(marker)))
    return text[: cut + 1] + marker if cut > 0 else marker[:max_chars]


def _elide(text: str, limit: int) -> str:
    """`text` with its middle cut out past `limit` characters: an error's start says what went wrong and its end
    what to do, so an echo of a huge argument is what goes."""
    if len(text) <= limit:
        return text
    keep = limit // 2 - 20
    return f"{text[:keep]} [... {len(text) - 2 * keep} characters cut ...] {text[-keep:]}"


def _cut_note(shown: int, total: int, max_chars: int, resume: str, first: str) -> str:
    """The marker of a read cut to the answer budget: what is missing and the call that continues right after
    the last row shown (or, when not even one row fits, the call that skips it)."""
    if shown == 0:
        return (
            f"# truncated: the first event ({first}) alone is longer than the {max_chars}-character answer cap; "
            f"call again with {resume} to skip it."
        )
    return (
        f"# truncated: {total - shown} more of the {total} events read are not shown (answers are capped at "
        f"{max_chars} characters); call again with {resume} to continue right after the last one shown."
    )


def _longest_cut_note(total: int, max_chars: int, resume: str, first: str) -> str:
    """The longest marker a cut of `total` rows can need, to price it before the rows are chosen."""
    return max(_cut_note(0, total, max_chars, resume, first), _cut_note(1, total, max_chars, resume, first), key=len)


STATE_TEXTS = {
    ConnectionState.STREAMING: "streaming (authenticated)",
    ConnectionState.AUTHENTICATING: "connected, authenticating",
    ConnectionState.CONNECTING: "connecting",
    ConnectionState.RECONNECTING: "disconnected, reconnecting",
    ConnectionState.COOLDOWN: "paused: another connection on this API key holds the slot",
    ConnectionState.AUTH_FAILED: "stopped: authentication failed",
    ConnectionState.FAILED: "stopped: endpoint unusable",
    ConnectionState.STOPPED: "stopped",
    ConnectionState.IDLE: "not started",
}


# streams/shared.py's FeedRole values (by value: that module is not imported on the embedded default's path)
_ROLE_TEXTS = {"owner": "owner", "reader": "reader", "off": "not started here"}


def _state_text(state: ConnectionState) -> str:
    return STATE_TEXTS[state]


class _Tools:
    """The tool bodies, parameterised by market."""

    def __init__(self, manager: StreamManager, settings: Settings, market: Market, compact: bool = False) -> None:
        self.manager = manager
        self.settings = settings
        self.market = market
        self.m = market.name
        self.compact = compact  # registered once with a `market` argument (the compact profile), not per market

    def _call(self, verb: str, args: str | None = None) -> str:
        """How the agent calls `verb` for this market, as its tool list names it: `get_crypto_stream_messages` (or
        with `args`, `get_crypto_stream_messages(since_seq=5)`); in the compact profile
        `get_stream_messages(market="crypto", ...)`, since the per-market tools are not listed there."""
        if self.compact:
            return f'{verb}(market="{self.m}"{", " + args if args else ""})'
        name = next(v for v in VERBS if v.verb == verb).name_for(self.m)
        return name if args is None else f"{name}({args})"

    def _head(self) -> list[str]:
        return [SIMULATED_LINE] if self.settings.simulated else []

    def _shown(self, text: object, limit: int = OUTSIDE_CHARS) -> str:
        """Outside text (a vendor message, an error, an echoed argument) as one line may show it: masked first,
        then clipped, so a clip can never cut the key in two and leave half of it readable."""
        return clip(self.manager.redact(str(text)), limit)

    def _list(self, items: Sequence[str], limit: int = 40, sep: str = ", ") -> str:
        """At most `limit` items (each clipped: a topic is the agent's own text, of any length), then a count."""
        shown = sep.join(self._shown(item, 100) for item in items[:limit])
        return shown if len(items) <= limit else f"{shown}{sep}... and {len(items) - limit} more"

    def _outcome_lines(self, o: ChangeOutcome, verb: str) -> list[str]:
        lines: list[str] = []
        if o.acknowledged:
            lines.append(f"{verb} (acknowledged by the server): {self._list(o.acknowledged)}")
        if o.pending:
            lines.append(
                f"pending (no acknowledgement yet; sent when connected, or the server ignored an unknown channel): "
                f"{self._list(o.pending)}"
            )
        if o.rejected:
            rejected = [f"{r.topic} ({r.reason})" for r in o.rejected]
            lines.append(f"REJECTED by the server: {self._list(rejected, 40, '; ')}")
        return lines

    # -- control ---------------------------------------------------------------------------------------------

    async def start(self, channels: list[str] | str, endpoint: str | None) -> str:
        if self.manager.shared is not None:
            return self._shared_change(await self.manager.shared.start(self.m, channels, endpoint), "wanted")
        o = await self.manager.start(self.m, channels, endpoint)
        lines = self._head()
        shown_endpoint = self._shown(o.endpoint)
        if o.state is ConnectionState.STREAMING:
            head = f"{self.m} stream: streaming from {shown_endpoint}"
        elif o.state is ConnectionState.COOLDOWN:
            head = (
                f"{self.m} stream: NOT streaming - the server reported max_connections (another connection on this "
                f"API key and market took the slot); retrying at {iso(o.retry_at, ms=False)} instead of fighting it. "
                f"To take the slot back now: {self._call('stop_stream')}, then {self._call('start_stream')} "
                "(evicts the other)."
            )
        elif o.auth is not AuthState.OK:
            why = f": {self._shown(o.error)}" if o.error else ""
            head = (
                f"{self.m} stream: NOT connected yet{why}. It keeps retrying in the background "
                f"({shown_endpoint}); check {self._call('get_stream_status')}."
            )
        else:
            head = f"{self.m} stream: {_state_text(o.state)} ({shown_endpoint})"
        lines.append(head + (" - already subscribed to all of these." if o.already else ""))
        if o.switched_from:
            lines.append(
                f"switched from {self._shown(o.switched_from)}: a start without endpoint uses the configured feed; "
                "pass endpoint again to stay on another one."
            )
        lines += self._outcome_lines(o, "subscribed")
        head_seq = self._stream().buffer_status().newest_seq
        lines.append(
            f"next: {self._call('get_stream_messages', f'since_seq={head_seq}')} returns only events after this call."
        )
        return "\n".join(lines)

    def _stream(self) -> MarketStream:
        return self.manager.stream(self.m)

    async def stop(self) -> str:
        if self.manager.shared is not None:
            await self.manager.shared.stop(self.m)
            return self._shared_stopped(await self.manager.shared.picture(self.m))
        was = await self.manager.stop(self.m)
        b = self._stream().buffer_status()
        state = "stopped; connection closed" if was else "was not running"
        return "\n".join(
            [
                *self._head(),
                f"{self.m} stream {state}. Subscriptions cleared. The buffer stays readable: {b.size} events "
                f"(seq {b.oldest_seq or 0}-{b.newest_seq}) via {self._call('get_stream_messages')}; recordings via "
                f"{self._call('replay_stream_messages')}.",
            ]
        )

    async def subscribe(self, channels: list[str] | str) -> str:
        if self.manager.shared is not None:
            return self._shared_change(await self.manager.shared.subscribe(self.m, channels), "wanted")
        o = await self.manager.subscribe(self.m, channels)
        lines = [*self._head(), f"{self.m} stream: {_state_text(o.state)}."]
        if o.already:
            lines.append("already subscribed to all of these.")
        lines += self._outcome_lines(o, "subscribed")
        return "\n".join(lines)

    async def unsubscribe(self, channels: list[str] | str) -> str:
        if self.manager.shared is not None:
            return self._shared_change(await self.manager.shared.unsubscribe(self.m, channels), "no longer wanted")
        o = await self.manager.unsubscribe(self.m, channels)
        lines = [*self._head()]
        if o.acknowledged:
            lines.append(f"unsubscribed: {self._list(o.acknowledged)}")
        if o.pending:
            lines.append(f"unsubscribe sent, not yet acknowledged: {self._list(o.pending)}")
        if o.unknown:
            lines.append(f"not subscribed (nothing to do): {self._list(o.unknown)}")
        left = self._stream().topic_names()
        lines.append(f"still subscribed: {self._list(left) if left else 'nothing'}")
        return "\n".join(lines)

    async def list_subscriptions(self) -> str:
        if self.manager.shared is not None:
            picture = await self.manager.shared.picture(self.m)
            return "\n".join([*self._head(), *self._shared_lines(picture, wants=True)])
        subs = self.manager.subscriptions(self.m)
        lines = [*self._head(), f"{self.m} subscriptions ({subs.total}), stream {_state_text(subs.state)}:"]
        if not subs.groups:
            lines.append(f"none. Subscribe with {self._call('start_stream', 'channels=[...]')}.")
        for g in subs.groups:
            et = self.market.events.get(g.prefix)
            title = f"{g.prefix} ({et.title})" if et else g.prefix
            parts = []
            if g.acknowledged:
                parts.append("acknowledged " + self._list([t.partition(".")[2] for t in g.acknowledged], 200))
            if g.pending:
                parts.append("pending " + self._list([t.partition(".")[2] for t in g.pending], 200))
            if g.rejected:
                rejected = [f"{r.topic.partition('.')[2]} ({r.reason})" for r in g.rejected]
                parts.append("rejected " + self._list(rejected, 200, "; "))
            lines.append(f"{title}: " + " | ".join(parts))
        return "\n".join(lines)

    async def status(self) -> str:
        s = self.manager.status(self.m)
        lines = self._head()
        if self.manager.shared is not None:  # who holds the socket first: in a reader "idle" is the normal state
            lines += self._shared_lines(await self.manager.shared.picture(self.m), wants=False)
        lines.append(f"{self.m} stream: {_state_text(s.state)}; endpoint {self._shown(s.endpoint)}")
        lines += self._retry_lines(s)
        lines.append(self._subscriptions_line(s))
        lines.append(self._events_line(s))
        b = s.buffer
        lines.append(
            f"buffer: {b.size}/{b.capacity} events"
            + (f", seq {b.oldest_seq}-{b.newest_seq}" if b.newest_seq else "")
            + f", {b.overwritten} overwritten (read with since_seq often enough to keep up)"
        )
        lines.append(self._connection_line(s))
        if s.input.last_status:
            lines.append(f"last status message: {self._shown(s.input.last_status)}")
        if s.last_error:
            lines.append(f"last error ({ago(s.last_error_at, s.at)}): {self._shown(s.last_error)}")
        if s.input.malformed_frames or s.input.malformed_events:
            lines.append(
                f"malformed input dropped: {s.input.malformed_frames} frames, {s.input.malformed_events} events "
                f"(last: {self._shown(s.input.last_malformed)})"
            )
        lines.append(f"recording: {s.recording.describe()}")  # the same words replay uses
        lines.append(f"now: {iso(s.at, ms=False)}")
        return "\n".join(lines)

    # -- the shared feed (POLYGON_REDIS_URL) ------------------------------------------------------------------

    def _shared_lines(self, p: "SharedPicture", *, wants: bool) -> list[str]:
        """Who holds the upstream socket, this process's part, and (wants=True) who wants what."""
        lines: list[str] = []
        if p.redis_error:
            lines.append(self._shown(p.redis_error, 400))
        if p.owner is None:
            owner = "nobody holds the upstream socket right now (a process with wants takes it within 3 s)"
        elif p.owner == p.process:
            owner = f"this process ({self._shown(p.owner)}) holds the upstream socket"
        else:
            owner = f"process {self._shown(p.owner)} holds the upstream socket; this process reads the shared stream"
        role = _ROLE_TEXTS[p.role.value]
        lines.append(f"shared feed (Redis): {owner}; this process: {role}.")
        if p.head is not None and p.head.head_seq:
            lines.append(f"shared stream: seq {p.head.oldest_seq or 0}-{p.head.head_seq} ({p.head.frames} frames held)")
        if p.resets:
            lines.append(f"Redis came back empty {p.resets} time(s): seq numbers started again from 1.")
        here = self._list(p.wanted_here) if p.wanted_here else "nothing"
        lines.append(f"wanted by this process: {here}")
        if wants:
            union = (
                self._list(p.union) if p.union else f"none. Start with {self._call('start_stream', 'channels=[...]')}."
            )
            lines.append(f"upstream subscriptions (the union of every live process's wants, {len(p.union)}): {union}")
            for w in p.wants:
                mark = " (this process)" if w.process == p.process else ""
                lines.append(f"- {self._shown(w.process, 100)}{mark}: {self._list(sorted(w.channels))}")
        return lines

    def _shared_change(self, c: "SharedChange", verb: str) -> str:
        lines = [*self._head(), *self._shared_lines(c.picture, wants=False)]
        if c.requested:
            lines.append(f"{verb} by this process: {self._list(c.requested)}")
        if c.acknowledged:
            lines.append(f"acknowledged upstream: {self._list(c.acknowledged)}")
        if c.rejected:
            lines.append(f"REJECTED by the server: {self._list(c.rejected, 40, '; ')}")
        if c.unknown:
            lines.append(f"not wanted by this process (nothing to do): {self._list(c.unknown)}")
        lines.append(
            f"next: {self._call('get_stream_messages', f'since_seq={c.head_seq}')} returns only newer events "
            "(seq numbers are the same in every process)."
        )
        return "\n".join(lines)

    def _shared_stopped(self, p: "SharedPicture") -> str:
        b = self._stream().buffer_status()
        return "\n".join([
            *self._head(), *self._shared_lines(p, wants=False),
            f"{self.m} stream stopped in this process: its wants are withdrawn (channels another process wants stay "
            f"subscribed upstream). The buffer stays readable: {b.size} events (seq {b.oldest_seq or 0}-"
            f"{b.newest_seq}) via {self._call('get_stream_messages')}.",
        ])  # fmt: skip

    def _retry_lines(self, s: StreamStatus) -> list[str]:
        retry_at = s.connection.retry_at
        if s.state is ConnectionState.COOLDOWN:
            return [
                f"max_connections: another connection on this API key and market took the slot; "
                f"next attempt {iso(retry_at, ms=False)} ({ago(retry_at, s.at)})."
            ]
        if retry_at:
            return [f"next reconnect attempt {ago(retry_at, s.at)}."]
        return []

    def _subscriptions_line(self, s: StreamStatus) -> str:
        subs = s.subscriptions
        line = f"subscriptions: {len(subs.acknowledged)} acknowledged"
        if subs.acknowledged:
            line += f" ({self._list(subs.acknowledged, 20)})"
        line += f"; {len(subs.pending)} pending"
        if subs.pending:
            line += f" ({self._list(subs.pending, 20)})"
        line += f"; {len(subs.rejected)} rejected"
        if subs.rejected:
            line += " (" + self._list([f"{r.topic}: {r.reason}" for r in subs.rejected], 20, "; ") + ")"
        return line

    def _events_line(self, s: StreamStatus) -> str:
        ev = s.events
        # Event types are the feed's words: a broken feed could send thousands, so only the busiest are named.
        busiest = sorted(ev.per_channel, key=lambda kv: -kv[1])
        per = self._list([f"{k} {v}" for k, v in busiest], 20)
        return (
            f"events: {ev.total} total"
            + (f" ({per})" if per else "")
            + f"; rate {ev.rate_per_s:.1f}/s over the last 10 s; last event {ago(ev.last_at, s.at)}"
        )

    def _connection_line(self, s: StreamStatus) -> str:
        c = s.connection
        line = f"connection: {c.connects} connects, {c.reconnects} reconnects"
        if c.connected_since:
            line += f"; connected since {iso(c.connected_since, ms=False)}"
        if c.last_disconnect:
            line += f"; last disconnect {ago(c.last_disconnect_at, s.at)}: {self._shown(c.last_disconnect)}"
        return line

    # -- reading ---------------------------------------------------------------------------------------------

    async def messages(
        self,
        limit: int | None,
        channel_filter: str | None,
        since_timestamp: str | int | float | None,
        since_seq: int | None,
        format: str | None,
    ) -> str:
        fmt = _format(format)
        limit = _limit(limit, 100)
        since_ns = None
        if since_timestamp is not None and str(since_timestamp).strip() != "":
            since_ns = parse_time_ns(since_timestamp, "since_timestamp")
        if since_seq is not None and since_seq < 0:
            raise ToolError("since_seq must be 0 or more (use the next since_seq from the previous response).")
        r = self.manager.read(
            self.m, limit=limit, channel_filter=channel_filter, since_seq=since_seq, since_ns=since_ns
        )
        st = self.manager.stream(self.m)
        notes = self._read_notes(r, since_seq, st)
        more = ""
        if r.more and (since_seq is not None or since_ns is not None):
            more = f"more matching events are waiting: call again with since_seq={r.next_seq}."
        elif r.more:
            more = "older matching events exist; narrow the filter or use since_seq to page forward."
        if fmt == "json":
            return self._messages_json(r, notes)
        lines = [*self._head(), *notes]
        if not r.events:
            lines.append(self._empty_text(st, r, channel_filter))
            return "\n".join([*lines, *([more] if more else []), f"next since_seq={r.next_seq}"])
        return self._messages_csv(r, lines, more)

    def _read_notes(self, r: ReadResult, since_seq: int | None, st: MarketStream) -> list[str]:
        notes = []
        if r.ahead:
            where = f"its newest seq is {r.head}" if r.head else "nothing is buffered yet"
            notes.append(
                f"since_seq={since_seq} is ahead of this buffer ({where}; the server may have restarted, and seq "
                "numbers start again at 1 with each server process): answering from the oldest buffered event."
            )
        if r.gap:
            notes.append(
                f"GAP: {r.gap} events after since_seq={since_seq} were overwritten before they could be read "
                f"(buffer holds {st.buffer_status().capacity}); poll more often, or use "
                f"{self._call('replay_stream_messages')}."
            )
        return notes

    def _read_summary(self, events: list[tuple[int, float, dict[str, Any]]]) -> str:
        return (
            f"{self.m}: {len(events)} events, seq {events[0][0]}-{events[-1][0]}, received {iso(events[0][1])} to "
            f"{iso(events[-1][1])} (times in rows are the vendor's Unix timestamps)"
        )

    def _messages_csv(self, r: ReadResult, lines: list[str], more: str) -> str:
        """The events as CSV, as many as fit the answer budget, oldest first; a cut says where to continue."""
        events, cap = r.events, self.settings.max_response_chars
        last = events[-1][0]
        # Priced with the longest texts the lines around the rows can take, so the rows never get too much room.
        around = [
            *lines,
            self._read_summary(events),
            _longest_cut_note(len(events), cap, f"since_seq={last}", f"seq {last}"),
            f"next since_seq={max(last, r.next_seq)}",
        ]
        rows = [(seq, ev) for seq, _, ev in events]
        body, shown = csv_sections_within(self.market, rows, "seq", cap - joined_length(around) - 1)
        if shown == len(events):
            return "\n".join(
                [*lines, self._read_summary(events), *body, *([more] if more else []), f"next since_seq={r.next_seq}"]
            )
        resume = events[shown - 1][0] if shown else events[0][0]
        summary = [self._read_summary(events[:shown])] if shown else []
        note = _cut_note(shown, len(events), cap, f"since_seq={resume}", f"seq {events[0][0]}")
        return "\n".join([*lines, *summary, *body, note, f"next since_seq={resume}"])

    def _messages_json(self, r: ReadResult, notes: list[str]) -> str:
        stamps: dict[float, str] = {}  # events of one frame share a receive time: format it once
        events = [
            {"seq": seq, "received_at": stamps.get(t) or stamps.setdefault(t, iso(t)), **ev} for seq, t, ev in r.events
        ]
        body: dict[str, object] = {
            "market": self.m,
            "simulated": self.settings.simulated,
            "count": len(events),
            "next_since_seq": r.next_seq,
            "gap": r.gap,
            "more": r.more,
            "events": events,
        }
        if r.ahead:
            body["since_seq_ahead"] = True
        if notes:
            body["notes"] = notes
        text = json_events(body)
        cap = self.settings.max_response_chars
        if len(text) <= cap:
            return text
        first, last = events[0]["seq"], events[-1]["seq"]
        longest = _longest_cut_note(len(events), cap, f"since_seq={last}", f"seq {last}")
        priced = {
            **body,
            "next_since_seq": last,
            "more": True,
            "truncated": True,
            "events": [],
            "notes": [*notes, longest],
        }
        shown = json_items_within(events, cap - len(json_events(priced)))
        resume = events[shown - 1]["seq"] if shown else first
        note = _cut_note(shown, len(events), cap, f"since_seq={resume}", f"seq {first}")
        body.update(count=shown, next_since_seq=resume, more=True, truncated=True, events=events[:shown])
        body["notes"] = [*notes, note]
        return json_events(body)

    def _empty_text(self, st: MarketStream, r: ReadResult, channel_filter: str | None) -> str:
        if not r.head:
            if st.active:
                return f"{self.m}: no events received yet (state: {_state_text(st.state)})."
            return (
                f"{self.m}: no events in memory; the stream is not running. Start it with "
                f"{self._call('start_stream')}; earlier sessions' events are on disk: "
                f"{self._call('replay_stream_messages')}."
            )
        what = f" matching '{self._shown(channel_filter, 100)}'" if channel_filter else ""
        return f"{self.m}: no new events{what} (buffer seq {r.oldest}-{r.head})."

    async def replay(
        self,
        from_timestamp: str | int | float,
        to_timestamp: str | int | float | None,
        channel_filter: str | None,
        format: str | None,
        limit: int | None,
    ) -> str:
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
        recording = st.recording_status()
        more = ""
        if r.more and r.next_from_ns is not None:
            more = f"more events in the window: call again with from_timestamp={r.next_from_ns} (Unix ns)."
        notes = []
        if r.corrupt_lines:
            notes.append(f"{r.corrupt_lines} corrupt lines skipped (damaged on disk); every other event is returned.")
        if recording.state is RecordingState.FAILED:
            notes.append(f"recording: {recording.describe()}")  # word for word what the status tool says
        if fmt == "json":
            events = [{"received_ns": ns, **ev} for ns, ev in r.events]
            body = {
                "market": self.m,
                "simulated": self.settings.simulated,
                "count": len(events),
                "more": r.more,
                "next_from_timestamp": r.next_from_ns,
                "corrupt_lines_skipped": r.corrupt_lines,
                "events": events,
            }
            if notes:
                body["notes"] = notes
            return self._replay_json(body, notes)
        lines = self._head()
        lines += notes
        if not r.events:
            if not r.segments_total:
                # After a failure the note above has told the state already.
                state = "" if recording.state is RecordingState.FAILED else f" (recording: {recording.describe()})"
                lines.append(f"{self.m}: no recordings yet in {recording.directory}{state}.")
            else:
                what = f" matching '{self._shown(channel_filter, 100)}'" if channel_filter else ""
                lines.append(
                    f"{self.m}: no recorded events{what} between {iso_ns(from_ns)} and {iso_ns(to_ns)}; "
                    f"recordings cover {iso_ns(r.recorded_from_ns)} to {iso_ns(r.recorded_to_ns)}."
                )
            return "\n".join(lines)
        return self._replay_csv(r, lines, more)

    def _replay_summary(self, r: ReplayResult, events: list[tuple[int, dict[str, Any]]]) -> str:
        return (
            f"{self.m} recorded: {len(events)} events received {iso_ns(events[0][0])} to "
            f"{iso_ns(events[-1][0])} ({r.segments_read} of {r.segments_total} segments read)"
        )

    def _replay_csv(self, r: ReplayResult, lines: list[str], more: str) -> str:
        """Recorded events as CSV, as many as fit the answer budget; a cut gives the from_timestamp that
        continues right after the last row shown (event times are unique, so nothing repeats or goes missing)."""
        events, cap = r.events, self.settings.max_response_chars
        worst = f"from_timestamp={events[-1][0] + 1} (Unix ns)"
        around = [
            *lines,
            self._replay_summary(r, events),
            max(
                more or "end of the window.",
                _longest_cut_note(len(events), cap, worst, f"at {events[-1][0]} ns"),
                key=len,
            ),
        ]
        rows: list[tuple[object, dict[str, Any]]] = [(None, ev) for _, ev in events]
        body, shown = csv_sections_within(self.market, rows, None, cap - joined_length(around) - 1)
        if shown == len(events):
            return "\n".join([*lines, self._replay_summary(r, events), *body, more or "end of the window."])
        resume = (events[shown - 1][0] if shown else events[0][0]) + 1
        summary = [self._replay_summary(r, events[:shown])] if shown else []
        note = _cut_note(shown, len(events), cap, f"from_timestamp={resume} (Unix ns)", f"at {events[0][0]} ns")
        return "\n".join([*lines, *summary, *body, note])

    def _replay_json(self, body: dict[str, object], notes: list[str]) -> str:
        text = json_events(body)
        cap = self.settings.max_response_chars
        events = body["events"]
        if len(text) <= cap or not isinstance(events, list) or not events:
            return text
        first, last = events[0]["received_ns"], events[-1]["received_ns"]
        longest = _longest_cut_note(len(events), cap, f"from_timestamp={last + 1} (Unix ns)", f"at {last} ns")
        priced = {
            **body,
            "more": True,
            "next_from_timestamp": last + 1,
            "truncated": True,
            "events": [],
            "notes": [*notes, longest],
        }
        shown = json_items_within(events, cap - len(json_events(priced)))
        resume = (events[shown - 1]["received_ns"] if shown else first) + 1
        note = _cut_note(shown, len(events), cap, f"from_timestamp={resume} (Unix ns)", f"at {first} ns")
        body.update(count=shown, more=True, next_from_timestamp=resume, truncated=True, events=events[:shown])
        body["notes"] = [*notes, note]
        return json_events(body)


def _format(value: str | None) -> str:
    fmt = (value or "csv").strip().lower()
    if fmt not in ("csv", "json"):
        raise ToolError(f"format must be 'csv' or 'json', got {clip(repr(value), 40)}.")
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
    return f"{prefixes}; e.g. {market.prefixes[0]}.{market.ticker_example}.{extra}"


StreamMarket = Literal["stocks", "options", "futures", "indices", "forex", "crypto"]  # config.STREAM_MARKETS

# What a client may assume of each kind of stream tool (MCP tool annotations). Reads look only at this process's
# buffer, recordings and state (closed world); the control verbs talk to the vendor's socket (open world), and
# repeating one leaves the stream as the first call did (idempotent). Stopping and unsubscribing remove
# subscriptions, which is what destructive means here; nothing else deletes anything.
_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
_ADDS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True)
_REMOVES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True)


@dataclass(frozen=True)
class StreamVerb:
    """One of the 8 stream tools, registered per market (`start_crypto_stream`) in the full profile and once with a
    `market` argument (`start_stream`) in the compact one; `{m}` in the templates is the market's name."""

    verb: str
    per_market: str
    title: str
    description: str
    annotations: ToolAnnotations

    def name_for(self, market: str) -> str:
        return self.per_market.format(m=market)


VERBS = (
    StreamVerb(
        "start_stream",
        "start_{m}_stream",
        "Start {m} stream",
        "Start the live {m} stream (one shared connection) and subscribe; idempotent. Says which channels "
        "were acknowledged or rejected.",
        _ADDS,
    ),
    StreamVerb(
        "stop_stream",
        "stop_{m}_stream",
        "Stop {m} stream",
        "Close the {m} stream and clear its subscriptions; buffered events stay readable.",
        _REMOVES,
    ),
    StreamVerb(
        "get_stream_status",
        "get_{m}_stream_status",
        "Get {m} stream status",
        "State of the {m} stream: connection, subscriptions (acknowledged/pending/rejected), event counts and "
        "rate, buffer fill, reconnects, last server status and error.",
        _READ,
    ),
    StreamVerb(
        "subscribe_channels",
        "subscribe_{m}_channels",
        "Subscribe {m} channels",
        "Add channels to the running {m} stream.",
        _ADDS,
    ),
    StreamVerb(
        "unsubscribe_channels",
        "unsubscribe_{m}_channels",
        "Unsubscribe {m} channels",
        "Remove channels from the {m} stream.",
        _REMOVES,
    ),
    StreamVerb(
        "list_subscriptions",
        "list_{m}_subscriptions",
        "List {m} subscriptions",
        "The {m} stream's channels, grouped by channel type.",
        _READ,
    ),
    StreamVerb(
        "get_stream_messages",
        "get_{m}_stream_messages",
        "Read {m} stream events",
        "Buffered {m} events, oldest first. Without since_seq: the newest `limit`; with since_seq: only newer "
        "events, gaps reported.",
        _READ,
    ),
    StreamVerb(
        "replay_stream_messages",
        "replay_{m}_stream_messages",
        "Replay {m} stream events",
        "Recorded {m} events from disk between two receive times, oldest first.",
        _READ,
    ),
)
STREAM_VERBS = tuple(verb.verb for verb in VERBS)


def _by_verb(*fns: Callable[..., Awaitable[str]]) -> dict[str, Callable[..., Awaitable[str]]]:
    """The verb implementations by verb: each function is named after the verb it implements."""
    table = {fn.__name__: fn for fn in fns}
    missing = {verb.verb for verb in VERBS} - set(table)
    if missing or len(table) != len(VERBS):
        raise TypeError(f"stream verbs without exactly one implementation: {sorted(missing) or sorted(table)}")
    return table


def _add_verb_tools(
    server: MCPServer,
    fns: dict[str, Callable[..., Awaitable[str]]],
    market: str,
    settings: Settings,
    redact: Redactor,
) -> None:
    """Register `fns` (one per verb) under the names, titles and annotations of VERBS for `market`."""
    sim = " Data is SIMULATED (built-in simulator)." if settings.simulated else ""
    for verb in VERBS:
        name = verb.name_for(market) if market else verb.verb
        description = verb.description.format(m=market or "market") + (sim if verb.verb == "start_stream" else "")
        server.add_tool(
            _guard(fns[verb.verb], name, redact, settings.max_response_chars),
            name=name,
            title=verb.title.format(m=market or "market"),
            description=description,
            annotations=verb.annotations,
            structured_output=False,
        )


def register_stream_tools(server: MCPServer, manager: StreamManager, settings: Settings) -> None:
    """The 8 stream tools of every market in settings.stream_markets (the full profile)."""
    redact = manager.redact  # one Redactor for the streams, shared with the manager's own error messages
    for name in settings.stream_markets:
        market = MARKETS[name]
        _register_market(server, manager, settings, market, redact)


def _all_channels_help(markets: Sequence[Market]) -> str:
    per_market = []
    for market in markets:
        no_wild = [p for p, e in market.events.items() if not e.wildcard]
        extra = f", {'/'.join(no_wild)} without '*'" if no_wild else ""
        per_market.append(f"{market.name} {' '.join(market.prefixes)} ({market.ticker_example}{extra})")
    return "'<PREFIX>.<ticker>' or '<PREFIX>.*'; prefixes (ticker form): " + "; ".join(per_market)


def register_market_verb_tools(server: MCPServer, manager: StreamManager, settings: Settings) -> None:
    """The 8 stream verbs once, with a `market` argument (the compact profile). Each call runs the same
    per-market implementation (`_Tools`) as the full profile's tool of that market, so the answers are the same."""
    redact = manager.redact
    tools = {name: _Tools(manager, settings, MARKETS[name], compact=True) for name in settings.stream_markets}

    def pick(market: str) -> _Tools:
        chosen = tools.get(market)
        if chosen is None:
            raise ToolError(
                f"The {market} stream is not loaded by this server (POLYGON_TOOLSETS); use one of: {', '.join(tools)}."
            )
        return chosen

    Channels = Annotated[list[str] | str, Field(description=_all_channels_help([MARKETS[m] for m in tools]))]
    # Said once, on start_stream: the prefixes of six markets are the longest text of the compact profile.
    MoreChannels = Annotated[list[str] | str, Field(description="forms as for start_stream, e.g. ['T.AAPL']")]
    Filter = Annotated[str | None, Field(description="channels to keep, comma separated: 'T.AAPL', 'T.*', '*.AAPL'")]
    Format = Annotated[str, Field(description="'csv' or 'json' (raw fields)")]
    Time = str | int | float
    TimeHelp = "ISO 8601, Unix s/ms/ns, or relative like -5m"

    async def start_stream(
        market: StreamMarket,
        channels: Channels,
        endpoint: Annotated[
            str | None,
            Field(description="feed: omit for the configured one; 'realtime', 'delayed', 'business', or a wss:// URL"),
        ] = None,
    ) -> str:
        return await pick(market).start(channels, endpoint)

    async def stop_stream(market: StreamMarket) -> str:
        return await pick(market).stop()

    async def get_stream_status(market: StreamMarket) -> str:
        return await pick(market).status()

    async def subscribe_channels(market: StreamMarket, channels: MoreChannels) -> str:
        return await pick(market).subscribe(channels)

    async def unsubscribe_channels(market: StreamMarket, channels: MoreChannels) -> str:
        return await pick(market).unsubscribe(channels)

    async def list_subscriptions(market: StreamMarket) -> str:
        return await pick(market).list_subscriptions()

    async def get_stream_messages(
        market: StreamMarket,
        limit: Annotated[int, Field(description=f"max events (1-{MAX_LIMIT})")] = 100,
        channel_filter: Filter = None,
        since_timestamp: Annotated[Time | None, Field(description=f"received at/after: {TimeHelp}")] = None,
        since_seq: Annotated[int | None, Field(description="`next since_seq` of the last call", le=MAX_SEQ)] = None,
        format: Format = "csv",
    ) -> str:
        return await pick(market).messages(limit, channel_filter, since_timestamp, since_seq, format)

    async def replay_stream_messages(
        market: StreamMarket,
        from_timestamp: Annotated[Time, Field(description=f"window start (receive time): {TimeHelp}")],
        to_timestamp: Annotated[Time | None, Field(description="window end; default now")] = None,
        channel_filter: Filter = None,
        format: Format = "csv",
        limit: Annotated[int, Field(description=f"max events (1-{MAX_LIMIT})")] = 1000,
    ) -> str:
        return await pick(market).replay(from_timestamp, to_timestamp, channel_filter, format, limit)

    fns = _by_verb(
        start_stream, stop_stream, get_stream_status, subscribe_channels, unsubscribe_channels, list_subscriptions,
        get_stream_messages, replay_stream_messages,
    )  # fmt: skip
    _add_verb_tools(server, fns, "", settings, redact)


def _register_market(
    server: MCPServer, manager: StreamManager, settings: Settings, market: Market, redact: Redactor
) -> None:
    t = _Tools(manager, settings, market)
    m = market.name
    example = f"{market.prefixes[0]}.{market.ticker_example}"
    Channels = Annotated[
        list[str] | str,
        Field(description=_channels_help(market)),
    ]
    Filter = Annotated[
        str | None,
        Field(description=f"e.g. '{example}', '{market.prefixes[0]}.*', '*.{market.ticker_example}'"),
    ]
    Format = Annotated[str, Field(description="'csv' or 'json'")]
    exchanges = ", or one exchange: " + ", ".join(f"'{x}'" for x in FUTURES_EXCHANGES) if m == "futures" else ""

    async def start_stream(
        channels: Channels,
        endpoint: Annotated[
            str | None,
            Field(
                description=f"omit for the configured feed; 'realtime', 'delayed', 'business'{exchanges}, or a "
                "vendor wss:// URL"
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
            Field(description="received at/after this time"),
        ] = None,
        since_seq: Annotated[
            int | None,
            Field(description="`next since_seq` of the last answer", le=MAX_SEQ),
        ] = None,
        format: Format = "csv",
    ) -> str:
        return await t.messages(limit, channel_filter, since_timestamp, since_seq, format)

    async def replay_stream_messages(
        from_timestamp: Annotated[str | int | float, Field(description="window start (receive time)")],
        to_timestamp: Annotated[str | int | float | None, Field(description="window end; default now")] = None,
        channel_filter: Filter = None,
        format: Format = "csv",
        limit: Annotated[int, Field(description=f"max events (1-{MAX_LIMIT})")] = 1000,
    ) -> str:
        return await t.replay(from_timestamp, to_timestamp, channel_filter, format, limit)

    fns = _by_verb(
        start_stream, stop_stream, get_stream_status, subscribe_channels, unsubscribe_channels, list_subscriptions,
        get_stream_messages, replay_stream_messages,
    )  # fmt: skip
    _add_verb_tools(server, fns, m, settings, redact)
