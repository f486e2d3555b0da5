"""The shared feed's failures, each a one-sentence message an agent can act on (and never a password)."""

from __future__ import annotations


class SharedFeedError(Exception):
    """Base of everything the shared-feed layer raises on purpose."""


class RedisUnavailable(SharedFeedError):
    """Redis did not answer (refused, timed out, lost, rejected the credentials...): the process serves what it holds.

    `address` is host:port only; `reason` comes from a fixed vocabulary, never from the server's or the socket's
    text, so neither can carry the password from the URL into a tool answer or a log.
    """

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"Redis at {address} is unreachable: {reason}; serving what this process holds.")


class LeaseLost(SharedFeedError):
    """This process no longer holds a market's lease (it expired, or another process holds a newer one).

    A writer holding a stale grant is refused by Redis itself (the fencing check runs inside the append script),
    so a deposed owner can never append; the manager stops its upstream socket and goes back to reading.
    """

    def __init__(self, market: str, detail: str) -> None:
        self.market = market
        super().__init__(
            f"This process no longer owns the {market} feed: {detail}; it reads the shared stream instead."
        )
