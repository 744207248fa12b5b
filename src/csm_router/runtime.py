"""The shared runtime (settings, Redis, queues, outbox); recording a decision with its texts."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq import Queue

from csm_router.config import ServerUrl, Settings
from csm_router.core.classify import RuleSet
from csm_router.core.decision import Action, Decision
from csm_router.core.message import Inbound
from csm_router.core.rulefile import load_rules
from csm_router.core.threads import format_ref, reply_subject
from csm_router.mail.language import Detector
from csm_router.mail.outbound import render, use_templates
from csm_router.oauth.tokens import Tokens
from csm_router.state.connect import redis_client
from csm_router.state.logins import record_grant, record_refusal
from csm_router.state.outbox import QUEUES, Outbox, rq_prefix
from csm_router.state.store import Outcome, Store

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a process needs, built once at start-up and passed down."""

    settings: Settings
    redis: Redis
    store: Store
    queues: dict[str, Queue]
    support_rules: RuleSet
    outbox: Outbox
    given_client: bool = False  # a client handed in (tests): used for everything
    # The language of customers' mail, where ROUTER_LANGUAGES says who reads what.
    languages: Detector | None = None

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis | None = None) -> Runtime:
        # RQ stores pickled payloads, so the connection must not decode responses.
        use_templates(settings.templates_dir)
        conn = redis if redis is not None else redis_client(settings.redis_url)
        queues = {name: Queue(rq_prefix() + name, connection=conn) for name in QUEUES}
        store = Store(conn, settings)
        detector = (Detector(frozenset().union(*settings.languages.values()))
                    if settings.languages else None)
        rt = cls(settings, conn, store, queues, load_rules(settings.support_rules),
                 Outbox(store, queues), given_client=redis is not None, languages=detector)
        rt.watch_logins()
        return rt

    def watch_logins(self) -> None:
        """OAuth refusals and grants of this process reach Redis: /healthz, the status page
        and the lead's notice read them there."""
        by = f"pid {os.getpid()} on {socket.gethostname()}"
        for url in (self.settings.imap_url, self.settings.smtp_url):
            if isinstance(url, ServerUrl) and isinstance(url.token, Tokens):
                url.token.watch(
                    lambda line: self.outbox.offer(record_refusal(self.store, line, by)),
                    lambda: record_grant(self.store))

    def keep_tokens_fresh(self) -> None:
        """Renew this process's OAuth tokens when due, though no login asks for them (see
        Tokens.keep_fresh): a router and a worker call it as they go."""
        for url in (self.settings.imap_url, self.settings.smtp_url):
            if isinstance(url, ServerUrl) and isinstance(url.token, Tokens):
                url.token.keep_fresh()

    def rq_client(self) -> Redis:
        """A client for RQ's worker loop alone.

        RQ stretches its client's socket timeout past its blocking dequeue (minutes): on
        a shared client that would reach this process's own commands, and connections
        made before it kept redis-py's 5 s, which cut RQ's dequeue short every 5 s with
        an error and a growing back-off, during which no job was taken.
        """
        return self.redis if self.given_client else redis_client(self.settings.redis_url)


def stop_on_signals(stop: threading.Event, doing: str) -> None:
    """SIGTERM and SIGINT set `stop`: the process finishes `doing` and ends cleanly."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set signal handlers

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %s: finishing %s and stopping", signum, doing)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def release_held(rt: Runtime) -> int:
    """Hand out held threads to whoever can take them now; answers how many."""
    released, owed = rt.store.release_held()
    for item in released:
        log.info("CS-%s released to %s", item.ref, item.owner)
    rt.outbox.offer(owed)
    return len(released)


def delivery_reason(decision: Decision, sender: str) -> str:
    """The "Why you" line for forwards that a command or Support causes."""
    command = decision.command
    if command is None or decision.error:
        return decision.why
    if command.name == "reassign":
        return f"{sender} reassigned the thread to you (#reassign)"
    if command.name == "success":
        return "Support gave the thread back to Customer Success (#success)"
    return decision.why


def command_notice(decision: Decision, msg: Inbound, settings: Settings) -> dict[str, str] | None:
    """The short confirmation or error the sender of a command gets back, if any."""
    command = decision.command
    if command is None:
        return None
    if decision.action not in (Action.RECORD_REPLY, Action.COMMAND) and not decision.error:
        return None
    ref = format_ref(decision.ref) if decision.ref else None
    text = render(
        "command_reply.txt.j2",
        command=command.name,
        argument=command.argument,
        ref=ref,
        error=decision.error,
        support=settings.support_address.address if settings.support_address else "",
    )
    subject = reply_subject(msg.subject or f"#{command.name}")
    return {"to": msg.sender, "subject": subject, "text": text, "in_reply_to": msg.message_id}


def record_decision(
    store: Store, msgkey: str, msg: Inbound, decision: Decision, now: float, uid: int = 0,
    *, raw: bytes | None = None, language: str | None = None, looks_technical: str = "",
) -> Outcome:
    """Record a decision with the follow-up texts it implies (forward reason, command reply),
    and keep `raw` if given."""
    return store.record(
        msgkey, msg, decision, now, uid=uid,
        why_deliver=delivery_reason(decision, msg.sender),
        notice=command_notice(decision, msg, store.settings),
        raw=raw,
        language=language,
        looks_technical=looks_technical,
    )
