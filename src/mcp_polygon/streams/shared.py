"""The shared feed in the StreamManager (issue 11): one upstream socket per market for every process, via Redis.

Built only when POLYGON_REDIS_URL is set (the embedded default never imports this module or redis). Per market:

    reader  every process, the owner included, fills its MessageBuffer from the market's Redis Stream with the
            stream's own seq numbers (MessageBuffer.append_at), so since_seq means the same in every process.
            A FeedReset (Redis came back empty) swaps in a fresh buffer: an old since_seq then reads like one from
            before a restart (the buffer reports it `ahead`).
    wants   start/subscribe/unsubscribe change only this process's registration (SubscriptionRegistry).
    owner   a process with wants contends for the lease (LeaseKeeper). While it holds it, it runs the upstream
            Connection, hands each data frame to a FeedWriter (never a status message, so never the key) and to the
            recorder (only the owner records), and follows the union of every live process's wants. Losing the
            lease (or being fenced off) closes the socket and stops recording; stop_<m>_stream releases it, so
            another process with wants takes over at once.

Redis trouble never blocks a tool: the link fails calls at once while Redis is known down, tools answer with its
one sentence and serve what the buffer holds, and every part rejoins by itself when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from mcp_polygon.sharedfeed import (
    FeedBatch,
    LeaseGrant,
    LeaseKeeper,
    LeaseLost,
    LinkState,
    ProcessWants,
    RedisUnavailable,
    SharedFeed,
    SharedFeedConfig,
    SharedFrame,
    StreamHead,
)
from mcp_polygon.streams.buffer import MessageBuffer, laid_out
from mcp_polygon.streams.connection import Connection
from mcp_polygon.streams.markets import ChannelError, check_limits
from mcp_polygon.streams.protocol import AuthState, Frame, TopicStatus

if TYPE_CHECKING:
    from mcp_polygon.streams.manager import ChannelList, MarketStream, StreamManager

log = logging.getLogger(__name__)

UNION_POLL = 0.25  # seconds between the owner's looks at the union of wants (a dropped channel goes within 3 s)
_EVENT_TYPE = re.compile(rb'\{"ev":"([^"\\]{1,16})"')  # event types of a raw frame, for the per-type counters


class FeedRole(StrEnum):
    OWNER = "owner"  # holds the upstream socket and writes the shared stream
    READER = "reader"  # wants data here; another process (or nobody yet) holds the socket
    OFF = "off"  # not started in this process


@dataclass(frozen=True, slots=True)
class SharedPicture:
    """The shared state of one market as this process sees it, for the status and list tools."""

    market: str
    process: str  # this process's id (host/pid/nonce)
    role: FeedRole
    owner: str | None  # who holds the upstream socket (None: nobody right now, or unknown while Redis is away)
    owner_token: int | None
    wanted_here: tuple[str, ...]
    wants: tuple[ProcessWants, ...]  # every live process and what it wants (only this one while Redis is away)
    union: tuple[str, ...]
    head: StreamHead | None  # None while Redis is away
    resets: int  # times Redis came back empty while this process read the stream
    redis_error: str | None  # one sentence when Redis did not answer


@dataclass(frozen=True, slots=True)
class SharedChange:
    """What a start/subscribe/unsubscribe changed in this process's wants."""

    picture: SharedPicture
    requested: tuple[str, ...]
    unknown: tuple[str, ...] = ()  # unsubscribe of channels this process did not want
    acknowledged: tuple[str, ...] = ()  # (owner here) acknowledged upstream by this process's socket
    rejected: tuple[str, ...] = ()  # (owner here) refused upstream, "topic (reason)"
    head_seq: int = 0  # the shared stream's newest seq: since_seq for "only what comes next"


def count_event_types(raw: bytes) -> Counter[bytes]:
    """Events per type in a raw frame (`[{"ev":"T",...},...]`), for the stats of a process that did not decode it."""
    return Counter(_EVENT_TYPE.findall(raw))


class SharedMarket:
    """One market's part in the shared feed, in one process."""

    def __init__(self, hub: SharedStreams, stream: MarketStream) -> None:
        self.hub = hub
        self.stream = stream
        self.name = stream.market.name
        self.keeper: LeaseKeeper | None = None
        self.owner_task: asyncio.Task[None] | None = None
        self.teardowns: set[asyncio.Task[None]] = set()  # owner tasks told to stop that are still winding down
        self.reader_task: asyncio.Task[None] | None = None
        self.epoch: str | None = None  # the shared stream's epoch the buffer's seqs belong to
        self.resets = 0

    @property
    def feed(self) -> SharedFeed:
        return self.hub.feed

    @property
    def role(self) -> FeedRole:
        if self.keeper is None:
            return FeedRole.OFF
        return FeedRole.OWNER if self.keeper.grant is not None else FeedRole.READER

    # -- joining and leaving -----------------------------------------------------------------------------------

    def join(self) -> None:
        """Read the shared stream and contend for the socket (idempotent)."""
        if self.reader_task is None or self.reader_task.done():
            self.reader_task = asyncio.create_task(self._read(), name=f"shared-read-{self.name}")
        if self.keeper is None:
            self.keeper = self.feed.keeper(self.name, on_change=self._lease_changed)
            self.keeper.start()

    async def leave(self) -> bool:
        """Stop owning (the socket closes before the lease is released) and stop reading. True if it had joined."""
        joined = self.keeper is not None
        await self._stop_owning()
        keeper, self.keeper = self.keeper, None
        if keeper is not None:
            await keeper.stop(release=True)
        task, self.reader_task = self.reader_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        return joined

    # -- the owner ---------------------------------------------------------------------------------------------

    def _lease_changed(self, grant: LeaseGrant | None) -> None:
        # Called in the keeper's task: the owner's work runs in a task of its own, torn down on loss.
        previous, self.owner_task = self.owner_task, None
        self._retire(previous)
        if grant is not None:
            waits = tuple(self.teardowns)
            self.owner_task = asyncio.create_task(self._own_after(waits, grant), name=f"shared-own-{self.name}")

    async def _own_after(self, previous: tuple[asyncio.Task[None], ...], grant: LeaseGrant) -> None:
        """Own under a new grant once every earlier owner task has wound down. A grant can follow a loss or another
        grant within moments (Redis came back empty), and an old task's teardown (closing its socket, up to the
        close timeout, then clearing the session they share) must not land on the new connection: it cleared the
        subscriptions the new one had just made and cut its authentication short."""
        if previous:
            await asyncio.wait(previous)
        await self._own(grant)

    async def _stop_owning(self) -> None:
        """Stop owning and wait until every owner task is down: the socket is closed before the lease goes."""
        task, self.owner_task = self.owner_task, None
        self._retire(task)
        if self.teardowns:
            await asyncio.wait(tuple(self.teardowns))

    def _retire(self, task: asyncio.Task[None] | None) -> None:
        """Tell an owner task to stop, and keep it in `teardowns` until it is down."""
        if task is not None and not task.done():
            task.cancel()
            self.teardowns.add(task)
            task.add_done_callback(self.teardowns.discard)

    async def _own(self, grant: LeaseGrant) -> None:
        stream, manager = self.stream, self.hub.manager
        writer = self.feed.stream(self.name).writer(grant)
        session = stream.session
        log.info("%s: this process owns the upstream socket (lease token %d)", self.name, grant.token)
        connection: Connection | None = None
        try:
            stream.start_recording()
            session.reset_auth_failure()
            connection = Connection(
                stream.endpoint, session, self._upstream_sink(writer.offer), stream.pulse,
                manager.connection_options, label=self.name,
            )  # fmt: skip
            stream.connection = connection
            stream.started_at = time.time()
            connection.start()
            async with asyncio.TaskGroup() as group:
                group.create_task(writer.run())
                group.create_task(self._follow_union(connection))
        except* LeaseLost:
            log.warning("%s: fenced off the shared stream; closing the upstream socket", self.name)
        finally:
            if connection is not None:
                await connection.stop()
            if stream.connection is connection:
                stream.connection = None
            session.clear()
            session.connection_lost()
            await stream.stop_recording()

    def _upstream_sink(self, offer: Callable[[bytes, int, int], None]) -> Callable[[Frame, int], None]:
        recorder = self.stream.recorder

        def sink(frame: Frame, recv_ns: int) -> None:
            raw = frame.raw
            if raw is None:  # no data events: status messages (and so the auth echo) never reach Redis
                return
            with contextlib.suppress(LeaseLost):  # writer.run() raises it too, and the owner task ends there
                offer(raw, frame.count, recv_ns)
            if recorder is not None:
                recorder.write(raw, frame.count, recv_ns)

        return sink

    async def _follow_union(self, connection: Connection) -> None:
        """Subscribe upstream to what any live process wants, unsubscribe what none does."""
        session = self.stream.session
        async for picture in self.feed.registry.union_changes(self.name, every=UNION_POLL):
            union = picture.union
            current = set(session.topics)
            added = sorted(union - current)
            removed = sorted(current - union)
            if added:
                session.subscribe(added)
            if removed:
                session.unsubscribe(removed)
            if added or removed:
                await connection.flush()

    # -- every process: the buffer follows the shared stream ---------------------------------------------------

    async def _read(self) -> None:
        shared = self.feed.stream(self.name)
        buffer = self.stream.buffer
        after = buffer.head
        if not after:
            head = await self._first_head()
            self.epoch = head.epoch
            after = max(0, head.head_seq - buffer.capacity)
        reader = shared.reader(after_seq=after, epoch=self.epoch, block=0.5)
        try:
            async for batch in reader.follow():
                self._take(batch)
                self.epoch = reader.epoch
        finally:
            with contextlib.suppress(Exception):
                await reader.aclose()

    async def _first_head(self) -> StreamHead:
        while True:
            try:
                return await self.feed.stream(self.name).head()
            except RedisUnavailable:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.feed.link.wait_up()
                await asyncio.sleep(0.05)

    def _take(self, batch: FeedBatch) -> None:
        stream = self.stream
        if batch.reset is not None:
            # Redis came back empty: seq numbers start again at 1. A fresh buffer makes an older since_seq read
            # like one from before a restart, instead of hiding every new event behind it.
            self.resets += 1
            stream.buffer = MessageBuffer(stream.buffer.capacity)
            log.warning("%s: the shared stream started again (Redis came back empty)", self.name)
        frames: tuple[SharedFrame, ...] = batch.frames
        buffer, stats = stream.buffer, stream.stats
        for frame in frames:
            t = frame.recv_ns / 1e9
            if buffer.append_at(frame.raw, frame.count, t, frame.first_seq, laid_out(frame.raw, frame.count)):
                stats.add(count_event_types(frame.raw), frame.count, t)
        if frames:
            stream.pulse.notify()

    # -- pictures ----------------------------------------------------------------------------------------------

    async def picture(self) -> SharedPicture:
        wanted_here = tuple(sorted(self.feed.registry.wanted(self.name)))
        try:
            status = await self.feed.status(self.name)
        except RedisUnavailable as exc:
            grant = self.keeper.grant if self.keeper is not None else None
            mine = (ProcessWants(self.feed.process, frozenset(wanted_here)),) if wanted_here else ()
            return SharedPicture(
                self.name, self.feed.process, self.role, self.feed.process if grant else None,
                grant.token if grant else None, wanted_here, mine, wanted_here, None, self.resets, str(exc),
            )  # fmt: skip
        owner = status.owner
        pic = status.subscriptions
        return SharedPicture(
            self.name, self.feed.process, self.role, owner.holder if owner else None, owner.token if owner else None,
            wanted_here, pic.processes, tuple(sorted(pic.union)), status.head, self.resets, None,
        )  # fmt: skip


class SharedStreams:
    """The shared feed of every market of this process; the StreamManager delegates control to it."""

    def __init__(self, manager: StreamManager) -> None:
        settings = manager.settings
        assert settings.redis_url is not None
        self.manager = manager
        self.feed = SharedFeed(
            SharedFeedConfig(
                url=settings.redis_url,
                namespace=settings.redis_namespace,
                max_frames=settings.redis_maxlen,
                ssl_ca_certs=settings.redis_ca_certs,
            )
        )
        self._markets: dict[str, SharedMarket] = {}
        self._started = False

    async def _market(self, name: str) -> SharedMarket:
        if not self._started:
            self._started = True
            await self.feed.start()
        market = self._markets.get(name)
        if market is None:
            market = self._markets[name] = SharedMarket(self, self.manager.stream(name))
        return market

    async def _set_wants(self, change: Callable[[], Awaitable[object]]) -> None:
        """Apply a change of this process's wants. They are kept locally (and registered when Redis is back) even
        when Redis does not answer: the tool's answer then says so through the picture's redis_error."""
        with contextlib.suppress(RedisUnavailable):
            await change()

    def _topics(self, stream: MarketStream, channels: ChannelList, *, adding: bool) -> list[str]:
        """The agent's channels, checked like the embedded default does; limits against this process's wants."""
        from mcp_polygon.streams.manager import StreamError

        topics = self.manager._channels(stream, channels)
        if adding:
            try:
                check_limits(stream.market, sorted(self.feed.registry.wanted(stream.market.name) | set(topics)))
            except ChannelError as exc:
                raise StreamError(str(exc)) from None
        return topics

    async def start(self, name: str, channels: ChannelList, endpoint: str | None) -> SharedChange:
        manager = self.manager
        stream = manager.stream(name)
        topics = self._topics(stream, channels, adding=True)
        manager._require_key()
        url = manager.endpoints.resolve(endpoint, stream.market)
        market = await self._market(name)
        async with stream.lock:
            if url != stream.endpoint and market.role is FeedRole.OWNER:
                await market._stop_owning()  # reconnect on the new endpoint: keep the lease, start owning again
                stream.endpoint = url
                if market.keeper is not None and market.keeper.grant is not None:
                    market._lease_changed(market.keeper.grant)
            stream.endpoint = url
            await self._set_wants(lambda: self.feed.registry.want(name, topics))
            market.join()
        await self._settle(market, topics)
        return await self._change(market, topics)

    async def subscribe(self, name: str, channels: ChannelList) -> SharedChange:
        manager = self.manager
        stream = manager.stream(name)
        topics = self._topics(stream, channels, adding=True)
        market = await self._market(name)
        if market.keeper is None:
            shown = repr(topics)[:200]
            from mcp_polygon.streams.manager import StreamError

            raise StreamError(f"The {name} stream is not started here; call start_{name}_stream(channels={shown}).")
        await self._set_wants(lambda: self.feed.registry.want(name, topics))
        await self._settle(market, topics)
        return await self._change(market, topics)

    async def unsubscribe(self, name: str, channels: ChannelList) -> SharedChange:
        topics = self._topics(self.manager.stream(name), channels, adding=False)
        market = await self._market(name)
        wanted = self.feed.registry.wanted(name)
        known = tuple(t for t in topics if t in wanted)
        unknown = tuple(t for t in topics if t not in wanted)
        await self._set_wants(lambda: self.feed.registry.drop(name, known))
        return await self._change(market, known, unknown=unknown)

    async def stop(self, name: str) -> bool:
        market = await self._market(name)
        stream = market.stream
        async with stream.lock:
            await self._set_wants(lambda: self.feed.registry.replace(name, ()))
            was = await market.leave()
            stream.stopped_at = time.time()
            return was

    async def picture(self, name: str) -> SharedPicture:
        return await (await self._market(name)).picture()

    async def aclose(self) -> None:
        for market in list(self._markets.values()):
            with contextlib.suppress(Exception):
                await market.leave()
        if self._started:
            await self.feed.aclose()

    async def _settle(self, market: SharedMarket, topics: list[str]) -> None:
        """Wait (bounded) until someone owns the market and, when it is this process, its socket has answered for
        `topics`. Returns at once while Redis is known to be down: the answer says so."""
        session = market.stream.session

        def answered_here() -> bool:
            if session.auth is AuthState.FAILED:
                return True
            return session.auth is AuthState.OK and set(topics) <= set(session.topics) and session.settled(topics)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.manager.waits.auth
        while loop.time() < deadline and self.feed.link.state is not LinkState.DOWN:
            if market.role is FeedRole.OWNER:
                if answered_here():
                    return
            elif market.role is FeedRole.READER:
                with contextlib.suppress(RedisUnavailable):
                    if await self.feed.lease(market.name).owner() is not None:
                        return
            await asyncio.sleep(0.05)

    async def _change(
        self, market: SharedMarket, requested: list[str] | tuple[str, ...], *, unknown: tuple[str, ...] = ()
    ) -> SharedChange:
        picture = await market.picture()
        session = market.stream.session
        owner_here = picture.role is FeedRole.OWNER
        acknowledged = tuple(t for t in requested if owner_here and t in session.by_status(TopicStatus.ACKNOWLEDGED))
        reasons = session.rejections() if owner_here else {}
        rejected = tuple(f"{t} ({reasons[t]})" for t in requested if t in reasons)
        head_seq = picture.head.head_seq if picture.head is not None else market.stream.buffer.head
        return SharedChange(picture, tuple(requested), unknown, acknowledged, rejected, head_seq)
