"""Snapshot building: what the rules may read about one message, gathered from Redis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis

from csm_router.config import Settings
from csm_router.core.auth import Verdict, verify_reply_address, verify_sender
from csm_router.core.classify import RuleSet
from csm_router.core.commands import command_lines, find_command
from csm_router.core.decision import Onboarding, Snapshot, ThreadInfo, ThreadState, away_at
from csm_router.core.message import Inbound, MalformedMessageError, parse
from csm_router.core.quotes import html_to_text
from csm_router.core.threads import refs_in_subject, refs_in_text, same_customer, tags_in_text
from csm_router.state.keys import key, text, text_hash

MAX_LOOKUPS = 20  # ids, references or tags of one message looked up in Redis, each
MAX_CUSTOMER_MAILS = 50  # a thread's latest messages read for a command a CSM repeats
RECENT_THREADS = 20  # a sender's latest threads, where a signature tag may point


@dataclass(frozen=True)
class _Lookups:
    """What one message asks Redis about: the ids, references and tags it carries."""

    header_ids: list[str]
    subject_refs: list[int]
    body_refs: list[int]
    tags: list[str]


def _lookups(msg: Inbound) -> _Lookups:
    # Capped: hostile mail may list thousands of ids, references or tags.
    body_refs = list(dict.fromkeys(refs_in_text(msg.fresh_text) + refs_in_text(msg.text)))
    tags = list(dict.fromkeys(tags_in_text(msg.text) + tags_in_text(msg.html or "")))
    return _Lookups(
        header_ids=[*msg.in_reply_to, *reversed(msg.references)][:MAX_LOOKUPS],
        subject_refs=refs_in_subject(msg.subject)[:MAX_LOOKUPS],
        body_refs=body_refs[:MAX_LOOKUPS],
        tags=tags[:MAX_LOOKUPS],
    )


@dataclass(frozen=True)
class _Reads:
    """The answers of the snapshot's one round trip to Redis."""

    id_refs: list[int]  # threads the reply headers name
    tag_owners: list[str]  # CSMs whose signature tags the message carries
    away_raw: Any
    onboarding_raw: Any
    customer_refs: list[int]  # the sender's latest threads, newest first
    state: str  # the message's recorded state, "" when never recorded
    full: frozenset[str]  # CSMs at their open-thread limit


def _candidates(id_refs: list[int], asked: _Lookups) -> list[tuple[int, str]]:
    """Thread references the message may belong to, the strongest evidence first."""
    candidates: list[tuple[int, str]] = [(r, "reply headers") for r in id_refs]
    candidates += [(r, f"subject reference [CS-{r}]") for r in asked.subject_refs]
    candidates += [(r, f"reference CS-{r} in the text") for r in asked.body_refs]
    return candidates


def _match_thread(
    candidates: list[tuple[int, str]],
    threads: dict[int, ThreadInfo],
    sender: str,
    *,
    insider: bool,
) -> tuple[ThreadInfo | None, str, list[int]]:
    """The first known thread the sender may write in, how it matched, and those refused.

    A CSM or Support may write in any thread; a customer only in their own. A
    reference is short and guessable, so it proves nothing about who may join.
    """
    foreign: list[int] = []
    for ref, how in candidates:
        found = threads.get(ref)
        if found is None:
            continue
        if not insider and not same_customer(found.customer, sender):
            foreign.append(ref)
            continue
        return found, how, foreign
    return None, "", foreign


def _tag_thread(
    recent: list[int], threads: dict[int, ThreadInfo], tag_owner: str | None
) -> ThreadInfo | None:
    """The sender's latest open thread owned by the CSM whose signature tag they quote."""
    if tag_owner is None:  # no tag quoted: an unowned (held) thread is not the tag's
        return None
    return next(
        (
            threads[r]
            for r in recent
            if r in threads
            and threads[r].owner == tag_owner
            and threads[r].state is not ThreadState.CLOSED
        ),
        None,
    )


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
    ) -> Snapshot:
        """Gather what the rules may read about `msg` in one round trip (two for a reply).

        With `msgkey`, the same round trip also tells whether the message was recorded
        before (`Snapshot.recorded`).
        """
        if verdict is None:  # nothing is taken on trust: the sender is checked here instead
            verdict = verify_sender(msg, self.settings.trusted_authserv_id)
        asked = _lookups(msg)
        got = self._read_lookups(msg, asked, msgkey)
        candidates = _candidates(got.id_refs, asked)
        threads = self.threads_info([r for r, _ in candidates] + got.customer_refs)
        insider = self._insider(msg.sender)
        thread, matched_by, foreign = _match_thread(candidates, threads, msg.sender,
                                                    insider=insider)
        tag_owner = got.tag_owners[0] if got.tag_owners else None
        verdict = self._csm_verdict(msg, verdict, thread)
        schedule = self.settings.schedule
        off_shift = schedule.off_shift(now)
        support = self.settings.support_address
        return Snapshot(
            now=now,
            alias=self.settings.alias.address,
            pool=self.settings.pool,
            away=self.away_now(got.away_raw, now),
            away_until={a: float(u) for a, u in text_hash(got.away_raw).items() if u},
            thread=thread,
            matched_by=matched_by,
            tag_owner=tag_owner,
            tag_thread=_tag_thread(got.customer_refs, threads, tag_owner),
            onboarding=_onboarding(got.onboarding_raw),
            full=got.full,
            max_open=self.settings.max_open_per_csm,
            sender_verified=verdict.verified,
            verdict=verdict.why,
            customer_commands=self._repeatable_commands(msg, thread, insider=insider),
            support_address=support.address if support else None,
            support_rules=support_rules,
            foreign_refs=tuple(dict.fromkeys(foreign)) if thread is None else (),
            recorded=(got.state or None) if msgkey else None,
            off_shift=off_shift,
            back_at={a: schedule.back_at(a, now) for a in off_shift},
            due_if_started=schedule.deadline(
                now, self.settings.first_response_seconds(msg.account) / 60),
            premium=msg.account in self.settings.premium,
        )

    def _read_lookups(self, msg: Inbound, asked: _Lookups, msgkey: str | None) -> _Reads:
        """Everything the snapshot needs from Redis but the threads, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for mid in asked.header_ids:
            pipe.get(key("msgid", mid))
        for tag in asked.tags:
            pipe.get(key("sigtag", tag))
        pipe.hgetall(key("away"))
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
        away_raw, onboarding_raw, customer_refs = results[ids + tags:]
        return _Reads(
            id_refs=[int(r) for r in results[:ids] if r],
            tag_owners=[text(r) for r in results[ids : ids + tags] if r],
            away_raw=away_raw,
            onboarding_raw=onboarding_raw,
            customer_refs=[int(r) for r in customer_refs],
            state=state,
            full=frozenset(a for a, n in zip(counted, open_counts, strict=True)
                           if int(n) >= max_open),
        )

    def _insider(self, sender: str) -> bool:
        """Whether the sender is a CSM, Support or the alias itself."""
        support = self.settings.support_address
        return (self.settings.member(sender) is not None
                or sender == (support.address if support else None)
                or sender == self.settings.alias.address)

    def _csm_verdict(self, msg: Inbound, verdict: Verdict, thread: ThreadInfo | None) -> Verdict:
        """The verdict on the sender, decided by the reply address when a CSM writes."""
        secret = self.settings.reply_secret
        if not secret or self.settings.member(msg.sender) is None:
            return verdict
        # The reply address proves a CSM, and nothing else does: not even a header.
        return verify_reply_address(msg, self.settings.alias.address,
                                    secret.get_secret_value(),
                                    thread.ref if thread else None)

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
        support = self.settings.support_address
        for raw in raws:
            if raw is None:
                continue
            try:
                mail = parse(bytes(raw), max_bytes=self.settings.max_message_bytes)
            except MalformedMessageError:
                continue  # it was quarantined, so nobody was forwarded it
            if (self.settings.member(mail.sender) is not None
                    or mail.sender == (support.address if support else None)):
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
