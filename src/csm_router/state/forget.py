"""Forgetting one person on request (`csm-router forget`): their threads, messages, sends and
figures go, and then every key and value in Redis that still names them.

First what the product knows is theirs: the threads they started
(`csm:customer:<address>`, and any thread that names them as its customer), each erased
whole by `lua/forget.lua`, then the outbox entries and dead letters of those threads. Then
a scan of every key (ours and RQ's): a key named after them goes, and so does an RQ job
that mentions them (the outbox offers its entry again). Everyone else's records that
mention them (a message that copied them, its bytes, a send still owed to another
customer) keep working: the address is replaced there by `erased@forgotten.invalid`, in
the text and in a message's encoded parts alike. In an index or a tally only their entries
go. Counts that name nobody stay. Running it again finds nothing more: a forget cut short
is finished so.

Only the whole address counts: forgetting `ann@globex.com` leaves `joann@globex.com` be.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis as redis_errors
from redis import Redis

from csm_router.core.erasure import mentions, redact, redact_message
from csm_router.state.keys import key, text
from csm_router.state.store import Store

SCAN_BATCH = 500
WATCH_TRIES = 20  # rewrites of one key that a busy writer may cut short


@dataclass
class Forgotten:
    """What `forget` erased, and where copies are that it cannot reach."""

    threads: list[int] = field(default_factory=list)
    messages: int = 0  # message records and bytes of their threads
    sends: int = 0  # outbox entries and dead letters of their threads
    keys: int = 0  # other keys that named them (links, indexes, RQ's jobs)
    entries: int = 0  # their entries in shared indexes and tallies (per-person figures)
    redacted: int = 0  # values of others' records that mentioned them, now erased there
    forwarded_to: set[str] = field(default_factory=set)  # CSMs' own inboxes
    handed_to_support: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"threads": self.threads, "messages": self.messages, "sends": self.sends,
                "keys": self.keys, "entries": self.entries, "redacted": self.redacted,
                "forwarded_to": sorted(self.forwarded_to),
                "handed_to_support": self.handed_to_support}


def handle(address: str, secret: bytes) -> str:
    """A name for the request in logs, without the address: 12 digits of a hash keyed with
    the deployment's secret, so that nobody reading the logs can test guessed addresses
    against it, while an operator with the secret can find a request again."""
    digest = hmac.new(secret, b"forget\0" + address.strip().lower().encode(), hashlib.sha256)
    return digest.hexdigest()[:12]


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
    _scrub(redis, address, done)
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


def _scrub(redis: Redis, address: str, done: Forgotten) -> None:
    """Every other trace, counted into `done`."""
    pattern = mentions(address)
    for glob in (key("*"), "rq:*"):
        for raw_name in redis.scan_iter(glob, count=SCAN_BATCH):
            name = text(raw_name)
            if pattern.search(name.encode()):
                done.keys += redis.delete(name)
            elif _changes(redis, name, pattern):  # read once; only these are watched
                if name.startswith("rq:job:"):
                    done.keys += redis.delete(name)
                else:
                    _rewrite(redis, name, pattern, done)


def _rewrite(redis: Redis, name: str, pattern: re.Pattern[bytes], done: Forgotten) -> None:
    """Take the person out of key `name`: in a record of someone else's, the address is
    replaced; from an index or a tally (a set), their entries go. Watched: a write that
    lands meanwhile (a new event on a list) is kept, and the key is read again."""
    for _ in range(WATCH_TRIES):
        with redis.pipeline() as pipeline:
            pipe: Any = pipeline  # redis-py leaves watch untyped
            try:
                pipe.watch(name)
                changes = _changes(pipe, name, pattern)
                if not changes:
                    return
                pipe.multi()
                for command, args, _ in changes:
                    getattr(pipe, command)(*args)
                pipe.execute()
            except redis_errors.WatchError:
                continue
        for _, _, counter in changes:
            setattr(done, counter, getattr(done, counter) + 1)
        return
    raise redis_errors.WatchError(f"{name} kept changing while a person was being forgotten: "
                                  "run forget again")


# A write into a watched key: the pipeline's command, its arguments, and the figure of
# Forgotten it counts in.
Change = tuple[str, tuple[Any, ...], str]


def _changes(pipe: Any, name: str, pattern: re.Pattern[bytes]) -> list[Change]:
    """What to write into key `name` to take the person out; none if nothing names them.
    Read through `pipe`: a client, or a pipeline under WATCH."""
    def rewrite(value: bytes) -> bytes:
        if name.startswith(key("raw", "")):  # a message: its encoded parts too
            return redact_message(value, pattern)
        return redact(value, pattern)

    kind = text(pipe.type(name))
    if kind == "string":
        value = bytes(pipe.get(name) or b"")
        new = rewrite(value)
        # KEEPTTL: a message's bytes keep the time they are kept for.
        return [] if new == value else [("execute_command", ("SET", name, new, "KEEPTTL"),
                                         "redacted")]
    if kind == "hash":
        pairs: dict[bytes, bytes] = pipe.hgetall(name)
        return [("hdel", (name, f), "entries") if pattern.search(f)
                else ("hset", (name, f, rewrite(v)), "redacted")
                for f, v in pairs.items() if pattern.search(f) or pattern.search(v)]
    if kind == "list":
        items: list[bytes] = pipe.lrange(name, 0, -1)
        return [("lset", (name, i, rewrite(v)), "redacted")
                for i, v in enumerate(items) if pattern.search(v)]
    if kind == "set":
        return [("srem", (name, m), "entries") for m in pipe.smembers(name)
                if pattern.search(m)]
    if kind == "zset":
        return [("zrem", (name, m), "entries") for m in pipe.zrange(name, 0, -1)
                if pattern.search(m)]
    if kind == "stream":
        return [("xdel", (name, i), "entries") for i, fields in pipe.xrange(name)
                if any(pattern.search(x) for pair in fields.items() for x in pair)]
    return []

