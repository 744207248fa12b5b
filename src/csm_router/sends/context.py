"""What every send runs with: the worker's runtime and heartbeat, and the mail it names."""

from __future__ import annotations

from csm_router.config import load_settings
from csm_router.core.message import Inbound, MalformedMessageError, parse
from csm_router.errors import PermanentError
from csm_router.mail.outbound import EarlierMessage
from csm_router.runtime import Runtime
from csm_router.state.outbox import Heartbeat

_runtime: Runtime | None = None
_heartbeat: Heartbeat | None = None


def configure(rt: Runtime | None, heartbeat: Heartbeat | None = None) -> None:
    """Set the runtime jobs use (the worker does this once at start-up; None forgets it)."""
    global _runtime, _heartbeat
    _runtime, _heartbeat = rt, heartbeat


def configured() -> bool:
    """Whether `csm-router worker` (or a test) set the runtime, as a plain `rq worker` does not."""
    return _runtime is not None


def runtime() -> Runtime:
    """The process's runtime, built from the environment if nobody configured one."""
    global _runtime
    if _runtime is None:  # a plain `rq worker` that did not go through `csm-router worker`
        _runtime = Runtime.from_settings(load_settings())
    return _runtime


def heartbeat() -> Heartbeat:
    """The worker's heartbeat, which holds the entries it takes."""
    global _heartbeat
    if _heartbeat is None:
        _heartbeat = Heartbeat(runtime().store)
        _heartbeat.beat()
    return _heartbeat


def load_message(rt: Runtime, msgkey: str, ref: int) -> Inbound:
    """Message `msgkey` of thread `ref`, parsed; gone or unreadable is a permanent failure."""
    return parse_raw(rt, rt.store.load_raw(msgkey), msgkey, ref)


def parse_raw(rt: Runtime, raw: bytes | None, msgkey: str, ref: int) -> Inbound:
    if raw is None:
        raise PermanentError(f"CS-{ref}: the raw message {msgkey} has expired from Redis")
    try:
        return parse(raw, max_bytes=rt.settings.max_message_bytes)
    except MalformedMessageError as exc:
        raise PermanentError(f"CS-{ref}: {exc}") from None



def earlier_messages(
    rt: Runtime, raws: list[bytes], max_chars: int = 2000
) -> list[EarlierMessage]:
    """Each raw message as a forward quotes it: its date, sender and fresh text, capped."""
    history = []
    for raw in raws:
        try:
            earlier = parse(raw, max_bytes=rt.settings.max_message_bytes)
        except MalformedMessageError:
            continue
        body = earlier.fresh_text.strip()
        if len(body) > max_chars:
            body = body[:max_chars] + " [...]"
        history.append(EarlierMessage(earlier.header("Date") or "", earlier.sender, body))
    return history


def thread_history(rt: Runtime, ref: int, current: str, limit: int = 5) -> list[EarlierMessage]:
    """The messages of thread `ref` before `current` (customer's and CSMs'), newest `limit`.

    Read as a forward reads them (Store.thread_history): `current` is a message of `ref`.
    An expired one is skipped: the events in `csm-router thread` still tell the story.
    """
    return earlier_messages(rt, rt.store.thread_history(current, limit))
