"""One upstream feed for every process: the Redis layer (issue 11). Used only when POLYGON_REDIS_URL is set.

The vendor allows one WebSocket per market per API key. With a Redis shared by every server process (stdio
sessions on one machine, HTTP replicas behind a load balancer, agents on several machines), exactly one process
per market holds the upstream socket and everybody reads what it received:

    lease          one owner per market: a key with a TTL and a fencing token, renewed while healthy
    stream         the owner appends each frame to the market's Redis Stream (XADD MAXLEN ~ N), seq numbers
                   from one per-market counter, so since_seq means the same in every process
    subscriptions  each process registers what its agents want (own key, TTL); the owner serves the union
    link           short timeouts, one error for all Redis trouble, a loop that rejoins when Redis is back

Nothing in this package touches the vendor, the API key or the stream buffer: frames are stored as the
vendor's raw JSON arrays of events (never status messages, so never an auth echo), and the API key is never
written to Redis. Every call can raise `RedisUnavailable`, whose message is one sentence for the agent
("Redis at host:port is unreachable: connection refused; serving what this process holds."), never with
the password from the URL.

Needs Redis 6.2 or newer (exclusive XRANGE bounds); plain, password (redis://:pw@host) and TLS (rediss://) URLs.
Keys live under "<namespace>:{<market>}:..." (one hash tag per market); give each API key its own namespace.

API (all async unless marked sync; every class is typed, every record a frozen dataclass)
-----------------------------------------------------------------------------------------
SharedFeedConfig(url, namespace="mcp-polygon", max_frames=10_000, lease_ttl=2.0, want_ttl=2.0, timeout=0.5,
                 ssl_ca_certs=None);  SharedFeedConfig.from_env(env) -> SharedFeedConfig | None   (sync)

SharedFeed(config, identity=None)       async with: starts link.keep_watch() and registry.keep_fresh()
    .process -> str                     this process's id "host/pid/nonce", as status shows it
    .link -> RedisLink                  .state (LinkState.UP/DOWN), .last_error, .generation, wait_up()
    .registry -> SubscriptionRegistry
    .lease(market) -> MarketLease       (sync)
    .keeper(market, on_change=None) -> LeaseKeeper   (sync; on_change(grant | None) on win / loss)
    .stream(market) -> SharedStream     (sync)
    .status(market) -> MarketFeedStatus(owner: LeaseOwner | None, owned_here, head: StreamHead,
                                         subscriptions: SubscriptionPicture)

LeaseKeeper: start() (sync), stop(release=True), grant -> LeaseGrant | None, wait_held() -> LeaseGrant,
    wait_lost(), losses. Loss is declared within one TTL of the last successful renewal's start.
MarketLease: acquire() -> LeaseGrant | None, renew(grant) -> bool, release(grant) -> bool,
    owner() -> LeaseOwner | None.  LeaseGrant(market, token, holder); LeaseOwner(holder, token, expires_in).

SharedStream:
    .writer(grant) -> FeedWriter        (sync) owner only
    .reader(after_seq=0, epoch=None, block=1.0, count=1000) -> FeedReader   (sync) every process
    head() -> StreamHead(epoch, head_seq, oldest_seq, frames);  epoch() -> str | None
    frames_after(seq, limit=1000) -> list[SharedFrame]
FeedWriter: offer(raw, count, recv_ns) (sync, O(1), hot path) + run() as a task (raises LeaseLost when
    fenced off); append(frames) -> AppendResult(first_seq, last_seq, epoch); stats -> WriterStats
FeedReader: read() -> FeedBatch(frames: tuple[SharedFrame, ...], reset: FeedReset | None, gap: int);
    follow() -> AsyncIterator[FeedBatch] (rides out Redis trouble); epoch, last_seq; aclose()
    SharedFrame(first_seq, count, recv_ns, raw, epoch) with .last_seq
    FeedReset(previous_epoch, epoch, last_seq): Redis came back empty; report it like a restart.
SubscriptionRegistry: want(market, channels), drop(market, channels), replace(market, channels) -> frozenset,
    wanted(market) (sync, local truth), picture(market) -> SubscriptionPicture(market, processes:
    tuple[ProcessWants(process, channels)]) with .union and .wanted_by(channel),
    union_changes(market, every=0.5) -> AsyncIterator[SubscriptionPicture], refresh(), withdraw().

Errors: SharedFeedError > RedisUnavailable(address, reason), LeaseLost(market, detail).

Wiring it into the StreamManager (what the lead does; streams/ is not touched here)
------------------------------------------------------------------------------------
- Every process, owner included, feeds its local buffer from `stream(market).reader(...)`: frames arrive with
  their shared first_seq, so the buffer needs an append that takes the seq (gaps allowed) instead of
  numbering frames itself. A `FeedReset` swaps in a fresh buffer and is reported like a restart.
- Each process runs a `keeper(market)` for the markets its agents want. On a grant: start the upstream
  connection, a `writer(grant)` fed with `offer()` from the frame hook (after status events are removed),
  and `registry.union_changes(market)` driving upstream subscribe / unsubscribe; record only while owning.
  On loss (`wait_lost()`, or LeaseLost from writer.run()): close the upstream socket, stop recording.
- Tool subscribe / unsubscribe call registry.want / drop; list_*_subscriptions and get_*_stream_status show
  `feed.status(market)`; RedisUnavailable becomes ToolError(str(error)) while the local buffer keeps serving.
"""

from mcp_polygon.sharedfeed.errors import LeaseLost, RedisUnavailable, SharedFeedError
from mcp_polygon.sharedfeed.feed import MarketFeedStatus, SharedFeed, SharedFeedConfig
from mcp_polygon.sharedfeed.keys import DEFAULT_NAMESPACE, FeedKeys, ProcessIdentity
from mcp_polygon.sharedfeed.lease import LeaseGrant, LeaseKeeper, LeaseOwner, MarketLease
from mcp_polygon.sharedfeed.link import LinkState, RedisEndpoint, RedisLink
from mcp_polygon.sharedfeed.stream import (
    AppendResult,
    FeedBatch,
    FeedReader,
    FeedReset,
    FeedWriter,
    SharedFrame,
    SharedStream,
    StreamHead,
    WriterStats,
)
from mcp_polygon.sharedfeed.subscriptions import ProcessWants, SubscriptionPicture, SubscriptionRegistry

__all__ = [
    "DEFAULT_NAMESPACE",
    "AppendResult",
    "FeedBatch",
    "FeedKeys",
    "FeedReader",
    "FeedReset",
    "FeedWriter",
    "LeaseGrant",
    "LeaseKeeper",
    "LeaseLost",
    "LeaseOwner",
    "LinkState",
    "MarketFeedStatus",
    "MarketLease",
    "ProcessIdentity",
    "ProcessWants",
    "RedisEndpoint",
    "RedisLink",
    "RedisUnavailable",
    "SharedFeed",
    "SharedFeedConfig",
    "SharedFeedError",
    "SharedFrame",
    "SharedStream",
    "StreamHead",
    "SubscriptionPicture",
    "SubscriptionRegistry",
    "WriterStats",
]
