"""Names: of the Redis keys one market uses, and of the process that takes part in the shared feed.

Every key of a market shares one hash tag (`{stocks}`), so the scripts that touch several of them at once keep
working on a Redis Cluster, where a script may only touch keys of one slot.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass

DEFAULT_NAMESPACE = "mcp-polygon"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} must be 1-64 letters, digits, '_', '.' or '-', got {value!r}")
    return value


@dataclass(frozen=True)
class FeedKeys:
    """The keys of one market's shared feed under one namespace (one namespace per API key / vendor account)."""

    namespace: str
    market: str

    def __post_init__(self) -> None:
        check_name(self.namespace, "the Redis namespace")
        check_name(self.market, "the market")

    @property
    def base(self) -> str:
        return f"{self.namespace}:{{{self.market}}}"

    @property
    def lease(self) -> str:
        """String "<token>:<holder>" with a TTL: who holds the upstream socket."""
        return f"{self.base}:lease"

    @property
    def fence(self) -> str:
        """Counter: the last fencing token handed out (INCR on every new grant)."""
        return f"{self.base}:fence"

    @property
    def seq(self) -> str:
        """Counter: the seq number of the newest event appended (INCRBY count per frame)."""
        return f"{self.base}:seq"

    @property
    def epoch(self) -> str:
        """A random id chosen when `seq` starts from zero: tells readers the counter they followed is gone."""
        return f"{self.base}:epoch"

    @property
    def frames(self) -> str:
        """The Redis Stream of frames; entry ID = "<first seq>-0"."""
        return f"{self.base}:frames"

    @property
    def wants(self) -> str:
        """Set of process ids that registered channels (pruned of ids whose registration expired)."""
        return f"{self.base}:wants"

    @property
    def want_prefix(self) -> str:
        return f"{self.base}:want:"

    def want(self, process: str) -> str:
        """Set of channels one process wants, with a TTL it refreshes while alive."""
        return self.want_prefix + process


@dataclass(frozen=True)
class ProcessIdentity:
    """Who a process is, as status shows it: host, pid, and a random nonce (a pid is reused, a nonce is not)."""

    host: str
    pid: int
    nonce: str

    @classmethod
    def current(cls) -> ProcessIdentity:
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:48] or "host"
        return cls(host=host, pid=os.getpid(), nonce=secrets.token_hex(4))

    @property
    def id(self) -> str:
        return f"{self.host}/{self.pid}/{self.nonce}"

    @classmethod
    def parse(cls, text: str) -> ProcessIdentity | None:
        host, _, rest = text.partition("/")
        pid, _, nonce = rest.partition("/")
        if not host or not pid.isdigit() or not nonce:
            return None
        return cls(host=host, pid=int(pid), nonce=nonce)
