"""Snapshot building: what the rules may read about one message, gathered from Redis."""

from __future__ import annotations

from typing import Any

from redis import Redis

from csm_router.auth import Verdict, verify_reply_address, verify_sender
from csm_router.classify import RuleSet
from csm_router.commands import command_lines, find_command
from csm_router.config import Settings
from csm_router.decision import Onboarding, Snapshot, ThreadInfo, ThreadState
from csm_router.message import Inbound, MalformedMessageError, parse
from csm_router.quotes import html_to_text
from csm_router.rediskeys import key, text, text_hash
from csm_router.threads import refs_in_subject, refs_in_text, same_customer, tags_in_text

MAX_LOOKUPS = 20  # ids, references or tags of one message looked up in Redis, each
MAX_CUSTOMER_MAILS = 50  # a thread's latest messages read for a command a CSM repeats


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
        support = self.settings.support_address
        # Capped: hostile mail may list thousands of ids, references or tags.
        header_ids = [*msg.in_reply_to, *reversed(msg.references)][:MAX_LOOKUPS]
        subject_refs = refs_in_subject(msg.subject)[:MAX_LOOKUPS]
        body_refs = list(dict.fromkeys(refs_in_text(msg.fresh_text) + refs_in_text(msg.text)))
        body_refs = body_refs[:MAX_LOOKUPS]
        tags = list(dict.fromkeys(tags_in_text(msg.text) + tags_in_text(msg.html or "")))
        tags = tags[:MAX_LOOKUPS]
        pipe = self.redis.pipeline(transaction=False)
        for mid in header_ids:
            pipe.get(key("msgid", mid))
        for tag in tags:
            pipe.get(key("sigtag", tag))
        pipe.hgetall(key("away"))
        pipe.hgetall(key("onboarding", msg.account))
        pipe.zrevrange(key("customer", msg.sender), 0, 19)
        pipe.hget(key("msg", msgkey or "-"), "state")
        # Capacity holds for every decision: the rules see who is full, named or not.
        max_open = self.settings.max_open_per_csm
        counted = [m.address for m in self.settings.pool] if max_open else []
        for address in counted:
            pipe.scard(key("open", address))
        results = pipe.execute()
        open_counts = results[len(results) - len(counted):]
        del results[len(results) - len(counted):]
        full = frozenset(a for a, n in zip(counted, open_counts, strict=True)
                         if int(n) >= max_open)
        state = text(results.pop())
        recorded = state or None if msgkey else None
        id_refs = [int(r) for r in results[: len(header_ids)] if r]
        tag_owners = [text(r) for r in results[len(header_ids) : len(header_ids) + len(tags)] if r]
        away_raw, onboarding_raw, customer_refs = results[len(header_ids) + len(tags) :]

        candidates: list[tuple[int, str]] = [(r, "reply headers") for r in id_refs]
        candidates += [(r, f"subject reference [CS-{r}]") for r in subject_refs]
        candidates += [(r, f"reference CS-{r} in the text") for r in body_refs]
        recent = [int(r) for r in customer_refs]
        threads = self.threads_info([r for r, _ in candidates] + recent)

        # A CSM or Support may write in any thread; a customer only in their own. A
        # reference is short and guessable, so it proves nothing about who may join.
        insider = (self.settings.member(msg.sender) is not None
                   or msg.sender == (support.address if support else None)
                   or msg.sender == self.settings.alias.address)
        thread, matched_by, foreign = None, "", []
        for ref, how in candidates:
            found = threads.get(ref)
            if found is None:
                continue
            if not insider and not same_customer(found.customer, msg.sender):
                foreign.append(ref)
                continue
            thread, matched_by = found, how
            break
        tag_owner = tag_owners[0] if tag_owners else None
        tag_thread = next(
            (
                threads[r]
                for r in recent
                if r in threads
                and threads[r].owner == tag_owner
                and threads[r].state is not ThreadState.CLOSED
            ),
            None,
        )
        secret = self.settings.reply_secret
        if secret and self.settings.member(msg.sender) is not None:
            # The reply address proves a CSM, and nothing else does: not even a header.
            verdict = verify_reply_address(msg, self.settings.alias.address,
                                           secret.get_secret_value(),
                                           thread.ref if thread else None)
        customer_commands: frozenset[str] = frozenset()
        if insider and thread is not None and find_command(msg.fresh_text) is not None:
            customer_commands = self.customer_commands(thread.ref)
        schedule = self.settings.schedule
        off_shift = schedule.off_shift(now)
        onboarding = None
        if onboarding_raw:
            ob = text_hash(onboarding_raw)
            onboarding = Onboarding(ob["owner"], float(ob["since"]), int(ob["days"]))
        return Snapshot(
            now=now,
            alias=self.settings.alias.address,
            pool=self.settings.pool,
            away=self.away_now(away_raw, now),
            away_until={a: float(u) for a, u in text_hash(away_raw).items() if u},
            thread=thread,
            matched_by=matched_by,
            tag_owner=tag_owner,
            tag_thread=tag_thread,
            onboarding=onboarding,
            full=full,
            max_open=max_open,
            sender_verified=verdict.verified,
            verdict=verdict.why,
            customer_commands=customer_commands,
            support_address=support.address if support else None,
            support_rules=support_rules,
            foreign_refs=tuple(dict.fromkeys(foreign)) if thread is None else (),
            recorded=recorded,
            off_shift=off_shift,
            back_at={a: schedule.back_at(a, now) for a in off_shift},
            due_if_started=schedule.deadline(
                now, self.settings.first_response_seconds(msg.account) / 60),
            premium=msg.account in self.settings.premium,
        )

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
        marked = text_hash(away)
        return self.settings.away | frozenset(
            a for a, until in marked.items() if not until or float(until) > now
        )
