"""An in-process IMAP server (pymap, in memory) so `csm-router demo` needs no mail server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
from argparse import Namespace
from typing import Any, cast
from urllib.parse import quote

from imapclient import IMAPClient
from proxyprotocol.noop import ProxyProtocolNoop
from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.sock import SocketInfo
from pymap.backend.dict import Config, Login
from pymap.backend.dict.filter import FilterSet
from pymap.backend.dict.mailbox import MailboxData, MailboxSet
from pymap.concurrent import Subsystem
from pymap.imap import IMAPServer
from pymap.parsing.specials import ObjectId
from pymap.parsing.specials.flag import Flag, Wildcard
from pymap.user import Passwords, UserMetadata
from pysasl.hashing import BuiltinHash

from csm_router.demo.service import LOCALHOST, Service

__all__ = ["EmbeddedImap"]

_START_TIMEOUT = 10.0


class _DemoConfig(Config):
    """pymap dict-backend config with a fixed greeting."""

    @property
    def greeting(self) -> bytes:
        # pymap's default calls socket.getfqdn() per connection, which can block on slow DNS.
        return b"Server ready csm-router embedded IMAP"


class _KeywordMailbox(MailboxData):
    """Dict-backend mailbox that also keeps keywords such as ``$Routed``."""

    @property
    def permanent_flags(self) -> frozenset[Flag]:
        # Stock dict mailboxes allow only system flags, so STORE of a keyword is silently dropped.
        return super().permanent_flags | {Wildcard}


class _KeywordMailboxSet(MailboxSet):
    """Dict-backend mailbox set whose INBOX and created folders are :class:`_KeywordMailbox`."""

    def __init__(self) -> None:
        super().__init__()
        self._inbox = _KeywordMailbox(self._content_cache, self._thread_cache)

    async def add_mailbox(self, name: str) -> ObjectId:
        async with self._set_lock.write_lock():
            if name in self._set:
                raise ValueError(name)
            self._set[name] = mailbox = _KeywordMailbox(self._content_cache, self._thread_cache)
            return mailbox.mailbox_id


class _WholeResponseWriter:
    """StreamWriter proxy that holds pymap's piecemeal writes until ``drain()``.

    pymap writes one response in many small pieces; imapclient's ``idle_check()`` reads a
    non-blocking socket and aborts ("unterminated line") when a line arrives split.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write(bytes(self._pending))
            self._pending.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class EmbeddedImap(Service):
    """A pymap in-memory IMAP server for one user, run on its own event loop in a thread."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self.host = LOCALHOST
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on (only valid once started)."""
        if self._port is None:
            raise RuntimeError("EmbeddedImap is not started")
        return self._port

    @property
    def url(self) -> str:
        """An ``imap://user:password@host:port/INBOX`` URL with the credentials percent-encoded."""
        user = quote(self.user, safe="")
        password = quote(self.password, safe="")
        return f"imap://{user}:{password}@{self.host}:{self.port}/INBOX"

    def start(self) -> None:
        """Start the server thread and block until it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("EmbeddedImap is already started")
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._loop = asyncio.new_event_loop()
        # asyncio.Event binds to a loop lazily, so it can be made here and set from stop().
        self._stopping = asyncio.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(self._loop, self._stopping, ready),
            name="embedded-imap",
            daemon=True,
        )
        self._thread.start()
        try:
            self._port = ready.result(timeout=_START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close all client connections, stop the server and join its thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed after a failed start
            loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = self._loop = self._stopping = None
        self._port = None

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        """Deliver ``raw`` into ``folder`` with an IMAP APPEND over loopback."""
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=_START_TIMEOUT)
        # imaplib sends a literal in several small writes; with Nagle on, each APPEND stalls
        # ~40 ms on the peer's delayed ACK.
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.login(self.user, self.password)
            client.append(folder, raw)
        finally:
            client.logout()

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        stopping: asyncio.Event,
        ready: concurrent.futures.Future[int],
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(stopping, ready))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self, stopping: asyncio.Event, ready: concurrent.futures.Future[int]) -> None:
        config = _DemoConfig(
            Namespace(passlib_cfg=None, proxy_protocol=None, inherited_sockets=None),
            host=self.host,
            port=0,
            demo_data=False,
            demo_user=self.user,
            demo_password=self.password,
            # Plain LOGIN without STARTTLS; it is loopback-only.
            tls_enabled=False,
            reject_dnsbl=False,
            invalid_user_sleep=0.0,
            # pymap's default (500k PBKDF2 rounds in a thread pool) costs ~0.5 s per login.
            hash_context=BuiltinHash(rounds=1000),
            cpu_subsystem=Subsystem.for_asyncio(),
            proxy_protocol=ProxyProtocolNoop(),
        )
        # pymap reads its concurrency subsystem from a contextvar; connection tasks inherit it.
        config.apply_context()
        login = Login(config)
        # Seeding the per-user cache keeps pymap from building its stock mailbox set at login.
        config.set_cache[self.user] = (_KeywordMailboxSet(), FilterSet())
        hashed = await Passwords(config).hash_password(self.password)
        await login.demo_user_identity.set(UserMetadata(config, self.user, password=hashed))
        imap_server = IMAPServer(login, config)

        async def on_connect(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sock_info: SocketInfo
        ) -> None:
            # Duck-typed: pymap only writes, drains and closes (STARTTLS is off).
            whole = cast(asyncio.StreamWriter, _WholeResponseWriter(writer))
            await imap_server(reader, whole, sock_info)

        callback = ProxyProtocolReader(config.proxy_protocol).get_callback(on_connect)
        server = await asyncio.start_server(callback, host=self.host, port=0)
        ready.set_result(int(server.sockets[0].getsockname()[1]))
        try:
            await stopping.wait()
        finally:
            server.close()
            # Python 3.11's Server.close() leaves accepted connections running; end them here.
            await _cancel_other_tasks()
            await server.wait_closed()


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
