"""Forgetting one person on request (`csm-router forget`): their threads, messages, sends and
figures go, and then every key and value in Redis that still names them.

First what the product knows is theirs: the threads they started (`csm:customer:<address>`,
and any thread that names them as its customer), each erased whole by `lua/forget.lua`,
then the outbox entries and dead letters of those threads. Then a scan of every key (ours
and RQ's): a key named after them goes; a record (a message, an outbox entry, an RQ job)
that mentions them goes whole; in an index or a tally only their entries go. Counts that
name nobody stay. Running it again finds nothing more: a forget cut short is finished so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from csm_router.state.keys import key, text
from csm_router.state.store import Store


def _records() -> tuple[str, ...]:
    """Records that mention the person go whole; elsewhere only the entries that do."""
    return (key("msg", ""), key("outbox", "e", ""), key("raw", ""), "rq:job:")
SCAN_BATCH = 500


@dataclass
class Forgotten:
    """What `forget` erased, and where copies are that it cannot reach."""

    threads: list[int] = field(default_factory=list)
    messages: int = 0  # message records and bytes of their threads
    sends: int = 0  # outbox entries and dead letters of their threads or naming them
    keys: int = 0  # other keys that named them (links, indexes, records)
    entries: int = 0  # their entries in shared indexes and tallies (per-person figures)
    forwarded_to: set[str] = field(default_factory=set)  # CSMs' own inboxes
    handed_to_support: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"threads": self.threads, "messages": self.messages, "sends": self.sends,
                "keys": self.keys, "entries": self.entries,
                "forwarded_to": sorted(self.forwarded_to),
                "handed_to_support": self.handed_to_support}


def handle(address: str) -> str:
    """A name for the request in logs, without the address: its hash's first 12 digits
    (whoever holds the address can match it, nobody can read it back)."""
    return hashlib.sha256(address.lower().encode()).hexdigest()[:12]


def forget(store: Store, address: str) -> Forgotten:
    """Erase what Redis holds about `address` (a customer's mail address)."""
    address = address.strip().lower()
    redis = store.redis
    done = Forgotten()
    indexed: list[Any] = redis.zrange(key("customer", address), 0, -1)
    refs = {int(r) for r in indexed}
    refs |= set(_threads_naming(redis, address))
    msgkeys: set[str] = set()
    message_ids: set[str] = set()
    for ref in sorted(refs):
        events = [json.loads(text(e)) for e in redis.lrange(key("thread", ref, "events"), 0, -1)]
        done.handed_to_support |= any(e.get("event") in ("to-support", "new-support")
                                      for e in events)
        forwards = [text(k) for k in redis.scan_iter(key("thread", ref, "forwards", "*"))]
        out = store.run_script("forget", {"ref": ref, "forwards": forwards})
        msgkeys.update(str(m) for m in out.get("msgs") or [])
        message_ids.update(str(m) for m in out.get("mids") or [])
        done.forwarded_to.update(str(c) for c in out.get("csms") or [])
        done.threads.append(ref)
    done.messages = len(msgkeys)
    done.sends = _forget_sends(redis, refs, msgkeys)
    done.entries += _forget_recent(redis, message_ids)
    keys, entries = _scrub(redis, address)
    done.keys, done.entries = keys, done.entries + entries
    return done


def _threads_naming(redis: Redis, address: str) -> Iterator[int]:
    """Threads whose customer is `address` though no index says so (an index lost)."""
    prefix = key("thread", "")
    for name in redis.scan_iter(key("thread", "*"), count=SCAN_BATCH):
        rest = text(name)[len(prefix):]
        if rest.isdigit() and text(redis.hget(name, "customer")).lower() == address:
            yield int(rest)


def _forget_sends(redis: Redis, refs: set[int], msgkeys: set[str]) -> int:
    """The outbox entries (pending, running or dead) of those threads' messages."""
    erased = 0
    prefix = key("outbox", "e", "")
    for name in redis.scan_iter(key("outbox", "e", "*"), count=SCAN_BATCH):
        try:
            args = json.loads(text(redis.hget(name, "args")) or "{}")
        except ValueError:
            continue
        if not isinstance(args, dict):
            continue
        if str(args.get("msgkey", "")) in msgkeys or _ref_of(args) in refs:
            _drop_entry(redis, text(name)[len(prefix):])
            erased += 1
    return erased


def _forget_recent(redis: Redis, message_ids: set[str]) -> int:
    """Their messages among the latest decisions (the status page's list)."""
    erased = 0
    latest: list[Any] = redis.lrange(key("recent"), 0, -1)
    for entry in latest:
        try:
            decided = json.loads(text(entry))
        except ValueError:
            continue
        if isinstance(decided, dict) and decided.get("message_id") in message_ids:
            erased += int(redis.lrem(key("recent"), 0, entry))
    return erased


def _ref_of(args: dict[str, object]) -> int | None:
    ref = args.get("ref")
    return int(ref) if isinstance(ref, int | str) and str(ref).isdigit() else None


def _drop_entry(redis: Redis, entry_id: str) -> None:
    with redis.pipeline() as pipe:
        for index in (key("outbox"), key("dead")):
            pipe.zrem(index, entry_id)
        pipe.hdel(key("outbox", "running"), entry_id)
        pipe.delete(key("outbox", "e", entry_id))
        pipe.execute()


def _scrub(redis: Redis, address: str) -> tuple[int, int]:
    """Every other trace: (keys erased, entries erased from shared keys)."""
    needle = address.encode()
    keys = entries = 0
    for pattern in (key("*"), "rq:*"):
        for raw_name in redis.scan_iter(pattern, count=SCAN_BATCH):
            name = text(raw_name)
            if needle in name.lower().encode():
                keys += redis.delete(name)
                continue
            found = _entries_naming(redis, name, needle)
            if not found:
                continue
            if name.startswith(_records()) or found is True:
                if name.startswith(key("outbox", "e", "")):
                    _drop_entry(redis, name[len(key("outbox", "e", "")):])
                    keys += 1
                else:
                    keys += redis.delete(name)
                continue
            entries += _remove(redis, name, found)
    return keys, entries


def _entries_naming(redis: Redis, name: str, needle: bytes) -> list[Any] | bool:
    """The entries of `name` that name the person (True: the key's one value does)."""
    kind = text(redis.type(name))
    if kind == "string":
        value: Any = redis.get(name) or b""
        return needle in bytes(value).lower()
    entries: list[Any]
    if kind == "hash":
        pairs: dict[Any, Any] = redis.hgetall(name)
        return [f for f, v in pairs.items() if needle in f.lower() or needle in v.lower()]
    if kind == "list":
        entries = redis.lrange(name, 0, -1)
    elif kind == "set":
        entries = list(redis.smembers(name))
    elif kind == "zset":
        members: Any = redis.zrange(name, 0, -1)
        entries = list(members)
    else:
        return False
    return [v for v in entries if needle in v.lower()]


def _remove(redis: Redis, name: str, found: list[Any]) -> int:
    kind = text(redis.type(name))
    if kind == "hash":
        return int(redis.hdel(name, *found))
    if kind == "list":
        return sum(int(redis.lrem(name, 0, v)) for v in found)
    if kind == "set":
        return int(redis.srem(name, *found))
    return int(redis.zrem(name, *found))


def traces(redis: Redis, address: str) -> list[str]:
    """Every key whose name or value still names `address` (for tests and `--check`)."""
    needle = address.strip().lower().encode()
    found = []
    for pattern in (key("*"), "rq:*"):
        for raw_name in redis.scan_iter(pattern, count=SCAN_BATCH):
            name = text(raw_name)
            if needle in name.lower().encode() or _entries_naming(redis, name, needle):
                found.append(name)
    return sorted(found)

