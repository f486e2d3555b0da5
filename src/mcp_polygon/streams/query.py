"""One read plan: an agent's filter (channels, receive times, since_seq, limit, direction) checked and built once.

The buffer (`MessageBuffer.read`), the recordings (`recorder.replay`) and SQL views read through the same
`ReadPlan`, so a channel filter means the same events everywhere:

- `T.AAPL`: trades of AAPL; `T.*` (or `T`): every trade; `*.AAPL`: every event type of AAPL; `*`: everything.
  Comma separated terms; an event matches when any term does. A term that can match nothing is refused with
  the valid forms (ChannelError), never kept silently.
- An event's type is its `ev` field and its ticker the event type's ticker field (markets.EventType.ticker_key:
  `sym`, `T`, `pair` or `p`); only string values match.
- Times are receive times in Unix ns, inclusive at both ends. A recording stamps event k of a frame at its
  receive time + k ns (unique stamps, so replay pages exactly); the buffer gives every event of a frame the
  frame's time, so a bound that falls inside a frame's few ns can differ by that frame's later events.
  since_seq applies to the buffer only: sequence numbers belong to one server process, recordings go by time.

What an SQL view needs is here too: `ChannelFilter.terms` (the (ev, ticker) terms, None meaning any) and the
plan's time bounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mcp_polygon.streams.markets import ChannelError, Market, shown, split_items, ticker_problem

Event = dict[str, Any]  # one decoded vendor event
Pair = tuple[str, str]  # (event type, ticker): the `T.AAPL` of a filter


@dataclass(frozen=True, slots=True)
class Term:
    """One term of a channel filter, for a query language: the event type and the ticker, None meaning any."""

    ev: str | None
    ticker: str | None


@dataclass(frozen=True, slots=True)
class ChannelFilter:
    """A parsed channel_filter: `T.AAPL`, `T.*` (or `T`), `*.AAPL`, `*`, comma separated; any term may match."""

    all_events: bool = False
    prefixes: frozenset[str] = frozenset()  # `T.*`: every ticker of these event types
    tickers: frozenset[str] = frozenset()  # `*.AAPL`: these tickers in every event type
    pairs: frozenset[Pair] = frozenset()  # `T.AAPL`

    @property
    def is_all(self) -> bool:
        return self.all_events

    @property
    def single_pair(self) -> Pair | None:
        """The one (ev, ticker) pair when that is the whole filter (the common `T.AAPL`), else None."""
        if len(self.pairs) == 1 and not self.prefixes and not self.tickers and not self.all_events:
            return next(iter(self.pairs))
        return None

    @property
    def terms(self) -> tuple[Term, ...]:
        """The filter as (ev, ticker) terms, sorted; () for every event. An SQL WHERE is the OR of them."""
        if self.all_events:
            return ()
        found = [Term(p, None) for p in self.prefixes] + [Term(None, t) for t in self.tickers]
        found += [Term(ev, t) for ev, t in self.pairs]
        return tuple(sorted(found, key=lambda t: (t.ev or "", t.ticker or "")))

    def needles(self) -> tuple[bytes, ...] | None:
        """Byte strings at least one of which must occur in a raw frame for any event in it to match.

        None when no cheap pre-check is possible. Only plain tickers qualify, so JSON escaping cannot hide them.
        """
        if self.all_events or self.prefixes:
            return None
        tickers = self.tickers | {t for _, t in self.pairs}
        if not tickers or not all(plain(t) for t in tickers):
            return None
        return tuple(b'"' + t.encode() + b'"' for t in sorted(tickers))


EVERY_EVENT = ChannelFilter(all_events=True)


def plain(text: str) -> bool:
    """Whether `text` is written the same in JSON and in bytes (no escaping can hide it from a byte search)."""
    return text.isascii() and all(ch.isalnum() or ch in ".:-_" for ch in text)


def parse_filter(market: Market, raw: str | list[str] | None) -> ChannelFilter:
    """Parse a channel_filter (`T.AAPL`, `T.*` or `T`, `*.AAPL`, `*`; comma separated). Raises ChannelError naming
    the bad term and the valid forms: a term that can match nothing is refused, never silently kept."""
    if raw is None:
        return EVERY_EVENT
    items = split_items(raw)
    if not items:
        return EVERY_EVENT
    prefixes: set[str] = set()
    tickers: set[str] = set()
    pairs: set[Pair] = set()
    forms = f"forms: {market.prefixes[0]}.{market.ticker_example}, {market.prefixes[0]}.*, *.{market.ticker_example}"
    for item in items:
        prefix, dot, ticker = item.partition(".")
        prefix = prefix.strip().upper()
        ticker = ticker.strip().upper() if dot else "*"
        if prefix != "*" and prefix not in market.events:
            raise ChannelError(
                f"channel_filter {shown(item)} names no {market.name} event type; valid {market.name} prefixes: "
                f"{', '.join(market.prefixes)} ({forms})."
            )
        if not ticker:
            raise ChannelError(
                f"channel_filter {shown(item)} has nothing after the dot, so it would match no event; "
                f"write {prefix}.<ticker> or {prefix}.* ({forms})."
            )
        if ticker != "*":
            problem = ticker_problem(market, ticker)
            if problem is not None:
                raise ChannelError(
                    f"channel_filter {shown(item)} can match no event: {problem}; {market.name} tickers are "
                    f"{market.ticker_form.description} ({forms})."
                )
        if prefix == "*":
            if ticker == "*":
                return EVERY_EVENT
            tickers.add(ticker)
        elif ticker == "*":
            prefixes.add(prefix)
        else:
            pairs.add((prefix, ticker))
    return ChannelFilter(prefixes=frozenset(prefixes), tickers=frozenset(tickers), pairs=frozenset(pairs))


class Direction(StrEnum):
    NEWEST = "newest"  # the newest `limit` matching events (an agent's first look)
    FORWARD = "forward"  # the oldest `limit` matching events from the starting point on (paging, replay)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What to read: which events, between which points, how many, from which end. Build it with `read_plan`."""

    channels: ChannelFilter
    limit: int  # at least 1
    direction: Direction
    since_seq: int | None  # buffer only: events after this seq
    from_ns: int | None  # receive time, inclusive
    to_ns: int | None  # receive time, inclusive
    ticker_keys: Mapping[str, str]  # event type -> the field holding its ticker, from the market
    needles: tuple[bytes, ...] | None  # ChannelFilter.needles(): a byte pre-check for raw frames and lines
    pair: Pair | None  # ChannelFilter.single_pair: the common `T.AAPL`, read without a call per event

    def matches(self, event: Event) -> bool:
        """Whether one decoded event passes the channel filter."""
        channels = self.channels
        if channels.all_events:
            return True
        ev = event.get("ev")
        if type(ev) is not str:  # (a list would not even hash); the protocol drops such events before the buffer
            return False
        if ev in channels.prefixes:
            return True
        tk = event.get(self.ticker_keys.get(ev, "sym"))
        if type(tk) is not str:
            return False
        return tk in channels.tickers or (ev, tk) in channels.pairs

    def hits(self, items: Iterable[tuple[int, Event]]) -> list[tuple[int, Event]]:
        """The (position, event) pairs of `items` whose event matches, in their order."""
        channels = self.channels
        if channels.all_events:
            return list(items)
        if self.pair is not None:  # the common `T.AAPL`: two lookups per event, no call (a call per event costs 4x)
            ev, ticker = self.pair
            key = self.ticker_keys.get(ev, "sym")
            return [(k, e) for k, e in items if e.get("ev") == ev and e.get(key) == ticker]
        match = self.matches
        return [(k, e) for k, e in items if match(e)]


def read_plan(
    market: Market,
    channels: ChannelFilter,
    *,
    limit: int,
    since_seq: int | None = None,
    from_ns: int | None = None,
    to_ns: int | None = None,
    direction: Direction | None = None,
) -> ReadPlan:
    """The plan for one read. Without a direction: FORWARD from since_seq or from_ns when either is given (an agent
    paging on), else the NEWEST `limit` events. Raises ValueError for a limit below 1 (the tools check theirs)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if direction is None:
        direction = Direction.FORWARD if since_seq is not None or from_ns is not None else Direction.NEWEST
    return ReadPlan(
        channels=channels,
        limit=limit,
        direction=direction,
        since_seq=since_seq,
        from_ns=from_ns,
        to_ns=to_ns,
        ticker_keys={p: e.ticker_key for p, e in market.events.items()},
        needles=channels.needles(),
        pair=channels.single_pair,
    )
