"""Sans-I/O session logic for the vendor WebSocket protocol: no sockets, no asyncio, no clock, plain function calls.

The I/O layer (connection.py) feeds every received frame to `ProtocolSession.receive(data, now_ns)` and sends
whatever `data_to_send()` returns. The session builds the auth/subscribe/unsubscribe messages, tracks authentication
and the acknowledgement of every topic (TopicStatus: pending / acknowledged / rejected with the server's reason), and
classifies every status event. Time comes in with the frame (python-websockets style), so every state change can be
replayed in a test with exact times.

Data events are never turned into Python objects of ours: a frame of data events only (the firehose case) is not
decoded at all (see `receive`); a frame with status events or anything unusual is decoded once with orjson, and
its data events are handed on as compact raw bytes plus per-event-type counts.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from operator import itemgetter
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson

from mcp_polygon.redaction import Redactor

_loads = orjson.loads
_dumps = orjson.dumps
_get_ev = itemgetter("ev")
# The fast path reads a compact frame's event types without decoding it. Every event the vendor (and orjson)
# writes starts with `{"ev":"<type>"`: the first right after the array's `[`, every other right after the previous
# event's `},`. See ProtocolSession.receive for why counting these is exact.
_FIRST_EV = re.compile(rb'\[\{"ev":"([^"\\]*)"').match
_NEXT_EVS = re.compile(rb'\},\{"ev":"([^"\\]*)"').findall
PREVIEW_WINDOW = 4096  # characters of a malformed frame masked before its first 60 are quoted

SUBSCRIBE_CHUNK = 500  # topics per subscribe/unsubscribe message
HISTORY_LENGTH = 50  # status events kept for the status tool


class Status(StrEnum):
    CONNECTED = "connected"
    AUTH_SUCCESS = "auth_success"
    AUTH_FAILED = "auth_failed"
    AUTH_TIMEOUT = "auth_timeout"
    AUTH_REQUIRED = "auth_required"
    SUCCESS = "success"
    ERROR = "error"
    MAX_CONNECTIONS = "max_connections"
    SLOW_CONSUMER = "slow_consumer"
    FORCE_DISCONNECT = "force_disconnect"
    UNKNOWN = "unknown"


class AckAction(StrEnum):
    """What a `success` status acknowledges."""

    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"


@dataclass(frozen=True, slots=True)
class StatusEvent:
    kind: Status
    status: str  # the raw `status` field
    message: str
    action: AckAction | None = None  # for SUCCESS acks of a subscribe or an unsubscribe
    topics: tuple[str, ...] = ()
    plan_lacks_websocket: bool = False  # the auth_failed variant "Your plan doesn't include websocket access"

    def describe(self) -> str:
        return f"{self.status}: {self.message}" if self.message else self.status


def classify(event: dict[str, Any]) -> StatusEvent:
    """Classify one `{"ev": "status", ...}` event. Never raises, whatever the event holds."""
    raw_status = event.get("status")
    status = raw_status.strip().lower() if isinstance(raw_status, str) else ""
    raw_message = event.get("message")
    message = raw_message.strip() if isinstance(raw_message, str) else ("" if raw_message is None else str(raw_message))
    lower = message.lower()
    display = status or str(raw_status or "")
    plan = "websocket access" in lower or "plan doesn't include" in lower or "plan does not include" in lower

    def make(kind: Status, action: AckAction | None = None, topics: tuple[str, ...] = ()) -> StatusEvent:
        return StatusEvent(kind, display, message, action, topics, plan and kind is Status.AUTH_FAILED)

    if status in ("connected",):
        return make(Status.CONNECTED)
    if status == "auth_success" or (status == "success" and lower == "authenticated"):
        return make(Status.AUTH_SUCCESS)
    if status == "auth_failed" or (status == "error" and ("authentication failed" in lower or plan)):
        return make(Status.AUTH_FAILED)
    if status == "auth_timeout":
        return make(Status.AUTH_TIMEOUT)
    if status == "auth_required":
        return make(Status.AUTH_REQUIRED)
    if status == "max_connections" or "maximum number of connections" in lower:
        return make(Status.MAX_CONNECTIONS)
    if status == "slow_consumer":
        return make(Status.SLOW_CONSUMER)
    if status == "force_disconnect":
        return make(Status.FORCE_DISCONNECT)
    if status == "success":
        for action in (AckAction.UNSUBSCRIBED, AckAction.SUBSCRIBED):  # "unsubscribed" first: it contains "subscribed"
            head = action.value + " to:"
            if lower.startswith(head):
                topics = tuple(t.strip() for t in message[len(head) :].split(",") if t.strip())
                return make(Status.SUCCESS, action, topics)
        return make(Status.SUCCESS)
    if status == "error":
        return make(Status.ERROR)
    return make(Status.UNKNOWN)


# Data events per `ev`: bytes keys on the fast path (read by a regex, never decoded), str keys on the slow path.
EventCounts = Counter[bytes] | Counter[str]


class Frame(NamedTuple):
    """One received frame, classified.

    raw: the data events (status events and malformed entries removed) as a compact JSON array without
    newlines, ready for the buffer and the recorder; None when the frame had no data events.
    """

    raw: bytes | None
    count: int  # type: ignore[assignment]  # shadows tuple.count; every caller reads the field
    counts: EventCounts | None  # None exactly when raw is None
    statuses: list[StatusEvent]
    malformed: str | None  # why (part of) the frame was dropped, when it was
    # raw is proven laid out as buffer.laid_out says (the fast path's proof below), so a pair read skips the check.
    flat: bool = False


_NO_STATUS: list[StatusEvent] = []


class TopicStatus(StrEnum):
    """Where one desired subscription stands with the server."""

    PENDING = "pending"  # not sent yet, or sent and not answered
    ACKNOWLEDGED = "acknowledged"
    REJECTED = "rejected"  # the server answered with an error; `reason` says what it said


@dataclass(frozen=True, slots=True)
class TopicState:
    status: TopicStatus = TopicStatus.PENDING
    reason: str | None = None  # the server's words, for a rejection
    sent: bool = False  # a subscribe for it went out on the current connection


_PENDING = TopicState()
_PENDING_SENT = TopicState(sent=True)


class AuthState(StrEnum):
    DISCONNECTED = "disconnected"
    PENDING = "pending"  # auth sent, no answer yet
    OK = "authenticated"
    FAILED = "failed"


class ProtocolSession:
    """Authentication, subscriptions and status handling for one market, across any number of connections.

    The desired subscriptions survive a reconnect: `connection_opened()` queues the auth message and, once
    `auth_success` arrives, every active topic is subscribed again. Outside code changes the session only through
    its methods; what it reads (auth, topics, the last error...) it reads, and never writes.
    """

    def __init__(self, api_key: str | None, redact: Redactor | None = None) -> None:
        self._key = api_key or ""
        # Masks the key in everything the vendor says back, before it is kept or logged (one Redactor per process
        # is enough: the stream manager passes its own).
        self.redact = redact if redact is not None else Redactor(api_key)
        self._auth = AuthState.DISCONNECTED
        self.auth_message: str | None = None  # the server's last auth-related message
        self.plan_lacks_websocket = False
        self._topics: dict[str, TopicState] = {}  # desired subscriptions, in the order added
        self._unsubscribing: dict[str, None] = {}  # unsubscribe sent, ack not yet seen (an ordered set)
        self._awaiting: dict[str, None] = {}  # subscribe sent on this connection, no answer yet (send order)
        self._outbox: list[str] = []
        self.terminal: StatusEvent | None = None  # set when the server said it will drop us
        self.last_status: StatusEvent | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # Unix seconds, from the `now_ns` of the frame that said it
        self.warning: StatusEvent | None = None  # slow_consumer / force_disconnect / terminal, on this socket
        self.history: deque[tuple[float, StatusEvent]] = deque(maxlen=HISTORY_LENGTH)
        self.status_counts: Counter[str] = Counter()
        self.malformed_frames = 0
        self.malformed_events = 0
        self.last_malformed: str | None = None

    # -- outgoing ----------------------------------------------------------------------------------------------

    def data_to_send(self) -> list[str]:
        out, self._outbox = self._outbox, []
        return out

    def _queue(self, action: str, topics: list[str]) -> None:
        for i in range(0, len(topics), SUBSCRIBE_CHUNK):
            chunk = ",".join(topics[i : i + SUBSCRIBE_CHUNK])
            self._outbox.append(_dumps({"action": action, "params": chunk}).decode())

    def connection_opened(self) -> None:
        """A socket is open: authenticate first; subscriptions follow auth_success."""
        self._outbox = []
        self._awaiting.clear()
        self._unsubscribing.clear()  # (cleared, not replaced: a view of it handed out stays true)
        self.terminal = None
        self.warning = None
        self._auth = AuthState.PENDING
        self._unsent_all()
        self._outbox.append(_dumps({"action": "auth", "params": self._key}).decode())

    def connection_lost(self) -> None:
        if self._auth is not AuthState.FAILED:
            self._auth = AuthState.DISCONNECTED
        self._awaiting.clear()
        self._unsubscribing.clear()
        self._outbox = []
        self._unsent_all()

    def _unsent_all(self) -> None:
        """A new (or no) connection: nothing is sent on it yet, and an acknowledgement from the old one is void."""
        topics = self._topics
        for t, st in topics.items():
            if st.status is TopicStatus.ACKNOWLEDGED:
                topics[t] = _PENDING
            elif st.sent:
                topics[t] = replace(st, sent=False)

    def reset_auth_failure(self) -> None:
        """Forget a failed authentication, so that a new start tries the key again (the tool asked for it)."""
        if self._auth is AuthState.FAILED:
            self._auth = AuthState.DISCONNECTED

    def subscribe(self, topics: Iterable[str]) -> list[str]:
        """Add topics (already validated). Re-subscribing a rejected topic retries it. Returns what will be sent."""
        fresh: list[str] = []
        for t in topics:
            st = self._topics.get(t)
            if st is None or st.status is TopicStatus.REJECTED:
                self._topics[t] = _PENDING
                fresh.append(t)
            self._unsubscribing.pop(t, None)
        if self._auth is AuthState.OK:
            self._send_subscribe(fresh)
        return fresh

    def _send_subscribe(self, topics: list[str]) -> None:
        if not topics:
            return
        for t in topics:
            self._topics[t] = _PENDING_SENT
            self._awaiting[t] = None
        self._queue("subscribe", topics)

    def unsubscribe(self, topics: Iterable[str]) -> list[str]:
        """Remove topics. Returns the ones that were subscribed (and are now being unsubscribed)."""
        gone: list[str] = []
        for t in topics:
            st = self._topics.pop(t, None)
            if st is None:
                continue
            self._awaiting.pop(t, None)
            gone.append(t)
            if st.sent and st.status is not TopicStatus.REJECTED:
                self._unsubscribing[t] = None
        if self._auth is AuthState.OK:
            send = [t for t in gone if t in self._unsubscribing]
            if send:
                self._queue("unsubscribe", send)
        return gone

    def clear(self) -> None:
        """Forget every subscription (used when the stream is stopped)."""
        self._topics.clear()
        self._awaiting.clear()
        self._unsubscribing.clear()

    # -- queries ---------------------------------------------------------------------------------------------

    @property
    def auth(self) -> AuthState:
        return self._auth

    @property
    def topics(self) -> Mapping[str, TopicState]:
        """The desired subscriptions in the order added, read-only."""
        return MappingProxyType(self._topics)

    @property
    def unsubscribing(self) -> Collection[str]:
        """Topics whose unsubscribe is sent and not yet acknowledged, in send order, read-only."""
        return self._unsubscribing.keys()

    def by_status(self, status: TopicStatus) -> list[str]:
        return [t for t, st in self._topics.items() if st.status is status]

    def rejections(self) -> dict[str, str]:
        """Each rejected topic and the server's reason."""
        return {t: st.reason or "rejected" for t, st in self._topics.items() if st.status is TopicStatus.REJECTED}

    def all_acknowledged(self, topics: Iterable[str]) -> bool:
        """True when every one of `topics` is subscribed and acknowledged on the current connection."""
        known = self._topics
        return all(t in known and known[t].status is TopicStatus.ACKNOWLEDGED for t in topics)

    def settled(self, topics: Iterable[str] | None = None) -> bool:
        """True when no topic in `topics` (default: all) is still waiting for an answer."""
        known = self._topics
        names = known if topics is None else topics
        return all(known[t].status is not TopicStatus.PENDING for t in names if t in known)

    # -- incoming --------------------------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview | str, now_ns: int) -> Frame:
        """Classify one frame received at `now_ns` (Unix ns). Status events update the session; data events come
        back as raw bytes + counts.

        What is counted is what a reader can decode: `count` is exactly the number of top-level objects with a
        string `ev`, and anything else in the frame (an object without `ev`, a number, a nested array) is counted
        as malformed and left out of `raw`.

        Fast path (a frame of data events only, the firehose case): no JSON decoding. Two regexes read the event
        types (C speed) where the frame holds `[{"ev":"X"` at its start and `},{"ev":"X"` between events; the
        frame is taken as it is only when it is ASCII, has no newline, ends with `}]` and holds exactly as many
        `{` and as many `"ev"` as there are such event starts. In valid JSON that proves the count: a `{` cannot
        be followed by `"ev":"` inside a string, so every `{` is an object whose first key is `ev` with a string
        value, and each of them either opens the top-level array or directly follows a sibling object; walking
        back along those siblings always reaches the first element, so every object is a top-level element, the
        elements are exactly these objects (the frame ends with one), and none has a second `ev` key. An
        `ev`-less object, a nested `ev`, a non-object element, whitespace, escapes or a status event each break
        one of the equalities and send the frame to the slow path, which decodes it with orjson, drops and counts
        malformed entries and re-encodes what is left. Non-ASCII frames take the slow path too, so invalid UTF-8
        is caught here rather than at read time; other invalid JSON inside an ASCII `[{...}]` frame (a bare
        `1.2.3`, say) is still only found when a reader decodes it, as decoding every frame would halve ingest.
        """
        if type(data) is not bytes:
            data = data.encode() if isinstance(data, str) else bytes(data)
        first = _FIRST_EV(data)
        if first is not None and data.endswith(b"}]") and data.isascii() and b"\n" not in data:
            evs: list[bytes] = _NEXT_EVS(data)
            n = len(evs) + 1
            if data.count(b"{") == n and data.count(b'"ev"') == n:
                counts: Counter[bytes] = Counter(evs)
                counts[first.group(1)] += 1
                if b"status" not in counts:
                    return Frame(data, n, counts, _NO_STATUS, None, True)
        return self._receive_slow(data, now_ns / 1e9)

    def _receive_slow(self, received: bytes, now: float) -> Frame:
        try:
            events = _loads(received)
        except orjson.JSONDecodeError:
            return self._malformed_frame("not JSON", received)
        data: bytes | None = received  # None once the events differ from these bytes: re-encoded at the end
        if type(events) is not list:
            if type(events) is not dict:
                return self._malformed_frame(f"a JSON {type(events).__name__}, not an array", received)
            events = [events]
            data = None
        malformed = None
        counts: Counter[str] | None
        try:
            counts = Counter(map(_get_ev, events))
        except (KeyError, TypeError):
            counts = None
        if counts is None or any(type(k) is not str for k in counts):
            events, dropped = _clean(events)
            data = None
            counts = Counter(map(_get_ev, events))
            self.malformed_events += dropped
            malformed = f"{dropped} event(s) without a string 'ev' field dropped"
            self.last_malformed = malformed
        statuses = _NO_STATUS
        if "status" in counts:
            statuses = [self._handle(classify(e), now) for e in events if e["ev"] == "status"]
            n_status = counts.pop("status")
            if n_status == len(events):
                return Frame(None, 0, None, statuses, malformed)
            events = [e for e in events if e["ev"] != "status"]
            data = None
        if not events:
            return Frame(None, 0, None, statuses, malformed)
        if data is None or b"\n" in data:
            data = _dumps(events)
        return Frame(data, len(events), counts, statuses, malformed)

    def _malformed_frame(self, why: str, data: bytes) -> Frame:
        self.malformed_frames += 1
        # Masked before it is cut, so that a key echoed across the cut cannot show half of itself.
        preview = self.redact(data[:PREVIEW_WINDOW].decode("utf-8", "replace"))[:60]
        self.last_malformed = f"frame dropped: {why} ({preview!r}{'...' if len(data) > 60 else ''})"
        return Frame(None, 0, None, _NO_STATUS, self.last_malformed)

    def _masked(self, st: StatusEvent) -> StatusEvent:
        """The status event with the API key masked: a vendor that echoes what it was sent must not put the key
        into a log line, last_error, the status history or a topic's rejection reason."""
        redact = self.redact
        if not redact.active:
            return st
        status, message = redact(st.status), redact(st.message)
        if status == st.status and message == st.message:
            return st
        return replace(st, status=status, message=message, topics=tuple(map(redact, st.topics)))

    def _handle(self, raw: StatusEvent, now: float) -> StatusEvent:
        st = self._masked(raw)
        self.last_status = st
        self.history.append((now, st))
        self.status_counts[st.kind.value] += 1
        kind = st.kind
        if kind is Status.AUTH_SUCCESS:
            self._auth = AuthState.OK
            self.auth_message = st.message
            self._send_subscribe(
                [t for t, s in self._topics.items() if not s.sent and s.status is not TopicStatus.REJECTED]
            )
        elif kind is Status.AUTH_FAILED:
            self._auth = AuthState.FAILED
            self.auth_message = st.message
            self.plan_lacks_websocket = st.plan_lacks_websocket
            self.last_error, self.last_error_at = st.describe(), now
            self.terminal = self.warning = st
        elif kind is Status.SUCCESS:
            self._acknowledge(st)
        elif kind is Status.ERROR:
            self.last_error, self.last_error_at = st.describe(), now
            self._reject(st.message or st.status)
        elif kind in (Status.AUTH_TIMEOUT, Status.MAX_CONNECTIONS):
            self.last_error, self.last_error_at = st.describe(), now
            self.terminal = self.warning = st
        elif kind in (Status.SLOW_CONSUMER, Status.FORCE_DISCONNECT, Status.AUTH_REQUIRED):
            self.last_error, self.last_error_at = st.describe(), now
            if kind is not Status.AUTH_REQUIRED:
                self.warning = st
        return st

    def _acknowledge(self, st: StatusEvent) -> None:
        if st.action is AckAction.SUBSCRIBED:
            for t in st.topics:
                self._awaiting.pop(t, None)
                ts = self._topics.get(t)
                if ts is not None:
                    self._topics[t] = TopicState(TopicStatus.ACKNOWLEDGED, None, ts.sent)
        elif st.action is AckAction.UNSUBSCRIBED:
            for t in st.topics:
                self._unsubscribing.pop(t, None)

    def _reject(self, reason: str) -> None:
        """Attribute an error to a topic: one the message names, else the oldest unanswered subscribe."""
        named = [t for t in self._awaiting if t in reason]
        target = max(named, key=len) if named else None
        if target is None and self._awaiting:
            target = next(iter(self._awaiting))
        if target is None:
            return
        self._awaiting.pop(target, None)
        ts = self._topics.get(target)
        if ts is not None:
            self._topics[target] = TopicState(TopicStatus.REJECTED, reason, ts.sent)


def _clean(events: list[Any]) -> tuple[list[dict[str, Any]], int]:
    clean = [e for e in events if type(e) is dict and type(e.get("ev")) is str]
    return clean, len(events) - len(clean)
