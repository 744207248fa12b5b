"""Snapshot building: what the rules may read about one message, gathered from Redis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis

from csm_router.config import Settings
from csm_router.config.values import language_name
from csm_router.core.auth import Verdict, verify_sender
from csm_router.core.classify import RuleSet
from csm_router.core.commands import command_lines, find_command
from csm_router.core.decision import Onboarding, Snapshot, ThreadInfo, ThreadState, away_at
from csm_router.core.matching import (
    Lookups,
    Parties,
    candidates,
    csm_verdict,
    lookups,
    match_thread,
    tag_thread,
)
from csm_router.core.message import Inbound, MalformedMessageError, parse
from csm_router.core.quotes import html_to_text
from csm_router.state.keys import key, text, text_hash

MAX_CUSTOMER_MAILS = 50  # a thread's latest messages read for a command a CSM repeats
RECENT_THREADS = 20  # a sender's latest threads, where a signature tag may point


@dataclass(frozen=True)
class _Reads:
    """The answers of the snapshot's one round trip to Redis."""

    id_refs: list[int]  # threads the reply headers name
    tag_owners: list[str]  # CSMs whose signature tags the message carries
    away_raw: Any
    backups: dict[str, str]  # away CSM -> their backup
    served: dict[str, float]  # CSM -> when they last served the sender's account
    onboarding_raw: Any
    customer_refs: list[int]  # the sender's latest threads, newest first
    state: str  # the message's recorded state, "" when never recorded
    full: frozenset[str]  # CSMs at their open-thread limit


def _onboarding(raw: Any) -> Onboarding | None:
    if not raw:
        return None
    ob = text_hash(raw)
    return Onboarding(ob["owner"], float(ob["since"]), int(ob["days"]))


class SnapshotReader:
    """The reads behind `Store.snapshot`; Store supplies `redis` and `settings`."""

    redis: Redis
    settings: Settings

    def snapshot(
        self,
        msg: Inbound,
        now: float,
        *,
        verdict: Verdict | None = None,
        support_rules: RuleSet | None = None,
        msgkey: str | None = None,
        language: str | None = None,
    ) -> Snapshot:
        """Gather what the rules may read about `msg` in one round trip (two for a reply).

        With `msgkey`, the same round trip also tells whether the message was recorded
        before (`Snapshot.recorded`).
        """
        if verdict is None:  # nothing is taken on trust: the sender is checked here instead
            verdict = verify_sender(msg, self.settings.trusted_authserv_id)
        parties = self.parties()
        asked = lookups(msg)
        got = self._read_lookups(msg, asked, msgkey)
        found = candidates(got.id_refs, asked)
        threads = self.threads_info([r for r, _ in found] + got.customer_refs)
        insider = parties.insider(msg.sender)
        thread, matched_by, foreign = match_thread(found, threads, msg.sender,
                                                   insider=insider)
        tag_owner = got.tag_owners[0] if got.tag_owners else None
        verdict = csm_verdict(msg, verdict, thread, parties)
        return Snapshot(
            **self._settings_view(msg, now, language),
            away=self.away_now(got.away_raw, now),
            away_until={a: float(u) for a, u in text_hash(got.away_raw).items() if u},
            backups=got.backups,
            served=got.served,
            thread=thread,
            matched_by=matched_by,
            tag_owner=tag_owner,
            tag_thread=tag_thread(got.customer_refs, threads, tag_owner),
            onboarding=_onboarding(got.onboarding_raw),
            full=got.full,
            sender_verified=verdict.verified,
            verdict=verdict.why,
            customer_commands=self._repeatable_commands(msg, thread, insider=insider),
            support_rules=support_rules,
            foreign_refs=tuple(dict.fromkeys(foreign)) if thread is None else (),
            recorded=(got.state or None) if msgkey else None,
        )

    def _settings_view(self, msg: Inbound, now: float, language: str | None
                       ) -> dict[str, Any]:
        """What the settings (and the clock) say about `msg`: the pool, shifts, targets,
        premium, affinity and languages, as the core takes them."""
        settings = self.settings
        schedule = settings.schedule
        off_shift = schedule.off_shift(now)
        support = settings.support_address
        return {
            "now": now, "alias": settings.alias.address, "pool": settings.pool,
            "max_open": settings.max_open_per_csm, "affinity_days": settings.affinity_days,
            "support_address": support.address if support else None,
            "off_shift": off_shift,
            "back_at": {a: schedule.back_at(a, now) for a in off_shift},
            "due_if_started": schedule.deadline(
                now, settings.first_response_seconds(msg.account) / 60),
            "premium": msg.account in settings.premium,
            "language": language or "",
            "language_name": language_name(language) if language else "",
            "readers": settings.readers,
        }

    def parties(self) -> Parties:
        """The settings' pool, Support, alias and reply secret, as the core takes them."""
        support = self.settings.support_address
        secret = self.settings.reply_secret
        return Parties(
            alias=self.settings.alias.address,
            pool=frozenset(m.address for m in self.settings.pool),
            support=support.address if support else None,
            reply_secret=secret.get_secret_value() if secret else None,
        )

    def _read_lookups(self, msg: Inbound, asked: Lookups, msgkey: str | None) -> _Reads:
        """Everything the snapshot needs from Redis but the threads, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for mid in asked.header_ids:
            pipe.get(key("msgid", mid))
        for tag in asked.tags:
            pipe.get(key("sigtag", tag))
        pipe.hgetall(key("away"))
        pipe.hgetall(key("backup"))
        pipe.hgetall(key("served", msg.account))
        pipe.hgetall(key("onboarding", msg.account))
        pipe.zrevrange(key("customer", msg.sender), 0, RECENT_THREADS - 1)
        pipe.hget(key("msg", msgkey or "-"), "state")
        # Capacity holds for every decision: the rules see who is full, named or not.
        max_open = self.settings.max_open_per_csm
        counted = [m.address for m in self.settings.pool] if max_open else []
        for address in counted:
            pipe.scard(key("open", address))
        results = pipe.execute()
        open_counts = results[len(results) - len(counted):]
        del results[len(results) - len(counted):]
        state = text(results.pop())
        ids, tags = len(asked.header_ids), len(asked.tags)
        away_raw, backups, served, onboarding_raw, customer_refs = results[ids + tags:]
        return _Reads(
            id_refs=[int(r) for r in results[:ids] if r],
            tag_owners=[text(r) for r in results[ids : ids + tags] if r],
            away_raw=away_raw,
            backups=text_hash(backups),
            served={csm: float(at) for csm, at in text_hash(served).items()},
            onboarding_raw=onboarding_raw,
            customer_refs=[int(r) for r in customer_refs],
            state=state,
            full=frozenset(a for a, n in zip(counted, open_counts, strict=True)
                           if int(n) >= max_open),
        )

    def _repeatable_commands(
        self, msg: Inbound, thread: ThreadInfo | None, *, insider: bool
    ) -> frozenset[str]:
        """The thread's customer command lines, read only for an insider's command."""
        if insider and thread is not None and find_command(msg.fresh_text) is not None:
            return self.customer_commands(thread.ref)
        return frozenset()

    def customer_commands(self, ref: int) -> frozenset[str]:
        """Command lines anywhere in the thread's recent customer mail (commands.command_lines).

        Read only when a CSM or Support writes a command: it costs a parse per message.
        """
        msgkeys = self.redis.lrange(key("thread", ref, "msgs"), -MAX_CUSTOMER_MAILS, -1)
        with self.redis.pipeline(transaction=False) as pipe:
            for msgkey in msgkeys:
                pipe.get(key("raw", text(msgkey)))
            raws = pipe.execute() if msgkeys else []
        found: set[str] = set()
        parties = self.parties()
        for raw in raws:
            if raw is None:
                continue
            try:
                mail = parse(bytes(raw), max_bytes=self.settings.max_message_bytes)
            except MalformedMessageError:
                continue  # it was quarantined, so nobody was forwarded it
            if parties.is_staff(mail.sender):
                continue  # a CSM's or Support's own earlier mail, not the customer's
            found |= command_lines(mail.text)
            found |= command_lines(html_to_text(mail.html)) if mail.html else frozenset()
        return frozenset(found)

    def threads_info(self, refs: list[int]) -> dict[int, ThreadInfo]:
        unique = list(dict.fromkeys(refs))
        if not unique:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for ref in unique:
            pipe.hmget(key("thread", ref), "owner", "state", "customer", "due")
        found: dict[int, ThreadInfo] = {}
        for ref, (owner, state, customer, due) in zip(unique, pipe.execute(), strict=True):
            if state is not None:
                found[ref] = ThreadInfo(
                    ref, text(owner) or None, ThreadState(text(state)), text(customer),
                    float(due) if due else None,
                )
        return found

    def away_now(self, away: Any, now: float) -> frozenset[str]:
        """Who is away at `now`: ROUTER_AWAY plus the CLI's `csm:away` hash (read by caller)."""
        return away_at(text_hash(away), now, self.settings.away)
