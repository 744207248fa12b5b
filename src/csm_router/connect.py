"""Reach Redis: one server (`redis://`, `rediss://`, `unix://`) or a Sentinel set.

`redis+sentinel://:password@host1:26379,host2:26379/mymaster/0`, as other Python queue
libraries spell it: the sentinels to ask, the name of the master they watch, and the
database. The client asks the sentinels for the master, and again after a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from redis import Redis
from redis.sentinel import Sentinel, SentinelManagedConnection

SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True)
class SentinelUrl:
    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a redis+sentinel:// URL; raise ValueError saying what is wrong."""
    rest = url.strip().removeprefix(SENTINEL_SCHEME)
    auth, _, rest = rest.rpartition("@")
    password = unquote(auth.partition(":")[2]) if auth else None
    netloc, _, path = rest.partition("/")
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{item.strip()!r} is not host:port (a sentinel, e.g. "
                             "h1:26379)")
        hosts.append((host.strip("[]"), int(port)))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("names no master: redis+sentinel://h1:26379,h2:26379/mymaster/0")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    return SentinelUrl(tuple(hosts), service, int(db or 0), password or None)


class _SentinelConnection(SentinelManagedConnection):
    """A connection to the master Sentinel names that, like every other redis-py
    connection class, is dropped when a read fails.

    redis-py's own keeps the connection when a read is interrupted (a signal raising
    inside a blocking BLPOP, say) and hands it to the next caller, who then reads the
    interrupted command's answer or waits behind it: a worker told to stop hung for
    minutes in RQ's teardown."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("disconnect_on_error", True)
        return super().read_response(*args, **kwargs)


def redis_client(url: str, **options: Any) -> Redis:
    """A client for ROUTER_REDIS_URL (which the settings have validated)."""
    if not url.startswith(SENTINEL_SCHEME):
        return Redis.from_url(url, **options)
    found = parse_sentinel_url(url)
    sentinel = Sentinel(list(found.hosts), **options)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        found.service, db=found.db, password=found.password,
        connection_class=_SentinelConnection, **options)
    return client
