"""Which thread a message belongs to, and who may write in it.

The state layer reads what Redis knows (the threads a message's ids, references and tags
point to); the choices here are made on plain values, the same for every store.
"""

from __future__ import annotations

from dataclasses import dataclass

from csm_router.core.auth import Verdict, verify_reply_address
from csm_router.core.decision import ThreadInfo, ThreadState
from csm_router.core.message import Inbound
from csm_router.core.threads import refs_in_subject, refs_in_text, same_customer, tags_in_text

MAX_LOOKUPS = 20  # ids, references or tags of one message looked up in Redis, each


@dataclass(frozen=True)
class Parties:
    """Who writes to the alias besides customers, and what proves a CSM's reply."""

    alias: str
    pool: frozenset[str]  # the CSMs' addresses, lower-case
    support: str | None = None
    reply_secret: str | None = None  # ROUTER_REPLY_SECRET; None when unset or empty

    def is_csm(self, sender: str) -> bool:
        return sender.lower() in self.pool

    def is_staff(self, sender: str) -> bool:
        """A CSM or Support: their mail is never the customer's."""
        return self.is_csm(sender) or sender == self.support

    def insider(self, sender: str) -> bool:
        """Whether the sender is a CSM, Support or the alias itself."""
        return self.is_staff(sender) or sender == self.alias


@dataclass(frozen=True)
class Lookups:
    """What one message asks Redis about: the ids, references and tags it carries."""

    header_ids: list[str]
    subject_refs: list[int]
    body_refs: list[int]
    tags: list[str]


def lookups(msg: Inbound) -> Lookups:
    """The ids, references and tags `msg` carries, each list at most MAX_LOOKUPS long."""
    # Capped: hostile mail may list thousands of ids, references or tags.
    body_refs = list(dict.fromkeys(refs_in_text(msg.fresh_text) + refs_in_text(msg.text)))
    tags = list(dict.fromkeys(tags_in_text(msg.text) + tags_in_text(msg.html or "")))
    return Lookups(
        header_ids=[*msg.in_reply_to, *reversed(msg.references)][:MAX_LOOKUPS],
        subject_refs=refs_in_subject(msg.subject)[:MAX_LOOKUPS],
        body_refs=body_refs[:MAX_LOOKUPS],
        tags=tags[:MAX_LOOKUPS],
    )


def candidates(id_refs: list[int], asked: Lookups) -> list[tuple[int, str]]:
    """Thread references the message may belong to, the strongest evidence first."""
    found: list[tuple[int, str]] = [(r, "reply headers") for r in id_refs]
    found += [(r, f"subject reference [CS-{r}]") for r in asked.subject_refs]
    found += [(r, f"reference CS-{r} in the text") for r in asked.body_refs]
    return found


def match_thread(
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


def tag_thread(
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


def csm_verdict(
    msg: Inbound, verdict: Verdict, thread: ThreadInfo | None, parties: Parties
) -> Verdict:
    """The verdict on the sender, decided by the reply address when a CSM writes."""
    if not parties.reply_secret or not parties.is_csm(msg.sender):
        return verdict
    # The reply address proves a CSM, and nothing else does: not even a header.
    return verify_reply_address(msg, parties.alias, parties.reply_secret,
                                thread.ref if thread else None)
