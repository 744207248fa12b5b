"""`csm-router lmtp`: mail straight from the MTA, routed the moment it arrives.

The MTA hands each message to the alias mailbox and to this server. Here it is routed at
once; 250 is answered only once its decision and the sends it owes are recorded, so a
router that is down or a Redis that fails (451) leaves the message queued at the MTA. The
alias mailbox stays the record: the mailbox's router meets the same message later,
recognises it (the same message key) and routes nothing twice. Whatever only the mailbox
can do is left to it: a message to quarantine, or one whose routing failed for a reason
of its own (the mailbox's router counts its tries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from csm_router.app.routing import MAX_TRIES, count_try, route
from csm_router.config.teams import in_team
from csm_router.errors import TransientError, server_fault
from csm_router.runtime import Runtime
from csm_router.state.store import key, message_key

log = logging.getLogger(__name__)

# Far above what an MTA hands over (Postfix: message_size_limit, 10 MB by default). A
# message over ROUTER_MAX_MESSAGE_BYTES but under this is left to the mailbox's router,
# which quarantines it; refusing it here would bounce it to the customer.
SIZE_SLACK = 4


class Teams:
    """Which team's runtime an LMTP recipient is for.

    The MTA's copy for the router is addressed as it likes (`success@acme.com`, or a
    pseudo-domain such as `success@csm-router.lmtp` in a transport map): a recipient is a
    team's when it is that team's alias, or has the alias's local part and no other
    team's alias shares it, or there is only one team.
    """

    def __init__(self, runtimes: Mapping[str, Runtime]) -> None:
        self.runtimes = dict(runtimes)  # team ("" without ROUTER_TEAMS) -> its runtime
        self.by_address = {rt.settings.alias.address: team for team, rt in self.runtimes.items()}
        local: dict[str, list[str]] = {}
        for address, team in self.by_address.items():
            local.setdefault(address.partition("@")[0], []).append(team)
        self.by_local = {part: teams[0] for part, teams in local.items() if len(teams) == 1}

    def team_of(self, recipient: str) -> str | None:
        """The team `recipient` is for, or None if it is none of theirs."""
        address = recipient.strip().strip("<>").lower()
        if address in self.by_address:
            return self.by_address[address]
        local = address.partition("@")[0].partition("+")[0]
        if local in self.by_local:
            return self.by_local[local]
        return next(iter(self.runtimes)) if len(self.runtimes) == 1 else None

    @contextlib.contextmanager
    def scope(self, team: str) -> Iterator[Runtime]:
        """`team`'s runtime, with its keys and settings current."""
        with in_team(team) if team else contextlib.nullcontext():
            yield self.runtimes[team]


class LmtpHandler:
    """aiosmtpd's handler: recipients checked at RCPT, each routed at the end of DATA with
    one reply per recipient (LMTP's rule), routing done one message at a time, in order,
    off the event loop."""

    def __init__(self, teams: Teams, *, clock: Callable[[], float] = time.time) -> None:
        self.teams = teams
        self.clock = clock
        self.routing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmtp-route")

    async def handle_RCPT(self, server: LMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.teams.team_of(address) is None:
            return f"550 5.1.1 <{address}>: not an alias this router routes"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        loop = asyncio.get_running_loop()
        replies = []
        for recipient in envelope.rcpt_tos:
            team = self.teams.team_of(recipient) or ""
            replies.append(await loop.run_in_executor(self.routing, self.deliver, team, raw))
        return "\r\n".join(replies)

    def deliver(self, team: str, raw: bytes) -> str:
        """Route `raw` in `team`; the LMTP reply for its recipient.

        Each try is counted in Redis before it starts, as the mailbox's router counts its
        own: a message that kills this process (the MTA would hand it over again and
        again) is left to the mailbox's router at its next try, which quarantines it.
        """
        with self.teams.scope(team) as rt:
            tries_key = key("tries", "lmtp", message_key(None, raw))
            reply = self._reply(rt, raw, tries_key)
            if reply.startswith("250"):  # done with, here or by the mailbox's router
                with contextlib.suppress(redis.RedisError):
                    rt.redis.delete(tries_key)
            return reply

    def _reply(self, rt: Runtime, raw: bytes, tries_key: str) -> str:
        try:
            tries, _ = count_try(rt.redis, tries_key)
            if tries > MAX_TRIES:
                return _left(f"this process stopped while routing it {tries - 1} times")
            routed = route(rt, raw, self.clock(), via="LMTP")
        except (TransientError, redis.RedisError) as exc:
            if isinstance(exc, redis.RedisError) and not server_fault(exc):
                return _left(f"Redis refused its data ({str(exc)[:200]})")
            log.warning("LMTP: %s: the MTA keeps the message and tries again", exc)
            with contextlib.suppress(redis.RedisError):
                rt.redis.hincrby(tries_key, "n", -1)  # not the message's fault
            return "451 4.3.0 routing is unavailable now, try again later"
        except Exception as exc:
            log.exception("LMTP: unexpected error")
            return _left(f"internal error: {type(exc).__name__}")
        if routed.state == "quarantine":
            return _left(f"to quarantine ({routed.why})")
        with contextlib.suppress(redis.RedisError):
            # Owed already, with the decision: offering only hurries it. Were Redis to
            # fail now, the workers' pump offers it in a few seconds.
            rt.outbox.offer(routed.owed)
        if routed.state == "duplicate":
            return "250 2.0.0 OK: routed before"
        return f"250 2.0.0 OK: routed ({routed.summary})"


def _left(why: str) -> str:
    """The reply for a message left to the mailbox's router, which has it too."""
    log.warning("LMTP: left to the mailbox's router: %s", why)
    return "250 2.0.0 OK: left to the mailbox's router"


def serve(teams: Teams, host: str, port: int, stop: threading.Event,
          *, max_bytes: int, ready: Callable[[], None] | None = None) -> None:
    """Listen on `host`:`port` until `stop` is set; each connection speaks LMTP."""
    handler = LmtpHandler(teams)

    def factory() -> Any:
        return LMTP(handler, data_size_limit=max_bytes * SIZE_SLACK, enable_SMTPUTF8=True,
                    decode_data=False, hostname="csm-router", ident="csm-router LMTP")

    # aiosmtpd logs every command at INFO: an MTA's conversation is not news.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, log.getEffectiveLevel()))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, host, port, reuse_address=True)
        log.info("LMTP listening on %s:%s", host, port)
        if ready is not None:
            ready()
        try:
            await loop.run_in_executor(None, stop.wait)
        finally:
            server.close()
            await server.wait_closed()
            handler.routing.shutdown(wait=True)  # a message being routed is finished

    asyncio.run(main())
