"""protocol.py: messages, status classification, ack tracking, frame parsing (incl. malformed input)."""

from __future__ import annotations

import json
import random
from collections import Counter

import orjson
import pytest

from mcp_polygon.streams.protocol import AuthState, ProtocolSession, Status, TopicStatus, classify

NOW = 1_700_000_000 * 10**9  # the receive time every frame here is handed with (Unix ns)


def st(status: str, message: str = "") -> dict:
    return {"ev": "status", "status": status, "message": message}


def frame(*events: dict) -> bytes:
    return orjson.dumps(list(events))


def authed(*topics: str) -> ProtocolSession:
    s = ProtocolSession("secret-key")
    s.connection_opened()
    s.data_to_send()
    s.receive(frame(st("auth_success", "authenticated")), NOW)
    if topics:
        s.subscribe(list(topics))
    s.data_to_send()
    return s


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (st("connected", "Connected Successfully"), Status.CONNECTED),
        (st("auth_success", "authenticated"), Status.AUTH_SUCCESS),
        (st("success", "authenticated"), Status.AUTH_SUCCESS),  # older servers
        (st("auth_failed", "authentication failed"), Status.AUTH_FAILED),
        (st("error", "authentication failed"), Status.AUTH_FAILED),  # older servers
        (st("auth_timeout", "No authentication request received."), Status.AUTH_TIMEOUT),
        (st("auth_required", "x"), Status.AUTH_REQUIRED),
        (st("success", "subscribed to: T.AAPL"), Status.SUCCESS),
        (st("success", "unsubscribed to: T.AAPL"), Status.SUCCESS),
        (st("error", "not authorized"), Status.ERROR),
        (
            st("error", "Subscription limit reached for feed. Please remove some subscriptions and try again."),
            Status.ERROR,
        ),
        (st("max_connections", "Maximum number of connections exceeded."), Status.MAX_CONNECTIONS),
        (st("slow_consumer", "Consumer too slow"), Status.SLOW_CONSUMER),
        (st("force_disconnect", "bye"), Status.FORCE_DISCONNECT),
        (st("something_new", "?"), Status.UNKNOWN),
        ({"ev": "status"}, Status.UNKNOWN),
        ({"ev": "status", "status": 5, "message": ["x"]}, Status.UNKNOWN),
    ],
)
def test_classify_every_status(event, kind):
    assert classify(event).kind is kind


def test_classify_plan_variant_and_topics():
    c = classify(st("auth_failed", "Your plan doesn't include websocket access. Visit https://massive.com/pricing"))
    assert c.kind is Status.AUTH_FAILED and c.plan_lacks_websocket
    assert not classify(st("auth_failed", "authentication failed")).plan_lacks_websocket
    sub = classify(st("success", "subscribed to: T.AAPL"))
    assert (sub.action, sub.topics) == ("subscribed", ("T.AAPL",))
    unsub = classify(st("success", "unsubscribed to: T.BRK.B"))
    assert (unsub.action, unsub.topics) == ("unsubscribed", ("T.BRK.B",))


def test_messages_auth_then_subscribe_after_auth_success():
    s = ProtocolSession("secret-key")
    s.subscribe(["T.AAPL", "Q.AAPL"])
    assert s.data_to_send() == []  # nothing before a connection is authenticated
    s.connection_opened()
    assert [orjson.loads(m) for m in s.data_to_send()] == [{"action": "auth", "params": "secret-key"}]
    s.receive(frame(st("connected", "Connected Successfully")), NOW)
    assert s.auth is AuthState.PENDING and s.data_to_send() == []
    s.receive(frame(st("auth_success", "authenticated")), NOW)
    assert s.auth is AuthState.OK
    assert [orjson.loads(m) for m in s.data_to_send()] == [{"action": "subscribe", "params": "T.AAPL,Q.AAPL"}]
    assert s.by_status(TopicStatus.PENDING) == ["T.AAPL", "Q.AAPL"]


def test_acks_tracked_per_topic():
    s = authed("T.AAPL", "Q.AAPL", "FMV.AAPL")
    s.receive(frame(st("success", "subscribed to: T.AAPL"), st("error", "not authorized")), NOW)
    assert s.topics["T.AAPL"].status is TopicStatus.ACKNOWLEDGED
    # An error naming no topic goes to the oldest unanswered subscribe: the server answers in order.
    assert s.topics["Q.AAPL"].status is TopicStatus.REJECTED and s.topics["Q.AAPL"].reason == "not authorized"
    assert s.topics["FMV.AAPL"].status is TopicStatus.PENDING
    assert not s.settled() and s.settled(["T.AAPL", "Q.AAPL"])
    s.receive(frame(st("success", "subscribed to: FMV.AAPL")), NOW)
    assert s.settled()
    assert s.last_error == "error: not authorized"


def test_error_naming_a_topic_rejects_that_topic():
    s = authed("T.A", "T.AAPL")
    s.receive(frame(st("error", "not authorized: T.AAPL")), NOW)
    assert s.topics["T.AAPL"].status is TopicStatus.REJECTED and s.topics["T.A"].status is TopicStatus.PENDING


def test_subscription_limit_error():
    s = authed("Q.O:A", "Q.O:B")
    s.receive(
        frame(
            st("success", "subscribed to: Q.O:A"),
            st("error", "Subscription limit reached for feed. Please remove some subscriptions and try again."),
        ),
        NOW,
    )
    assert s.topics["Q.O:B"].status is TopicStatus.REJECTED and "limit" in s.topics["Q.O:B"].reason


def test_unsubscribe_and_resubscribe_after_reconnect():
    s = authed("T.AAPL", "Q.AAPL")
    s.receive(frame(st("success", "subscribed to: T.AAPL"), st("success", "subscribed to: Q.AAPL")), NOW)
    assert s.unsubscribe(["Q.AAPL", "T.NOPE"]) == ["Q.AAPL"]
    assert [orjson.loads(m) for m in s.data_to_send()] == [{"action": "unsubscribe", "params": "Q.AAPL"}]
    assert "Q.AAPL" in s.unsubscribing
    s.receive(frame(st("success", "unsubscribed to: Q.AAPL")), NOW)
    assert not s.unsubscribing
    # Drop and reconnect: auth first, then every active topic again.
    s.connection_lost()
    assert s.auth is AuthState.DISCONNECTED and s.by_status(TopicStatus.PENDING) == ["T.AAPL"]
    s.connection_opened()
    assert orjson.loads(s.data_to_send()[0])["action"] == "auth"
    s.receive(frame(st("auth_success", "authenticated")), NOW)
    assert [orjson.loads(m) for m in s.data_to_send()] == [{"action": "subscribe", "params": "T.AAPL"}]


def test_rejected_topic_is_not_resent_but_retried_on_explicit_subscribe():
    s = authed("T.AAPL")
    s.receive(frame(st("error", "not authorized")), NOW)
    s.connection_lost()
    s.connection_opened()
    s.data_to_send()
    s.receive(frame(st("auth_success", "authenticated")), NOW)
    assert s.data_to_send() == []
    assert s.subscribe(["T.AAPL"]) == ["T.AAPL"]
    assert orjson.loads(s.data_to_send()[0]) == {"action": "subscribe", "params": "T.AAPL"}


def test_large_subscriptions_are_chunked():
    s = authed(*[f"Q.O:X{i}" for i in range(1200)])
    assert s.data_to_send() == []  # authed() drained them
    s.connection_lost()
    s.connection_opened()
    s.data_to_send()
    s.receive(frame(st("auth_success", "authenticated")), NOW)
    msgs = [orjson.loads(m) for m in s.data_to_send()]
    assert len(msgs) == 3 and sum(len(m["params"].split(",")) for m in msgs) == 1200


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        ("auth_failed", True),
        ("auth_timeout", True),
        ("max_connections", True),
        ("slow_consumer", False),
        ("force_disconnect", False),
        ("auth_required", False),
    ],
)
def test_terminal_statuses(status, terminal):
    s = authed()
    s.receive(frame(st(status, "x")), NOW)
    assert (s.terminal is not None) is terminal
    assert s.last_error == f"{status}: x"
    assert s.status_counts[status] == 1


def test_auth_failed_plan_variant_recorded():
    s = ProtocolSession("k")
    s.connection_opened()
    s.receive(frame(st("auth_failed", "Your plan doesn't include websocket access. Visit https://massive.com")), NOW)
    assert s.auth is AuthState.FAILED and s.plan_lacks_websocket and s.terminal.kind is Status.AUTH_FAILED


def test_data_frame_fast_path_keeps_raw_bytes():
    s = authed()
    data = frame({"ev": "T", "sym": "AAPL", "p": 1.5}, {"ev": "Q", "sym": "AAPL"}, {"ev": "T", "sym": "MSFT"})
    f = s.receive(data, NOW)
    assert f.raw is data and f.count == 3 and f.statuses == [] and f.malformed is None
    assert {k.decode() if isinstance(k, bytes) else k: v for k, v in f.counts.items()} == {"T": 2, "Q": 1}


def test_every_vendor_event_type_takes_the_fast_path():
    """The firehose case must not decode: frames of real events (every market and channel) are kept as they are."""
    from mcp_polygon.simulator.events import MARKETS, EventFactory

    factory = EventFactory(3)
    s = authed()
    for market, spec in MARKETS.items():
        events = [factory.event(market, ch, tk) for ch in spec.channels for tk in spec.wildcard_tickers]
        data = orjson.dumps(events)
        f = s.receive(data, NOW)
        assert f.raw is data and f.count == len(events), market
        assert all(type(k) is bytes for k in f.counts), market  # bytes keys: the regex path, not a decode
    assert s.malformed_events == 0


def test_mixed_status_and_data_frame():
    s = authed("T.AAPL")
    f = s.receive(
        frame({"ev": "T", "sym": "AAPL"}, st("success", "subscribed to: T.AAPL"), {"ev": "T", "sym": "X"}), NOW
    )
    assert f.count == 2 and [e["sym"] for e in orjson.loads(f.raw)] == ["AAPL", "X"]
    assert s.topics["T.AAPL"].status is TopicStatus.ACKNOWLEDGED
    assert len(f.statuses) == 1


def test_frame_with_whitespace_and_newlines_is_recoded_compact():
    s = authed()
    data = b'[{"ev": "T", "sym": "AAPL"},\n {"ev": "T", "sym": "MSFT"}]'
    f = s.receive(data, NOW)
    assert f.count == 2 and b"\n" not in f.raw and orjson.loads(f.raw)[1]["sym"] == "MSFT"
    assert dict(f.counts) == {"T": 2}


@pytest.mark.parametrize(
    ("data", "count"),
    [
        (b'[{"ev":"T","sym":"AAPL","p":1', 0),  # cut short: not JSON
        (b"not json at all", 0),
        (b"", 0),
        (b"42", 0),
        (b'"a string"', 0),
        (b"null", 0),
        (b"[]", 0),
        (b'{"ev":"T","sym":"AAPL"}', 1),  # a bare object: accepted as one event
        (b'[{"ev":"T","sym":"AAPL"}, 5, "x", null, [1], {"no_ev": 1}, {"ev": 3}, {"ev": ["T"]}]', 1),
        (b'[{"ev":"T"}, {"ev":"status"}]', 1),  # status without fields
        ('[{"ev":"T","sym":"ÄPFEL"}]', 1),  # text, not bytes
    ],
)
def test_malformed_frames_never_raise(data, count):
    s = authed()
    f = s.receive(data, NOW)
    assert f.count == count
    if count:
        assert len(orjson.loads(f.raw)) == count


def test_invalid_utf8_is_dropped_and_counted_at_receive_time():
    s = authed()
    kept = []  # what the I/O layer would hand to the buffer: frames with data events
    for data in (b'[{"ev":"T","sym":"\xff\xfe"}]', frame({"ev": "T", "sym": "OK"})):
        f = s.receive(data, NOW)
        if f.raw is not None:
            kept.append(f)
    # No sequence number can be spent on the broken frame: it never reaches the buffer.
    assert [(f.count, orjson.loads(f.raw)[0]["sym"]) for f in kept] == [(1, "OK")] and s.malformed_frames == 1


def test_non_ascii_frames_are_still_delivered():
    s = authed()
    f = s.receive(frame({"ev": "T", "sym": "ÄPFEL"}, {"ev": "T", "sym": "B"}), NOW)
    assert f.count == 2 and [e["sym"] for e in orjson.loads(f.raw)] == ["ÄPFEL", "B"]


# The tester's frames (issue 7, item 14): each used to be taken whole by the fast path and miscounted.
@pytest.mark.parametrize(
    ("data", "readable", "malformed"),
    [
        (b'[{"sym":"X","p":1},{"ev":"T","sym":"AAPL","p":2}]', ["AAPL"], 1),  # the first element lacks ev
        (b'[{"ev":"T","sym":"AAPL","x":{"ev":"Q","sym":"NESTED"}}]', ["AAPL"], 0),  # a nested ev: no phantom
        (b'[{"ev":"T","sym":"AAPL","c":[{"ev":"Q"},{"ev":"Q"}]}]', ["AAPL"], 0),  # nested in a list
        (b'[{"ev":"T","sym":"A"},5,{"ev":"T","sym":"B"}]', ["A", "B"], 1),  # a number between events
        (b'[{"ev":"T","sym":"A"},{"ev":"T","sym":"B","ev":7}]', ["A"], 1),  # a second ev key wins, not a string
        (b'[{"ev":"T","sym":"A"},{"x":{"ev":"T","sym":"Z"}},{"ev":"T","sym":"B"}]', ["A", "B"], 1),
        (b'[{"ev":"T","sym":"A"},[{"ev":"T","sym":"Z"}],{"ev":"T","sym":"B"}]', ["A", "B"], 1),
    ],
)
def test_what_is_counted_is_what_is_readable(data, readable, malformed):
    s = authed()
    f = s.receive(data, NOW)
    assert f.count == len(readable) and [e["sym"] for e in orjson.loads(f.raw)] == readable
    assert sum(f.counts.values()) == f.count
    assert s.malformed_events == malformed and (f.malformed is not None) == bool(malformed)


def _random_element(rng: random.Random) -> tuple[object, bool | None]:
    """(element, True for a data event / None for a status event / False for malformed)."""
    sym = rng.choice(["AAPL", "MSFT", "BRK.A", 'a"quote', "},{", '},{"ev":"T"', "x\\y", "{"])
    kind = rng.randrange(12)
    if kind <= 3:
        return {"ev": rng.choice(["T", "Q", "AM", "XL2"]), "sym": sym, "p": rng.random()}, True
    if kind == 4:
        return {"sym": sym, "ev": "T"}, True  # ev not first
    if kind == 5:
        return {"ev": "T", "sym": sym, "nested": {"ev": "Q", "sym": "N"}}, True
    if kind == 6:
        return {"ev": "T", "c": [{"ev": "Q"}, 1, [{"ev": "A"}]]}, True
    if kind == 7:
        return st("success", f"subscribed to: T.{sym}"), None
    if kind == 8:
        return {"sym": sym, "p": 1}, False  # no ev
    if kind == 9:
        return {"ev": rng.choice([1, None, ["T"], {"ev": "T"}, 2.5, True])}, False
    if kind == 10:
        return {"ev": 'T"x', "sym": sym}, True  # an escape inside the type
    return rng.choice([5, "text", None, [], [{"ev": "T"}], '{"ev":"T"}', True]), False


def _encode(elements: list, rng: random.Random) -> bytes:
    style = rng.randrange(4)
    if style == 0:  # whitespace, the way json.dumps writes
        return json.dumps(elements).encode()
    if style == 1 and elements:  # a duplicated ev key, written by hand: the last one wins when decoded
        parts = [orjson.dumps(e) for e in elements]
        k = rng.randrange(len(parts))
        if parts[k].startswith(b'{"ev":'):
            parts[k] = parts[k][:-1] + rng.choice([b',"ev":7}', b',"ev":"Q"}'])
        return b"[" + b",".join(parts) + b"]"
    return orjson.dumps(elements)


def test_property_the_count_equals_the_readable_data_events():
    rng = random.Random(20240607)
    for _ in range(3000):
        elements = [_random_element(rng)[0] for _ in range(rng.randrange(0, 7))]
        data = _encode(elements, rng)
        decoded = orjson.loads(data)
        readable = [e for e in decoded if type(e) is dict and type(e.get("ev")) is str and e["ev"] != "status"]
        bad = sum(1 for e in decoded if not (type(e) is dict and type(e.get("ev")) is str))
        s = authed()
        f = s.receive(data, NOW)
        assert f.count == len(readable), data
        assert (orjson.loads(f.raw) if f.raw is not None else []) == readable, data
        if f.count:
            keys = Counter({(k.decode() if isinstance(k, bytes) else k): v for k, v in f.counts.items()})
            assert keys == Counter(e["ev"] for e in readable), data
        assert s.malformed_events == bad, data


def test_malformed_counters():
    s = authed()
    s.receive(b"nope", NOW)
    s.receive(b'[{"ev":"T"}, 7]', NOW)
    assert s.malformed_frames == 1 and s.malformed_events == 1 and "dropped" in s.last_malformed


def test_status_only_frame_has_no_data():
    s = authed()
    f = s.receive(frame(st("slow_consumer", "too slow")), NOW)
    assert f.raw is None and f.count == 0 and f.statuses[0].kind is Status.SLOW_CONSUMER


def test_key_never_in_repr_of_state():
    s = authed("T.AAPL")
    s.receive(frame(st("auth_failed", "authentication failed")), NOW)
    text = repr(s.__dict__.get("topics")) + repr(s.last_status) + str(s.last_error) + repr(list(s.history))
    assert "secret-key" not in text


def test_the_key_echoed_by_the_vendor_is_masked_everywhere_the_session_keeps_text():
    s = authed("T.AAPL")
    s.receive(frame(st("error", "not authorized for secret-key"), st("slow_consumer", "secret-key, too slow")), NOW)
    texts = [s.last_error, s.topics["T.AAPL"].reason, repr(s.last_status), repr(list(s.history)), repr(s.warning)]
    assert all("secret-key" not in t for t in texts), texts
    assert s.topics["T.AAPL"].reason == "not authorized for ***" and s.warning.message == "***, too slow"
    s.receive(b"x" * 55 + b"secret-key and the rest", NOW)  # not JSON, and the key straddles the 60-character preview
    assert "secre" not in s.last_malformed and "***" in s.last_malformed


# -- issue 8: states are enums, time comes in from outside, changes go through methods ---------------------------


def test_the_session_never_reads_the_clock(monkeypatch):
    """Sans-I/O: every time the session keeps is the `now_ns` it was handed, so a test replays it exactly."""
    import time

    def no_clock() -> float:
        raise AssertionError("the protocol session read the clock")

    for name in ("time", "time_ns", "monotonic", "monotonic_ns"):
        monkeypatch.setattr(time, name, no_clock)
    s = ProtocolSession("secret-key")
    s.subscribe(["T.AAPL", "Q.AAPL"])
    s.connection_opened()
    s.receive(frame(st("auth_success", "authenticated")), 5 * 10**9)
    s.receive(frame(st("success", "subscribed to: T.AAPL"), st("error", "not authorized")), 7 * 10**9)
    s.unsubscribe(["T.AAPL"])
    s.receive(frame({"ev": "T", "sym": "AAPL"}), 8 * 10**9)
    s.connection_lost()
    assert [t for t, _ in s.history] == [5.0, 7.0, 7.0]
    assert s.last_error == "error: not authorized" and s.last_error_at == 7.0
    assert s.topics["Q.AAPL"].status is TopicStatus.REJECTED


def test_topic_states_are_enums_and_the_views_are_read_only():
    s = authed("T.AAPL", "Q.AAPL")
    s.receive(frame(st("success", "subscribed to: T.AAPL")), NOW)
    assert [st.status for st in s.topics.values()] == [TopicStatus.ACKNOWLEDGED, TopicStatus.PENDING]
    assert s.all_acknowledged(["T.AAPL"]) and not s.all_acknowledged(["T.AAPL", "Q.AAPL"])
    assert not s.all_acknowledged(["T.NOPE"])
    s.receive(frame(st("error", "not authorized")), NOW)
    assert s.rejections() == {"Q.AAPL": "not authorized"}
    with pytest.raises(TypeError):
        s.topics["X.Y"] = s.topics["T.AAPL"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        s.auth = AuthState.OK  # type: ignore[misc]


def test_reset_auth_failure_lets_a_new_start_try_the_key_again():
    s = ProtocolSession("k3y-k3y")
    s.connection_opened()
    s.receive(frame(st("auth_failed", "authentication failed")), NOW)
    s.connection_lost()
    assert s.auth is AuthState.FAILED  # a drop does not forget it: the supervisor must not retry a bad key
    s.reset_auth_failure()
    assert s.auth is AuthState.DISCONNECTED
    s.connection_opened()
    s.receive(frame(st("auth_success", "authenticated")), NOW)
    s.reset_auth_failure()  # only a failure is forgotten
    assert s.auth is AuthState.OK


def test_an_acknowledgement_does_not_survive_a_reconnect():
    s = authed("T.AAPL")
    s.receive(frame(st("success", "subscribed to: T.AAPL")), NOW)
    s.connection_lost()
    assert s.topics["T.AAPL"].status is TopicStatus.PENDING and not s.topics["T.AAPL"].sent
    assert not s.settled(["T.AAPL"])


def test_the_unsubscribing_view_stays_true_across_a_reconnect():
    s = authed("T.AAPL")
    s.receive(frame(st("success", "subscribed to: T.AAPL")), NOW)
    s.unsubscribe(["T.AAPL"])
    view = s.unsubscribing  # what a waiter in the manager holds while the socket drops
    assert list(view) == ["T.AAPL"]
    s.connection_lost()  # the new connection will not have the topic: nothing is left to wait for
    assert list(view) == [] and not s.unsubscribing
