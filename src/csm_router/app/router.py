"""The `run` loop: watch -> parse -> decide -> record (owing the sends) -> offer, crash-safe."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable

import redis

from csm_router.app.fetchtries import FetchTries
from csm_router.app.routing import MAX_TRIES, count_try, route
from csm_router.core.message import MalformedMessageError, header_safe, parse
from csm_router.core.threads import FIRST_REF, format_ref
from csm_router.errors import (
    Backoff,
    LoginRefusedError,
    PermanentError,
    TransientError,
    server_fault,
)
from csm_router.mail.imapfaults import FetchError
from csm_router.mail.mailbox import FETCH_BATCH, Mailbox
from csm_router.oauth.tokens import TokenRefusedError
from csm_router.runtime import Runtime, release_held
from csm_router.state.durability import EpochWatch, warn_persistence
from csm_router.state.logins import record_grant, record_refusal
from csm_router.state.outbox import OFFER_BATCH
from csm_router.state.processes import ProcessBeat, forget_stale
from csm_router.state.store import key, message_key, owed_ids

log = logging.getLogger(__name__)

_MESSAGE_ID_LINE = re.compile(rb"^message-id:[ \t]*([^\r\n]{1,200})", re.IGNORECASE | re.MULTILINE)



def _delay(exc: Exception, backoff: Backoff) -> float:
    """How long to wait out a server's trouble: the backoff's next step, or longer if a
    throttling server asked for it (said either way)."""
    delay = backoff.next()
    asked = getattr(exc, "retry_after", None)
    if asked and asked > delay:
        log.warning("%s (throttled: the server asks us to wait %.1fs; retrying in %.1fs)",
                    str(exc).rstrip("."), asked, asked)
        return float(asked)
    log.warning("%s (retrying in %.0fs)", str(exc).rstrip("."), delay)
    return delay


class Router:
    """Routes every new message of one mailbox; several routers may share a mailbox."""

    def __init__(
        self,
        rt: Runtime,
        mailbox: Mailbox,
        *,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.rt = rt
        self.mailbox = mailbox
        self.clock = clock
        self.stop = stop or threading.Event()
        self._connected = False
        self._logged_in_once = False
        self._refused = False  # the mail server refused our token: the grant that ends it
        self._owed: list[str] = []
        self._settled: list[str] = []  # tries counters of messages routed this pass
        self.fetch_tries = FetchTries(rt.redis, mailbox.name)
        self._one_by_one = False  # a batch's fetch failed: find which message makes it fail
        self.beat = ProcessBeat(rt.redis, "router", mailbox.name, rt.settings.poll_seconds)
        self.epoch = EpochWatch(rt.redis, f"router {mailbox.name}")

    def run(self, *, exit_when_idle: bool = False) -> None:
        """Watch until stopped; with `exit_when_idle`, return once nothing new is left."""
        backoff = Backoff()
        with contextlib.suppress(redis.RedisError):
            forget_stale(self.rt.redis)
        warn_persistence(self.rt.redis, "router")
        if self.rt.languages is not None:
            self.rt.languages.load()  # seconds now, rather than on the first customer's mail
        while not self.stop.is_set():
            try:
                if self._connected and not self.epoch.intact():
                    # Redis lost its data under us: UIDNEXT as the server says it now
                    # bounds every reference handed out, so select the folder afresh.
                    self._disconnect()
                if not self._connected:
                    self.mailbox.connect()
                    self._connected = self._logged_in_once = True
                    self.beat.imap = "connected"
                    self._accepted()
                    self._ensure_sequence()
                    mode = "IDLE" if self.mailbox.has_idle() else "polling (no IDLE)"
                    log.info("watching %s with %s, refreshing every %ss", self.mailbox.name,
                             mode, self.rt.settings.poll_seconds)
                handled = self.poll_once()
                release_held(self.rt)
                self.beat.beat(self.clock())
                self.rt.keep_tokens_fresh()
                backoff.reset()
                if handled:
                    continue
                if exit_when_idle:
                    break
                self.mailbox.wait(self.rt.settings.poll_seconds, self.stop)
            except redis.AuthenticationError:
                raise  # a wrong password does not heal by waiting: say so and stop
            except LoginRefusedError as exc:
                if not self._may_wait_out(exc):
                    raise  # never logged in: a setting to correct, said at once
                delay = backoff.next()
                log.error("%s (trying again in %.0fs)", str(exc).rstrip("."), delay)
                self._disconnect(imap="refused")
                self.stop.wait(delay)
            except (TransientError, redis.RedisError) as exc:
                # A server's trouble (Redis down, out of memory or read-only after a
                # failover; IMAP dropped) is waited out, never blamed on the mail.
                self._disconnect()
                self.stop.wait(_delay(exc, backoff))
        self._disconnect()
        with contextlib.suppress(redis.RedisError):
            self.beat.forget()  # stopped on purpose: not a router gone silent

    def _may_wait_out(self, exc: LoginRefusedError) -> bool:
        """An OAuth login refused after this router once logged in is an administrator's
        to mend (a new secret, consent given again), and it routes again the moment they
        do: the refusal is recorded for /healthz and the lead, and waited out."""
        if self.mailbox.url.token is None or not self._logged_in_once:
            return False
        if not isinstance(exc, TokenRefusedError):  # the provider's refusals record themselves
            self._refused = True
            by = f"router {self.mailbox.name}"
            with contextlib.suppress(redis.RedisError):
                self.rt.outbox.offer(record_refusal(self.rt.store, str(exc), by))
        return True

    def _accepted(self) -> None:
        """The mail server took the token again: the refusal it made is over."""
        if self._refused:
            self._refused = False
            with contextlib.suppress(redis.RedisError):
                record_grant(self.rt.store)

    def _disconnect(self, imap: str = "disconnected") -> None:
        self.mailbox.close()
        self._connected = False
        self.beat.imap = imap
        with contextlib.suppress(redis.RedisError):
            self.beat.beat(self.clock())  # /healthz says why, at once

    def _ensure_sequence(self) -> None:
        """Start thread references, and never let them repeat if Redis lost its data.

        Every thread starts with a message of its own, so no reference ever exceeded
        FIRST_REF - 1 + the number of UIDs handed out: after a loss, numbering goes on from
        there instead of handing out references customers already hold. Called with the
        folder freshly selected (UIDNEXT current), at each connect and after a loss.
        """
        if self.epoch.intact() and self.rt.store.redis.exists(key("seq")):
            return
        floor = 0
        if self.epoch.lost or self.mailbox.routed_before():
            floor = FIRST_REF - 1 + max(self.mailbox.uidnext - 1, 0)
        out = self.rt.store.ensure_sequence(floor, lost=self.epoch.lost, by=self.mailbox.name)
        self.epoch.accept(str(out["epoch"]))
        if out.get("lost"):
            log.warning("%s has routed mail but Redis has no state (was its data lost?): "
                        "routing only mail never routed; references go on from %s",
                        self.mailbox.name, format_ref(int(out["next"])))
        if owed := owed_ids(out.get("owed")):
            self.rt.outbox.offer(owed)

    def poll_once(self) -> int:
        """Handle every message above the checkpoint; answers how many there were."""
        store, mailbox = self.rt.store, self.mailbox
        validity, last = store.checkpoint(mailbox.name)
        top = 0
        if validity == mailbox.uidvalidity:
            uids = mailbox.new_uids(last)
        else:
            # First run, or the folder was recreated and its UIDs mean nothing now:
            # start with what is unread. Message-IDs still identify what was routed
            # before, so a rescan routes nothing twice.
            uids, top = mailbox.starting_uids()
            log.info("%s: %s (UIDVALIDITY %s): %d unread message(s) to route, read mail "
                     "left alone", mailbox.name, "rescan" if validity else "first run",
                     mailbox.uidvalidity, len(uids))
        done, finished, handled = 0, False, []
        failing = self.fetch_tries.failing(mailbox.uidvalidity) if uids else {}
        unfetchable = {uid for uid, (tries, _) in failing.items() if tries >= MAX_TRIES}
        try:
            limit = self.rt.settings.max_message_bytes
            for uid, raw in mailbox.fetch(uids, max_bytes=limit, skip=unfetchable,
                                          batch=1 if self._one_by_one else FETCH_BATCH):
                if self.stop.is_set():
                    break
                if uid in unfetchable:
                    self._unfetchable(uid, *failing[uid])
                elif raw is None:
                    # Never downloaded, so there are no bytes to key it by: its UID does.
                    self._quarantine(uid, b"", "", f"message is over ROUTER_MAX_MESSAGE_BYTES "
                                     f"({limit} bytes): not fetched",
                                     f"uid-{mailbox.uidvalidity}-{uid}", rule="too-large")
                else:
                    if uid in failing:
                        self.fetch_tries.forget(mailbox.uidvalidity, uid)
                    self.handle(uid, raw)
                    handled.append(uid)
                done = uid
            else:
                finished = True
                self._one_by_one = False
        except FetchError as exc:
            self._fetch_failed(exc)
            raise
        finally:
            self._offer()
            # Recorded in Redis, so marked on the server: a start with Redis emptied routes
            # only what was never routed.
            mailbox.mark_routed(handled)
            # Once per pass, not per message: after a crash the few messages handled since
            # are fetched again and recognised as already recorded.
            if validity == mailbox.uidvalidity:
                store.advance_checkpoint(mailbox.name, validity, done)
            elif finished:
                # Only a complete first run (or rescan) may start the checkpoint: a partial
                # one is redone, or read mail above `done` would be routed as new.
                store.advance_checkpoint(mailbox.name, mailbox.uidvalidity, max(done, top))
        return len(uids)

    def _fetch_failed(self, exc: FetchError) -> None:
        """A batch failed: its messages are fetched one by one from now on, until a pass
        gets through. One message failed: one more failure counted against it."""
        if len(exc.uids) > 1:
            self._one_by_one = True
            log.info("fetching messages one at a time to find which one fails")
            return
        (uid,) = exc.uids
        tries = self.fetch_tries.failed(self.mailbox.uidvalidity, uid, str(exc))
        log.warning("UID %s: fetching it failed (try %d of %d)", uid, tries, MAX_TRIES)

    def _unfetchable(self, uid: int, tries: int, error: str) -> str:
        """Quarantine a message whose fetch failed MAX_TRIES times, never downloaded. If
        even copying it fails, the next pass only flags it: mail after it flows on."""
        validity = self.mailbox.uidvalidity
        copy = tries <= MAX_TRIES
        reason = f"fetching it failed {min(tries, MAX_TRIES)} times: {error}"
        if not copy:
            reason += "; copying it failed too: flagged and left in place"
        try:
            outcome = self._quarantine(uid, b"", "", reason, f"uid-{validity}-{uid}",
                                       rule="failed-fetch", copy=copy)
        except TransientError:
            if copy:
                self.fetch_tries.failed(validity, uid, error)
            raise
        self.fetch_tries.forget(validity, uid)
        return outcome

    def handle(self, uid: int, raw: bytes) -> str:
        """Route one message; answers its outcome. Never raises for bad mail.

        Each try is counted in Redis before it starts, so a message that makes routing
        fail (a script refusing its data, a bug) or even kills the router is quarantined
        at its third try, across restarts too, and the next message goes on. A server's
        fault is waited out and costs the message no try.
        """
        tries_key = key("tries", message_key(None, raw))
        tries, last = count_try(self.rt.redis, tries_key)
        if tries > MAX_TRIES:
            # Its last tries never came back: the router died handling it, perhaps parsing
            # it, so it is not parsed again: kept by its bytes.
            return self._give_up(uid, raw, tries - 1,
                                 last or "the router stopped while routing it",
                                 parsed=False)
        try:
            outcome = self._handle(uid, raw)
            # Routed: its count goes with the pass's offer (one round trip for the lot), so
            # Redis holds counters only for messages that are failing.
            self._settled.append(tries_key)
            return outcome
        except (TransientError, PermanentError, redis.RedisError) as exc:
            if not isinstance(exc, redis.RedisError) or server_fault(exc):
                with contextlib.suppress(redis.RedisError):
                    self.rt.redis.hincrby(tries_key, "n", -1)  # not the message's fault
                raise
            error = f"Redis refused its data ({str(exc)[:300]})"
        except Exception as exc:
            log.exception("UID %s: unexpected error", uid)
            error = f"internal error: {type(exc).__name__}"
        if tries >= MAX_TRIES:
            return self._give_up(uid, raw, tries, error)
        self.rt.redis.hset(tries_key, "why", error)
        message_id = _message_id_line(raw) or "(no id)"  # not parsed again
        log.warning("UID %s %s: %s (try %d of %d)", uid, message_id, error, tries, MAX_TRIES,
                    extra={"message_id": message_id})
        # Retried after a backoff, like a server's trouble, until its tries are used up.
        raise TransientError(f"UID {uid} {message_id}: {error} (try {tries} of {MAX_TRIES})")

    def _give_up(self, uid: int, raw: bytes, tries: int, error: str, *,
                 parsed: bool = True) -> str:
        """Quarantine a message routing failed on `tries` times (unless it was recorded)."""
        msg = None
        if parsed:
            with contextlib.suppress(MalformedMessageError):
                msg = parse(raw, max_bytes=self.rt.settings.max_message_bytes)
        reason = f"routing it failed {tries} times: {error}"
        message_id = msg.message_id if msg else _message_id_line(raw)
        try:
            return self._quarantine(uid, raw, message_id, reason, message_key(msg, raw),
                                    rule="failed-routing")
        except redis.RedisError as exc:
            if server_fault(exc):
                raise
            # Even the record of its quarantine was refused its data: keep it by its bytes.
            return self._quarantine(uid, raw, "", reason, message_key(None, raw),
                                    rule="failed-routing")

    def _handle(self, uid: int, raw: bytes) -> str:
        routed = route(self.rt, raw, self.clock(), uid=uid, via=f"UID {uid}")
        if routed.state == "quarantine":
            return self._quarantine(uid, raw, routed.message_id, routed.why, routed.msgkey,
                                    rule=routed.rule)
        # Owed already, in the same script as the decision; offering only hurries it, a
        # few at a time in a burst (one job for several), at once when mail trickles in.
        self._owed += routed.owed
        if len(self._owed) >= OFFER_BATCH:
            self._offer()
        return routed.state

    def _offer(self) -> None:
        owed, self._owed = self._owed, []
        settled, self._settled = self._settled, []
        if settled:
            self.rt.redis.delete(*settled)
        self.rt.outbox.offer(owed)
        self.beat.keep_alive(self.clock())  # alive through a long pass, too

    def _quarantine(
        self, uid: int, raw: bytes, message_id: str, reason: str, msgkey: str | None = None,
        *, rule: str = "quarantine", copy: bool = True,
    ) -> str:
        msgkey = msgkey or message_key(None, raw)
        store = self.rt.store
        seen = store.message(msgkey)
        if seen and (seen.get("state") != "quarantined" or seen.get("copied")):
            return "duplicate"
        # Recorded first, copied second, marked copied last: a server failing in between
        # makes the next pass copy it once more at worst, never again and again.
        if not seen:
            store.record_quarantine(msgkey, message_id, reason, self.clock(), rule)
        if copy:
            self.mailbox.quarantine(uid)
        else:
            self.mailbox.quarantine(uid, copy=False)
        store.redis.hset(key("msg", msgkey), "copied", 1)
        log.warning("UID %s %s quarantined to %s: %s", uid, message_id or "(no id)",
                    self.mailbox.quarantine_folder if copy else "its flag", reason,
                    extra={"message_id": message_id, "rule": rule})
        return "quarantined"


def _message_id_line(raw: bytes) -> str:
    """The Message-ID header as written, for a message not to be parsed again."""
    found = _MESSAGE_ID_LINE.search(raw[: 64 * 1024])
    return header_safe(found[1].decode("utf-8", "replace")).strip() if found else ""
