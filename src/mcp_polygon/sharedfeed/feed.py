"""`SharedFeed`: everything one process needs to take part in the shared feed, behind one object."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from mcp_polygon.sharedfeed.errors import RedisUnavailable
from mcp_polygon.sharedfeed.keys import DEFAULT_NAMESPACE, FeedKeys, ProcessIdentity, check_name
from mcp_polygon.sharedfeed.lease import DEFAULT_LEASE_TTL, LeaseGrant, LeaseKeeper, LeaseOwner, MarketLease
from mcp_polygon.sharedfeed.link import DEFAULT_TIMEOUT, RedisEndpoint, RedisLink
from mcp_polygon.sharedfeed.stream import DEFAULT_MAX_FRAMES, SharedStream, StreamHead
from mcp_polygon.sharedfeed.subscriptions import DEFAULT_WANT_TTL, SubscriptionPicture, SubscriptionRegistry


@dataclass(frozen=True)
class SharedFeedConfig:
    """The shared feed's settings. `url` may hold a password: repr() shows only host:port."""

    url: str
    namespace: str = DEFAULT_NAMESPACE
    max_frames: int = DEFAULT_MAX_FRAMES  # MAXLEN ~ per market stream, in frames
    lease_ttl: float = DEFAULT_LEASE_TTL
    want_ttl: float = DEFAULT_WANT_TTL
    timeout: float = DEFAULT_TIMEOUT
    ssl_ca_certs: str | None = None  # a CA file for rediss:// with a private CA

    def __post_init__(self) -> None:
        RedisEndpoint.from_url(self.url)  # ValueError with a sentence that does not echo the URL
        check_name(self.namespace, "the Redis namespace")
        if self.max_frames < 1:
            raise ValueError("the shared stream's max_frames must be at least 1")
        for name, value in (("lease_ttl", self.lease_ttl), ("want_ttl", self.want_ttl), ("timeout", self.timeout)):
            if value <= 0:
                raise ValueError(f"the shared feed's {name} must be positive")

    def __repr__(self) -> str:
        endpoint = RedisEndpoint.from_url(self.url)
        scheme = "rediss" if endpoint.tls else "redis"
        return f"SharedFeedConfig(url={scheme}://{endpoint.address}/{endpoint.db}, namespace={self.namespace!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SharedFeedConfig | None:
        """POLYGON_REDIS_URL (unset: None, the embedded default), POLYGON_REDIS_NAMESPACE, POLYGON_REDIS_MAXLEN,
        POLYGON_REDIS_CA_CERTS. Raises ValueError with one sentence naming the variable."""
        url = (env.get("POLYGON_REDIS_URL") or "").strip()
        if not url:
            return None
        namespace = (env.get("POLYGON_REDIS_NAMESPACE") or "").strip() or DEFAULT_NAMESPACE
        raw_max = (env.get("POLYGON_REDIS_MAXLEN") or "").strip()
        if raw_max and not raw_max.isdigit():
            raise ValueError(f"POLYGON_REDIS_MAXLEN must be a whole number of frames, got {raw_max!r}")
        try:
            return cls(
                url=url,
                namespace=namespace,
                max_frames=int(raw_max) if raw_max else DEFAULT_MAX_FRAMES,
                ssl_ca_certs=(env.get("POLYGON_REDIS_CA_CERTS") or "").strip() or None,
            )
        except ValueError as exc:
            raise ValueError(f"POLYGON_REDIS_*: {exc}") from None


@dataclass(frozen=True)
class MarketFeedStatus:
    """The shared picture of one market, for get_<market>_stream_status and list_<market>_subscriptions."""

    market: str
    owner: LeaseOwner | None  # who holds the upstream socket (None: nobody right now)
    owned_here: bool
    head: StreamHead
    subscriptions: SubscriptionPicture


class SharedFeed:
    """One process's part in the shared feed: its Redis link, its identity, its registrations, per-market parts.

    `async with SharedFeed(config) as feed:` starts the link's rejoin loop and the registration refresher, and on
    exit withdraws this process's wants and closes the link (leases are released by their keepers' stop()).
    """

    def __init__(self, config: SharedFeedConfig, *, identity: ProcessIdentity | None = None) -> None:
        self.config = config
        self.identity = identity or ProcessIdentity.current()
        self.link = RedisLink(
            config.url, timeout=config.timeout, ssl_ca_certs=config.ssl_ca_certs, client_name="mcp-polygon"
        )
        self.registry = SubscriptionRegistry(
            self.link, self.identity.id, namespace=config.namespace, ttl=config.want_ttl
        )
        self._leases: dict[str, MarketLease] = {}
        self._streams: dict[str, SharedStream] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def process(self) -> str:
        return self.identity.id

    def keys(self, market: str) -> FeedKeys:
        return FeedKeys(self.config.namespace, market)

    def lease(self, market: str) -> MarketLease:
        if market not in self._leases:
            self._leases[market] = MarketLease(self.link, self.keys(market), self.process, ttl=self.config.lease_ttl)
        return self._leases[market]

    def keeper(self, market: str, on_change: Callable[[LeaseGrant | None], None] | None = None) -> LeaseKeeper:
        """A new keeper for `market`'s lease (call start() to contend, stop() to give it up)."""
        return LeaseKeeper(self.lease(market), on_change=on_change)

    def stream(self, market: str) -> SharedStream:
        if market not in self._streams:
            self._streams[market] = SharedStream(self.link, self.keys(market), max_frames=self.config.max_frames)
        return self._streams[market]

    async def status(self, market: str) -> MarketFeedStatus:
        """Raises RedisUnavailable (one sentence) when Redis does not answer."""
        owner = await self.lease(market).owner()
        head = await self.stream(market).head()
        picture = await self.registry.picture(market)
        return MarketFeedStatus(
            market=market,
            owner=owner,
            owned_here=owner is not None and owner.holder == self.process,
            head=head,
            subscriptions=picture,
        )

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self.link.keep_watch(), name="sharedfeed-link"),
                asyncio.create_task(self.registry.keep_fresh(), name="sharedfeed-registry"),
            ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(RedisUnavailable):
            await self.registry.withdraw()
        await self.link.aclose()

    async def __aenter__(self) -> SharedFeed:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
