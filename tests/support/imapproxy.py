"""A TCP proxy in front of the test Dovecot that behaves, on demand, as the big providers do.

It can swallow the `* N EXISTS` a server pushes during IDLE (Exchange Online in a long
IDLE), answer one chosen command with Office 365's throttling NO, cut the connection when
a chosen UID's body is fetched, and stop answering altogether (a connection dead without a
word). It records every command line that passed and counts connections.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import quote

from support.servers import HOST

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_PUSH = re.compile(rb"^\* \d+ (EXISTS|RECENT)\r\n$", re.IGNORECASE)
_BODY_FETCH = re.compile(rb"^\S+ UID FETCH (\S+) .*BODY\.PEEK\[\]", re.IGNORECASE)


@dataclass(frozen=True)
class Command:
    """One command line a client sent (without its tag's answer), when, on which connection."""

    at: float
    conn: int
    line: str

    @property
    def verb(self) -> str:
        """The command after its tag, e.g. "SELECT INBOX" -> "SELECT"; "UID FETCH" whole."""
        words = self.line.split()
        if not words or len(words) == 1:
            return self.line.upper()
        if words[1].upper() == "UID" and len(words) > 2:
            return f"UID {words[2].upper()}"
        return words[1].upper()


@dataclass
class _Conn:
    number: int
    client: socket.socket
    server: socket.socket
    idle: bool = False
    stalled: bool = False
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _uids_in(spec: bytes) -> Callable[[int], bool]:
    """Whether a UID is in an IMAP sequence set such as 3,5:7 or 9:*."""
    ranges = []
    for part in spec.decode().split(","):
        low, _, high = part.partition(":")
        top = 2**32 if high == "*" else int(high or low)
        ranges.append((min(int(low), top), max(int(low), top)))
    return lambda uid: any(low <= uid <= high for low, high in ranges)


class ImapProxy:
    """Listens on a free loopback port and relays to `upstream`, misbehaving when told."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.commands: list[Command] = []
        self.connections = 0  # accepted so far
        self.open = 0  # open now
        self.most_open = 0  # most open at once
        self.swallowed = 0
        self.cuts = 0
        self.swallow_pushes = False
        self._throttles: list[tuple[str, int]] = []
        self._cut_uids: set[int] = set()
        self._conns: list[_Conn] = []
        self._changed = threading.Condition()
        self._listener: socket.socket | None = None

    def __enter__(self) -> ImapProxy:
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._listener is not None:
            self._listener.close()
        for conn in list(self._conns):
            self._close(conn)

    def imap_url(self, user: str, password: str, folder: str = "INBOX") -> str:
        return (f"imap://{quote(user, safe='')}:{quote(password, safe='')}"
                f"@{HOST}:{self.port}/{quote(folder, safe='')}")

    def throttle_once(self, command: str, millis: int) -> None:
        """Answer the next command line containing `command` (e.g. "SELECT ") with
        Office 365's throttling NO instead of passing it on."""
        with self._changed:
            self._throttles.append((command.upper(), millis))

    def cut_on_body(self, uid: int) -> None:
        """Drop the connection whenever the body of `uid` is asked for."""
        with self._changed:
            self._cut_uids.add(uid)

    def stall(self) -> None:
        """Answer nothing more on the connections open now (new ones work)."""
        with self._changed:
            for conn in self._conns:
                conn.stalled = True

    def wait_for(self, check: Callable[[], object], what: str, timeout: float = 20) -> None:
        """Wait until `check()` holds, re-asked at each thing the proxy sees."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what}: not within {timeout:g}s")
                self._changed.wait(left)

    def sent(self, verb: str) -> list[Command]:
        """The commands of one verb ("SELECT", "UID FETCH", "NOOP"...), in order."""
        with self._changed:
            return [c for c in self.commands if c.verb == verb.upper()]

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream, timeout=10)
            server.settimeout(None)
            with self._changed:
                self.connections += 1
                self.open += 1
                self.most_open = max(self.most_open, self.open)
                conn = _Conn(self.connections, client, server)
                self._conns.append(conn)
                self._changed.notify_all()
            threading.Thread(target=self._from_client, args=(conn,), daemon=True).start()
            threading.Thread(target=self._from_server, args=(conn,), daemon=True).start()

    def _close(self, conn: _Conn) -> None:
        with conn.lock:
            if conn.closed:
                return
            conn.closed = True
        for sock in (conn.client, conn.server):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with self._changed:
            self.open -= 1
            self._conns.remove(conn)
            self._changed.notify_all()

    def _lines(self, sock: socket.socket) -> Iterator[tuple[bytes, bool]]:
        """Each line, and each literal's bytes (flagged True) as they come."""
        stream: BinaryIO = sock.makefile("rb")
        with suppress(OSError, ValueError):
            while line := stream.readline():
                yield line, False
                if found := _LITERAL.search(line):
                    yield stream.read(int(found[1])), True

    def _from_client(self, conn: _Conn) -> None:
        fresh = True  # the next line starts a command (not the rest of one after a literal)
        for data, literal in self._lines(conn.client):
            if fresh and not literal:
                action = self._command(conn, data)
                if action == "cut":
                    break
                if action == "answered":
                    continue
            if not literal:
                fresh = not _LITERAL.search(data)
            with suppress(OSError):
                conn.server.sendall(data)
        self._close(conn)

    def _command(self, conn: _Conn, line: bytes) -> str:
        """Record a command line and act on it: "pass" it on, "answered" here, or "cut"."""
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        with self._changed:
            self.commands.append(Command(time.monotonic(), conn.number, text))
            self._changed.notify_all()
            upper = text.upper()
            conn.idle = upper.endswith(" IDLE") or (conn.idle and upper != "DONE")
            throttle = next((t for t in self._throttles if t[0] in upper), None)
            if throttle:
                self._throttles.remove(throttle)
            body = _BODY_FETCH.match(line)
            if body is not None and any(map(_uids_in(body[1]), self._cut_uids)):
                self.cuts += 1
                return "cut"
        if throttle is None:
            return "pass"
        tag = text.split(" ", 1)[0]
        with suppress(OSError):
            conn.client.sendall(f"{tag} NO Request is throttled. Suggested Backoff Time: "
                                f"{throttle[1]} milliseconds\r\n".encode())
        return "answered"

    def _from_server(self, conn: _Conn) -> None:
        for data, literal in self._lines(conn.server):
            if conn.stalled:
                continue
            if (not literal and conn.idle and self.swallow_pushes
                    and _PUSH.match(data)):
                with self._changed:
                    self.swallowed += 1
                    self._changed.notify_all()
                continue
            with suppress(OSError):
                conn.client.sendall(data)
        self._close(conn)
