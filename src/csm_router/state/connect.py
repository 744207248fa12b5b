"""Reach Redis: one server (`redis://`, `rediss://`, `unix://`) or a Sentinel set.

`redis+sentinel://:password@host1:26379,host2:26379/mymaster/0`, as other Python queue
libraries spell it: the sentinels to ask, the name of the master they watch, and the
database. The client asks the sentinels for the master, and again after a failover.
`rediss+sentinel://` speaks TLS to the sentinels and to the master alike, verifying their
certificates (`?ssl_ca_certs=/path/ca.pem` names a private CA, as it does for `rediss://`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from redis import Redis
from redis.connection import SSLConnection
from redis.sentinel import Sentinel, SentinelManagedConnection

from csm_router.config.values import SENTINEL_SCHEME, is_loopback, parse_sentinel_url

if TYPE_CHECKING:
    from csm_router.config import Settings


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
    found = [w] if (w := redis_cleartext_password(settings.redis_url)) else []
    for name, url in (("IMAP", settings.imap_url), ("SMTP", settings.smtp_url)):
        if (url is not None and url.password and not url.tls and url.allow_plaintext
                and not is_loopback(url.host)):
            found.append(f"ROUTER_ALLOW_PLAINTEXT lets the {name} password go in the clear "
                         f"to {url.host} if it offers no STARTTLS: use {url.scheme}s://")
    return found
