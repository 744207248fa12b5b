"""Reach Redis: one server (`redis://`, `rediss://`, `unix://`) or a Sentinel set.

`redis+sentinel://:password@host1:26379,host2:26379/mymaster/0`, as other Python queue
libraries spell it: the sentinels to ask, the name of the master they watch, and the
database. The client asks the sentinels for the master, and again after a failover.
`rediss+sentinel://` speaks TLS to the sentinels and to the master alike, verifying their
certificates (`?ssl_ca_certs=/path/ca.pem` names a private CA, as it does for `rediss://`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis import Redis
from redis.connection import SSLConnection
from redis.sentinel import Sentinel, SentinelManagedConnection

if TYPE_CHECKING:
    from csm_router.config import Settings

TLS_SENTINEL_SCHEME = "rediss+sentinel://"
# Either spelling (str.startswith takes the tuple): a Sentinel set, in the clear or TLS.
SENTINEL_SCHEME = ("redis+sentinel://", TLS_SENTINEL_SCHEME)
# What a TLS Sentinel URL may add after `?`: redis-py's own names, as for rediss://.
TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                         "ssl_check_hostname"})


@dataclass(frozen=True)
class SentinelUrl:
    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None
    tls: dict[str, str] | None = None  # None: in the clear; else the ssl_* options


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a redis+sentinel:// or rediss+sentinel:// URL; raise ValueError saying what
    is wrong."""
    url = url.strip()
    tls = url.startswith(TLS_SENTINEL_SCHEME)
    rest = url.removeprefix(TLS_SENTINEL_SCHEME if tls else SENTINEL_SCHEME[0])
    rest, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - (TLS_OPTIONS if tls else set()))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}" + (
            f" (TLS takes {', '.join(sorted(TLS_OPTIONS))})" if tls else
            " (options are for TLS: rediss+sentinel://)"))
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
    return SentinelUrl(tuple(hosts), service, int(db or 0), password or None,
                       options if tls else None)


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


class _SentinelTLSConnection(_SentinelConnection, SSLConnection):
    """The same, over TLS (rediss+sentinel://)."""


def redis_client(url: str, **options: Any) -> Redis:
    """A client for ROUTER_REDIS_URL (which the settings have validated)."""
    if not url.startswith(SENTINEL_SCHEME):
        return Redis.from_url(url, **options)
    found = parse_sentinel_url(url)
    tls: dict[str, Any] = dict(found.tls or {})
    if "ssl_check_hostname" in tls:
        tls["ssl_check_hostname"] = tls["ssl_check_hostname"].lower() in ("1", "true", "yes")
    # Sentinels answer with the master's address: over TLS they are asked over TLS too.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(found.hosts), sentinel_kwargs={**options, **tls, "ssl": True} if found.tls
        is not None else None, **options)
    client: Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        found.service, db=found.db, password=found.password,
        connection_class=_SentinelTLSConnection if found.tls is not None
        else _SentinelConnection, **options, **tls)
    return client


def redis_cleartext_password(url: str) -> str | None:
    """Why ROUTER_REDIS_URL sends a password unencrypted off this machine; None if not.

    Redis's AUTH travels as it is written: over redis:// (or a Sentinel set without TLS)
    anyone on the path reads it, and then every customer's mail in Redis.
    """
    from csm_router.config import is_loopback  # config imports this module

    url = url.strip()
    if url.startswith(SENTINEL_SCHEME):
        found = parse_sentinel_url(url)
        remote = [h for h, _ in found.hosts if not is_loopback(h)]
        if found.password and found.tls is None and remote:
            return (f"ROUTER_REDIS_URL sends the Redis password in the clear to the master "
                    f"the sentinels name ({remote[0]}...): use rediss+sentinel://")
        return None
    if not url.startswith("redis://"):
        return None  # rediss:// is TLS; unix:// never leaves the machine
    parts = urlsplit(url)
    if parts.password and parts.hostname and not is_loopback(parts.hostname):
        return (f"ROUTER_REDIS_URL sends the Redis password in the clear to "
                f"{parts.hostname}: use rediss://")
    return None


def cleartext_passwords(settings: Settings) -> list[str]:
    """Every password the settings let travel unencrypted off this machine (for `check`):
    Redis without TLS, and IMAP or SMTP where ROUTER_ALLOW_PLAINTEXT lets a login go on
    when the server offers no STARTTLS."""
    from csm_router.config import is_loopback

    found = [w] if (w := redis_cleartext_password(settings.redis_url)) else []
    for name, url in (("IMAP", settings.imap_url), ("SMTP", settings.smtp_url)):
        if (url is not None and url.password and not url.tls and url.allow_plaintext
                and not is_loopback(url.host)):
            found.append(f"ROUTER_ALLOW_PLAINTEXT lets the {name} password go in the clear "
                         f"to {url.host} if it offers no STARTTLS: use {url.scheme}s://")
    return found
