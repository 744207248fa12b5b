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
from redis.sentinel import Sentinel

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


def redis_client(url: str, **options: Any) -> Redis:
    """A client for ROUTER_REDIS_URL (which the settings have validated)."""
    if not url.startswith(SENTINEL_SCHEME):
        return Redis.from_url(url, **options)
    found = parse_sentinel_url(url)
    sentinel = Sentinel(list(found.hosts), **options)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        found.service, db=found.db, password=found.password, **options)
    return client
