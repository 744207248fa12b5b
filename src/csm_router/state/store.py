"""Routing state in Redis: messages, threads, owners, the pool's turn; each change one script."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from redis import Redis

from csm_router.config import Settings, format_duration
from csm_router.core.decision import Decision
from csm_router.core.keeping import kept_raw
from csm_router.core.message import Inbound
from csm_router.core.threads import FIRST_REF, format_ref, is_own_message_id
from csm_router.state.keys import PREFIX, prefix
from csm_router.state.keys import key as key
from csm_router.state.keys import text as text
from csm_router.state.keys import text_hash as text_hash
from csm_router.state.replicas import ReplicaWait
from csm_router.state.snapshot import SnapshotReader

log = logging.getLogger(__name__)

# The outer bound on a raw message in Redis (lua/common.lua too): dropped sooner once
# delivered and out of the thread's newest messages, kept longer while its thread is held.
RAW_TTL_SECONDS = 14 * 86400
KEEP_SECONDS = 400 * 86400  # message records and Message-ID links (lua/common.lua too)
# Threads the sweep handles per kind and run (it runs every 30 s): one script never holds
# Redis for long, whatever the backlog.
SWEEP_BATCH = 200
# Scripts that move outbox entries and never pick, time or tally: they need none of the
# pool's routing context (hot on every send).
PLUMBING_SCRIPTS = frozenset({"outbox", "digest", "login", "forget"})


def new_epoch() -> str:
    """A marker no earlier life of this Redis can have had (durability.py watches it)."""
    return secrets.token_hex(8)


def message_key(msg: Inbound | None, raw: bytes) -> str:
    """A message's identity, so a copy delivered twice is handled once.

    The Message-ID plus a fingerprint of what the sender wrote: a second delivery of the
    same mail (with other Received/Delivered-To lines) is the same message, while a
    different mail that reuses a Message-ID, as some senders do, is not silently dropped.
    The text's whitespace counts as one space: the copy the MTA hands over by LMTP and the
    one a mail server stores may end in different line breaks. Unparsable mail is
    identified by its bytes.
    """
    if msg is None:
        return hashlib.sha256(raw).hexdigest()[:32]
    digest = hashlib.sha256()
    for part in (msg.message_id, msg.sender, msg.subject, msg.header("Date") or "",
                 " ".join(msg.text.split()), " ".join((msg.html or "").split())):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    for attachment in msg.attachments:
        digest.update(hashlib.sha256(attachment.data).digest())
    return digest.hexdigest()[:32]


# A new UIDVALIDITY starts the checkpoint afresh; within one, it only moves forward.
_CHECKPOINT = """
local v = redis.call('HGET', KEYS[1], 'uidvalidity')
local u = tonumber(redis.call('HGET', KEYS[1], 'last_uid') or '0')
if v ~= ARGV[1] then u = -1 end
if tonumber(ARGV[2]) > u then
  redis.call('HSET', KEYS[1], 'uidvalidity', ARGV[1], 'last_uid', ARGV[2])
end
return 1
"""


def in_namespace(source: str) -> str:
    """A script's source with its keys under the team in hand's prefix (`local P`)."""
    return source.replace(f"local P = '{PREFIX}'", f"local P = '{prefix()}'", 1)


@dataclass(frozen=True)
class Followup:
    """Work a recorded message calls for; enqueued with fixed job ids, so safe to repeat."""

    deliver: tuple[str, ...] = ()  # messages to forward to `owner`
    owner: str | None = None
    why: str = ""
    support: str | None = None  # message to hand to Support
    tell: bool = False  # the thread just moved to Support: tell the customer and the CSM
    overflow: int | None = None  # thread to tell the overflow address about
    notice: dict[str, str] | None = None  # a confirmation or error for the sender

    @classmethod
    def from_json(cls, data: Any) -> Followup:
        if not isinstance(data, dict):
            return cls()
        deliver = data.get("deliver")
        return cls(
            deliver=tuple(m for m in deliver if m) if isinstance(deliver, list) else (),
            owner=data.get("owner") or None,
            why=data.get("why") or "",
            support=data.get("support") or None,
            tell=bool(data.get("tell")),
            overflow=int(data["overflow"]) if data.get("overflow") else None,
            notice=data.get("notice") or None,
        )


@dataclass(frozen=True)
class Outcome:
    """What recording a decision did."""

    status: str  # "new", or "dup" when the message had been recorded before
    state: str  # decided | held | done | ignored | quarantined | delivered
    ref: int | None
    owner: str | None
    new_thread: bool = False
    followup: Followup = field(default_factory=Followup)
    owed: tuple[str, ...] = ()  # outbox entries this recording owed

    @classmethod
    def from_json(cls, out: dict[str, Any]) -> Outcome:
        return cls(
            status=out["status"],
            state=out["state"],
            ref=int(out["ref"]) if out.get("ref") not in (None, "") else None,
            owner=out.get("owner") or None,
            new_thread=bool(out.get("new_thread")),
            followup=Followup.from_json(out.get("followup")),
            owed=tuple(owed_ids(out.get("owed"))),
        )


@dataclass(frozen=True)
class DeliveryContext:
    """What a forward needs from Redis, read in one round trip (lua/delivery.lua)."""

    record: dict[str, str]
    sent: bool  # this forward went out before
    raw: bytes | None
    thread: dict[str, str]
    previous: list[str]  # Message-IDs of the forwards the owner got in this thread
    earlier: list[tuple[int, str, str, str]]  # the account's other threads
    history: list[bytes]  # earlier messages of the thread, for someone new to it


def _pairs(flat: Any) -> dict[str, str]:
    items = list(flat)
    return {text(k): text(v) for k, v in zip(items[::2], items[1::2], strict=True)}


@dataclass(frozen=True)
class Released:
    """A held thread handed out: its new owner and the messages owed to them."""

    ref: int
    owner: str
    messages: tuple[str, ...] = field(default_factory=tuple)


def owed_ids(value: Any) -> list[str]:
    """The `owed` list a script answers (an empty Lua table encodes as `{}`)."""
    return [str(v) for v in value] if isinstance(value, list) else []


class Store(SnapshotReader):
    """The facade over Redis that the router, the worker and the CLI share."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._scripts: dict[str, Any] = {}
        self._replica_wait = ReplicaWait(redis)

    def replicas_caught_up(self) -> bool:
        """Whether a replica has every write this process has finished so far, or Redis
        has no replica to wait for: what a worker checks before and after a send
        (replicas.py says why)."""
        return self._replica_wait.caught_up()

    # -- scripts --------------------------------------------------------------------

    def _script(self, name: str, parts: tuple[str, ...]) -> Any:
        """`parts` of state/lua/ as one script, registered once per team's namespace."""
        cached = prefix() + name
        if cached not in self._scripts:
            lua = resources.files("csm_router.state") / "lua"
            source = "\n".join((lua / part).read_text() for part in parts)
            self._scripts[cached] = self.redis.register_script(in_namespace(source))
        return self._scripts[cached]

    def run_script(self, name: str, payload: dict[str, Any], *extra: bytes) -> Any:
        """Run `lua/<name>.lua` (after `lua/common.lua` and `lua/owe.lua`) with `payload`
        (and `extra` binary arguments); answers its JSON."""
        script = self._script(name, ("common.lua", "owe.lua", f"{name}.lua"))
        settings = self.settings
        now = payload.setdefault("now", time.time())
        base: dict[str, Any] = {
            "has_lead": settings.overflow_address is not None,
            "retention": settings.retention_seconds,
            "wall": time.time(),
        }
        if name not in PLUMBING_SCRIPTS:
            base |= self._routing_context(now)
        return json.loads(script(args=[json.dumps(base | payload), *extra]))

    def _routing_context(self, now: float) -> dict[str, Any]:
        """What the scripts that route or time threads read besides their own payload."""
        settings = self.settings
        schedule = settings.schedule
        off_shift = schedule.off_shift(now)
        return {
            "exclude": "",
            "pool": [[m.address, m.weight] for m in settings.pool],
            "env_away": sorted(settings.away),
            "max_open": settings.max_open_per_csm,
            # A first-response clock started now ends then, in the pool's working time.
            "due_at": schedule.deadline(now, settings.first_response_minutes),
            "affinity_seconds": settings.affinity_days * 86400,
            "readers": settings.readers,
            "language_names": settings.language_names,
            "premium": sorted(settings.premium),
            "premium_pool": list(settings.premium_pool),
            "premium_due_at": (schedule.deadline(now, settings.premium_first_response_minutes)
                               if settings.premium_first_response_minutes else None),
            "off_shift": sorted(off_shift),
            "all_off_shift": len(off_shift) == len(settings.pool),
            # The day figures are counted in: the lead's (see Settings.report_zone).
            "day": datetime.fromtimestamp(now, settings.report_zone).date().isoformat(),
        }

    def ensure_sequence(self, floor: int = 0, *, lost: bool = False,
                        by: str = "") -> dict[str, Any]:
        """Start thread references at FIRST_REF, or raise them above `floor` (they never go
        down); write the marker `csm:epoch` if missing; remember when this deployment first
        ran (no digest covers a week before it). Where that marker is new and Redis lost
        its data (`lost`, or routed mail above FIRST_REF), the lead is owed a notice.
        Answers {"epoch": marker, "lost": whether this call recorded a loss, "owed": ...}.
        Only a router calls this: it alone knows a bound on the references handed out."""
        out: dict[str, Any] = self.run_script("sequence", {
            "first": FIRST_REF, "floor": floor, "lost": lost, "by": by,
            "epoch": new_epoch()})
        return out

    # -- deciding -------------------------------------------------------------------

    def record(
        self,
        msgkey: str,
        msg: Inbound,
        decision: Decision,
        now: float,
        *,
        uid: int = 0,
        why_deliver: str = "",
        notice: dict[str, str] | None = None,
        raw: bytes | None = None,
        language: str | None = None,
        looks_technical: str = "",
    ) -> Outcome:
        """Record the decision for `msg` atomically; a repeat answers status 'dup'.

        `raw`, the message's bytes, is kept (for the forward and a later reader of the
        thread) in the same script: whole up to keeping.RAW_KEEP_BYTES, else without its
        largest attachments (see README, retention).
        """
        command = decision.command
        payload = {
            "msgkey": msgkey,
            "now": now,
            "uid": uid,
            "action": decision.action.value,
            "ref": decision.ref,
            "target": decision.target,
            "rule": decision.rule,
            "why": decision.why,
            "message_id": msg.message_id,
            # Only a send of ours links an id of our form: inbound mail may merely claim it.
            "link_ids": ([] if is_own_message_id(msg.message_id, self.settings.alias.domain)
                         else [msg.message_id]),
            "customer": msg.sender,
            "customer_name": msg.sender_name,
            "account": msg.account,
            "subject": msg.subject,
            "command": {"name": command.name, "argument": command.argument} if command else None,
            "error": decision.error,
            "cover_for": decision.cover_for,
            "language": language,
            "looks_technical": looks_technical,
            "why_deliver": why_deliver or decision.why,
            "notice": notice,
            "raw_ttl": self.settings.kept(RAW_TTL_SECONDS) if raw is not None else 0,
        }
        extra = [kept_raw(raw, self.settings.alias.address)] if raw is not None else []
        return Outcome.from_json(self.run_script("record", payload, *extra))

    def record_quarantine(self, msgkey: str, message_id: str, reason: str, now: float,
                          rule: str = "quarantine") -> Outcome:
        """Record that a message went to quarantine, with the rule and the reason."""
        payload = {
            "msgkey": msgkey,
            "now": now,
            "action": "quarantine",
            "ref": None,
            "rule": rule,
            "why": reason,
            "message_id": message_id,
        }
        return Outcome.from_json(self.run_script("record", payload))

    def release_held(
        self, now: float | None = None, limit: int = 100
    ) -> tuple[list[Released], list[str]]:
        """Hand held threads to whoever can take them now; answers them and what was owed."""
        out = self.run_script("release", {"now": now or time.time(), "limit": limit})
        for csm, refs in (out.get("returned") or {}).items():
            if refs:
                log.info("%s is back: %s returned from their backup", csm,
                         ", ".join(format_ref(int(r)) for r in refs))
        released = out.get("released") if isinstance(out, dict) else None
        return [
            Released(int(r["ref"]), r["owner"], tuple(owed_ids(r.get("msgs"))))
            for r in (released if isinstance(released, list) else [])
        ], owed_ids(out.get("owed"))

    def sweep(self, now: float, batch: int = SWEEP_BATCH) -> dict[str, list[Any]]:
        """Remind, escalate or hold by the first-response clock and close quiet threads
        (lua/sweep.lua), owing the mail; at most `batch` threads of each kind per call."""
        close_after = self.settings.close_after
        out = self.run_script("sweep", {"now": now, "batch": batch,
                                        "remind_before": self.settings.remind_before_seconds,
                                        "close_after": close_after,
                                        "close_label": format_duration(close_after)})
        return {k: v if isinstance(v, list) else [] for k, v in out.items()}

    def reassign(self, ref: int, target: str, why: str) -> dict[str, Any]:
        """Give thread `ref` to `target`, owing the forwards; answers the previous owner."""
        return dict(self.run_script("reassign", {"ref": ref, "target": target, "why": why}))

    def undeliverable(
        self, kind: str, ref: int, failed: str, msgkey: str, error: str
    ) -> dict[str, Any]:
        """A forward to `failed` (or a Support handoff) failed for good: move the thread on."""
        return dict(self.run_script("undeliverable", {"kind": kind, "ref": ref, "failed": failed,
                                                "msgkey": msgkey, "error": error}))

    def delivery_context(self, msgkey: str, owner: str, message_id: str, *,
                         history: int = 5, earlier: int = 5) -> DeliveryContext:
        """Read what forwarding `msgkey` to `owner` as `message_id` needs, at once."""
        script = self._script("delivery", ("delivery.lua",))
        record, sent, raw, thread, previous, others, earlier_raws = script(
            args=[msgkey, owner, message_id, history, earlier])
        return DeliveryContext(
            record=_pairs(record), sent=bool(sent), raw=bytes(raw) if raw else None,
            thread=_pairs(thread), previous=[text(p) for p in previous],
            earlier=[(int(text(r)), text(s), text(o), text(t)) for r, s, o, t in others],
            history=[bytes(r) for r in earlier_raws],
        )

    def thread_history(self, msgkey: str, limit: int = 5) -> list[bytes]:
        """The raw messages of `msgkey`'s thread before it, newest `limit` (an expired one
        skipped): what a forward shows someone new to the thread (lua/delivery.lua)."""
        return self.delivery_context(msgkey, "", "", history=limit, earlier=0).history

    # -- messages in flight ----------------------------------------------------------

    def load_raw(self, msgkey: str) -> bytes | None:
        value: Any = self.redis.get(key("raw", msgkey))
        return bytes(value) if value is not None else None

    def message(self, msgkey: str) -> dict[str, str]:
        return text_hash(self.redis.hgetall(key("msg", msgkey)))

    def messages(self, msgkeys: list[str]) -> list[dict[str, str]]:
        """The records of `msgkeys`, in one round trip ({} for one gone)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for msgkey in msgkeys:
                pipe.hgetall(key("msg", msgkey))
            return [text_hash(raw) for raw in pipe.execute()] if msgkeys else []

    def thread(self, ref: int) -> dict[str, str]:
        return text_hash(self.redis.hgetall(key("thread", ref)))

    def events(self, ref: int) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(key("thread", ref, "events"), 0, -1)]

    def thread_messages(self, ref: int) -> list[str]:
        """Keys of the customer messages of a thread, oldest first."""
        return [text(m) for m in self.redis.lrange(key("thread", ref, "msgs"), 0, -1)]

    def link_message_id(self, message_id: str, ref: int) -> None:
        self.redis.set(key("msgid", message_id), ref, ex=self.settings.kept(KEEP_SECONDS))

    # -- mailbox checkpoint ---------------------------------------------------------

    def checkpoint(self, mailbox: str) -> tuple[int, int]:
        """(UIDVALIDITY, last handled UID) of a mailbox; (0, 0) before the first run."""
        validity, last = self.redis.hmget(key("mailbox", mailbox), "uidvalidity", "last_uid")
        return int(validity or 0), int(last or 0)

    def advance_checkpoint(self, mailbox: str, uidvalidity: int, uid: int) -> None:
        """Move the checkpoint forward only; several routers may call this in any order."""
        script = self._scripts.get("checkpoint")
        if script is None:
            script = self._scripts["checkpoint"] = self.redis.register_script(_CHECKPOINT)
        script(keys=[key("mailbox", mailbox)], args=[uidvalidity, uid])
