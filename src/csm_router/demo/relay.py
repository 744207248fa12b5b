"""A recording SMTP relay (aiosmtpd) on loopback: what the worker sends, kept to look at."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from csm_router.demo.service import LOCALHOST, Service

__all__ = ["Received", "RecordingSmtp"]


@dataclass(frozen=True)
class Received:
    """One message accepted by :class:`RecordingSmtp`."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float = field(default_factory=time.time, compare=False)  # when the relay took it
    connection: str = field(default="", compare=False)  # the client's address and port

    @property
    def message(self) -> EmailMessage:
        """The data parsed with the modern ``email.policy.default``."""
        return email.message_from_bytes(self.data, policy=email.policy.default)


class _Recorder:
    """aiosmtpd handler that records messages or answers DATA with queued failures."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.messages: list[Received] = []
        self.failures: list[str] = []
        self.holds = 0  # how many coming DATA commands hang, as a stuck relay's would
        self.accept_held = False  # whether a held DATA is accepted (250) once released
        self.refusals: dict[str, str] = {}  # recipient -> the reply to mail for them
        self.released = threading.Event()
        self.waiting = threading.Event()  # set while a DATA hangs

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.changed:
            held = self.holds > 0
            self.holds -= held
        if held:
            self.waiting.set()
            await asyncio.to_thread(self.released.wait)
            if not self.accept_held:
                return "451 4.3.0 held, not delivered"
        with self.changed:
            if self.failures and not held:
                return self.failures.pop(0)
            for rcpt in envelope.rcpt_tos:
                if rcpt.lower() in self.refusals:
                    return self.refusals[rcpt.lower()]
            self.messages.append(
                Received(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    # content is a str if decode_data is on; original_content is always bytes.
                    data=envelope.original_content or b"",
                    connection=str(session.peer),
                )
            )
            self.changed.notify_all()
        return "250 OK"


class _Controller(Controller):
    """aiosmtpd Controller that binds its port, or a free one chosen by the OS for 0."""

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self._bind_free_port()

    async def _bind_free_port(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=self.port, ssl=self.ssl_context,
            reuse_address=True,
        )
        # Controller.start() connects to self.port to check the server answers.
        self.port = server.sockets[0].getsockname()[1]
        return server


class RecordingSmtp(Service):
    """An SMTP relay on loopback that records what it is sent (no auth, no delivery)."""

    def __init__(self) -> None:
        self.host = LOCALHOST
        self._recorder = _Recorder()
        self._controller: _Controller | None = None

    @property
    def port(self) -> int:
        """The TCP port the relay listens on (only valid once started)."""
        if self._controller is None:
            raise RuntimeError("RecordingSmtp is not started")
        return int(self._controller.port)

    @property
    def url(self) -> str:
        """An ``smtp://host:port`` URL for the relay."""
        return f"smtp://{self.host}:{self.port}"

    @property
    def messages(self) -> list[Received]:
        """A snapshot of the messages recorded so far, oldest first."""
        with self._recorder.changed:
            return list(self._recorder.messages)

    def start(self, port: int = 0) -> None:
        """Start the relay thread (on `port`, e.g. again after `stop`) and block until it
        answers."""
        if self._controller is not None:
            raise RuntimeError("RecordingSmtp is already started")
        # A fixed server_hostname avoids socket.getfqdn(), which can block on slow DNS.
        controller = _Controller(
            self._recorder, hostname=self.host, port=port, server_hostname="localhost",
            **self._smtp_options(),
        )
        controller.start()
        self._controller = controller

    def _smtp_options(self) -> dict[str, Any]:
        """More keyword arguments of aiosmtpd's SMTP (a subclass's AUTH settings)."""
        return {}

    def stop(self) -> None:
        """Stop the relay and join its thread."""
        self._recorder.released.set()  # a held DATA must not keep the thread alive
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Block until at least ``count`` messages are recorded; return them all.

        Raises TimeoutError if that does not happen within ``timeout`` seconds.
        """
        recorder = self._recorder
        with recorder.changed:
            if not recorder.changed.wait_for(lambda: len(recorder.messages) >= count, timeout):
                got = [f"{m.mail_from} -> {', '.join(m.rcpt_tos)}" for m in recorder.messages]
                raise TimeoutError(
                    f"expected {count} SMTP message(s) within {timeout:g}s, got {len(got)}: {got}"
                )
            return list(recorder.messages)

    def fail_next(self, code: int, text: str, count: int = 1) -> None:
        """Answer the next ``count`` DATA commands with ``code text`` instead of accepting."""
        if not 400 <= code <= 599:
            raise ValueError(f"SMTP failure code must be 4xx or 5xx, not {code}")
        with self._recorder.changed:
            self._recorder.failures.extend([f"{code} {text}"] * count)

    def refuse(self, rcpt: str, code: int, text: str) -> None:
        """Answer DATA for mail to `rcpt` with ``code text`` from now on (a mailbox that
        refuses it), whatever else is queued."""
        with self._recorder.changed:
            self._recorder.refusals[rcpt.lower()] = f"{code} {text}"

    def hold(self, count: int = 1, *, accept: bool = False) -> None:
        """Make the next `count` DATA commands hang until `release()`, then fail with 451
        (or, with `accept`, be accepted: a relay that answers 250 late)."""
        with self._recorder.changed:
            self._recorder.holds = count
            self._recorder.accept_held = accept
        self._recorder.waiting.clear()
        self._recorder.released.clear()

    def wait_until_held(self, timeout: float = 20.0) -> None:
        """Block until a client's DATA is waiting on `hold()`."""
        if not self._recorder.waiting.wait(timeout):
            raise TimeoutError(f"no SMTP client reached DATA within {timeout}s")

    def release(self) -> None:
        """Let held DATA commands finish (with 451; nothing held is recorded)."""
        self._recorder.released.set()

    def clear(self) -> None:
        """Forget recorded messages, pending failures and refusals."""
        with self._recorder.changed:
            self._recorder.messages.clear()
            self._recorder.failures.clear()
            self._recorder.refusals.clear()
