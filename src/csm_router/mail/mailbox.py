"""The alias mailbox over IMAP: wait (IDLE or poll), fetch, quarantine. Never deletes."""

from __future__ import annotations

import contextlib
import imaplib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from csm_router.config import ServerUrl
from csm_router.errors import LoginRefusedError, RefusedError, TransientError
from csm_router.mail.imapfaults import (
    NETWORK_ERRORS,
    FetchError,
    server_trouble,
    suggested_backoff,
    transient,
)
from csm_router.oauth.tokens import Tokens

log = logging.getLogger(__name__)

# Bodies are fetched at most this many, and this many bytes, per command; sizes for
# SIZE_BATCH messages per command (a UID list that keeps well under servers' line limits).
FETCH_BATCH = 50
FETCH_BATCH_BYTES = 8 * 1024 * 1024
SIZE_BATCH = 1000
# Exchange Online stops pushing during a long IDLE without a word, and a connection can
# die without either side hearing of it: IDLE is ended and the connection asked (NOOP)
# this often, and a wait lasts at most MAX_IDLE_SECONDS before the folder is searched.
IDLE_CHECK_SECONDS = 45.0
MAX_IDLE_SECONDS = 9 * 60
# How long DONE and that NOOP may each take before the connection is called dead.
CHECK_TIMEOUT_SECONDS = 10.0
QUARANTINED_FLAG = b"$CsmQuarantined"
# Set on every message once its decision is in Redis: if Redis ever loses its data, the
# next start routes only mail that was never routed.
ROUTED_FLAG = b"$CsmRouted"

def _drop(client: IMAPClient | None) -> None:
    """Log out, waiting on a server that may be gone no longer than a check would."""
    if client is None:
        return
    with contextlib.suppress(*NETWORK_ERRORS):
        client.socket().settimeout(CHECK_TIMEOUT_SECONDS)
        client.logout()
    with contextlib.suppress(*NETWORK_ERRORS):
        client.shutdown()  # a logout that failed half-way leaves the socket open


class Mailbox:
    """One IMAP connection to the alias folder, with our verbs and our error types."""

    def __init__(self, url: ServerUrl, quarantine_folder: str = "Quarantine", timeout: float = 60):
        self.url = url
        self.folder = url.path or "INBOX"
        self.quarantine_folder = quarantine_folder
        self.timeout = timeout
        self.uidvalidity = 0
        self.uidnext = 0
        self.exists = 0  # messages in the folder when it was selected
        self._client: IMAPClient | None = None
        self._idle = False

    @property
    def name(self) -> str:
        """Identifies the mailbox in Redis (checkpoint key) and logs; has no secret."""
        return f"{self.url.username}@{self.url.host}:{self.url.port}/{self.folder}"

    @property
    def client(self) -> IMAPClient:
        if self._client is None:
            raise TransientError("not connected")
        return self._client

    def connect(self) -> None:
        """Log in and select the folder; raises TransientError, or RefusedError for what
        only a corrected ROUTER_IMAP_URL fixes. A connection already open is closed first,
        and one that fails half-way is closed too: a process never holds two."""
        self.close()
        client: IMAPClient | None = None
        try:
            client = IMAPClient(
                self.url.host,
                port=self.url.port,
                ssl=self.url.tls,
                ssl_context=ssl.create_default_context(),
                timeout=self.timeout,
            )
            # imapclient writes some commands in pieces; without NODELAY each waits ~40 ms.
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self.url.tls:
                if b"STARTTLS" in client.capabilities():
                    client.starttls(ssl.create_default_context())
                elif self.url.starttls_required:
                    client.shutdown()
                    raise RefusedError(self.url.plaintext_refused("IMAP"))
            self._login(client)
            self._refuse_all_mail(client)
            selected = self._select(client)
            if not client.folder_exists(self.quarantine_folder):
                self._create_quarantine(client)
        except NETWORK_ERRORS as exc:
            _drop(client)
            raise transient(f"IMAP {self.url.host}:{self.url.port}", exc) from None
        except TransientError as exc:
            _drop(client)
            if exc.retry_after is None:  # a throttled login says how long to wait
                exc.retry_after = suggested_backoff(str(exc))
            raise
        except BaseException:
            _drop(client)
            raise
        self._client = client
        self.uidvalidity = int(selected[b"UIDVALIDITY"])
        self.uidnext = int(selected.get(b"UIDNEXT") or 0)
        self.exists = int(selected.get(b"EXISTS") or 0)
        log.info("connected to %s (UIDVALIDITY %s)", self.name, self.uidvalidity)

    def _login(self, client: IMAPClient) -> None:
        try:
            if self.url.token is not None:
                self._token_login(client, self.url.token)
            else:
                client.login(self.url.username, self.url.password)
        except LoginError as exc:
            if server_trouble(exc):
                raise TransientError(f"IMAP {self.url.host}:{self.url.port} cannot log in "
                                     f"now: {exc}") from None
            if self.url.token is not None:
                raise LoginRefusedError(f"the IMAP server refused the OAuth token for "
                                   f"{self.url.username}: check that the app may open this "
                                   "mailbox, and the user in ROUTER_IMAP_URL") from None
            raise LoginRefusedError(f"the IMAP server refused the login for {self.url.username}: "
                               "check the user and password in ROUTER_IMAP_URL") from None

    def _token_login(self, client: IMAPClient, tokens: Callable[[], str]) -> None:
        token = tokens()
        try:
            client.oauth2_login(self.url.username, token)
        except LoginError as exc:
            # Refused before it lapsed (revoked early; a permission granted since it was
            # issued): once more with a token asked for anew.
            if server_trouble(exc) or not isinstance(tokens, Tokens):
                raise
            tokens.reject(token)
            client.oauth2_login(self.url.username, tokens())

    def _refuse_all_mail(self, client: IMAPClient) -> None:
        """Gmail's All Mail (special-use \\All) shows every message once under each of its
        labels: routing from it would route each message several times."""
        for flags, _, name in client.list_folders(pattern=self.folder):
            if name == self.folder and b"\\all" in (bytes(f).lower() for f in flags):
                raise RefusedError(
                    f"ROUTER_IMAP_URL names folder {self.folder}, which holds all the mail "
                    f"of {self.url.username} (\\All), every message once per label: name "
                    "the folder (label) the alias's mail is delivered to")

    def _select(self, client: IMAPClient) -> dict[bytes, Any]:
        try:
            selected: dict[bytes, Any] = client.select_folder(self.folder)
        except imaplib.IMAP4.abort:
            raise
        except IMAPClientError as exc:
            # A NO: asked once more, by name, whether the folder is there at all; a server
            # in trouble (or a folder it cannot open just now) is waited out like a drop.
            if not server_trouble(exc) and not client.folder_exists(self.folder):
                raise RefusedError(f"ROUTER_IMAP_URL names folder {self.folder}, which does "
                                   f"not exist on {self.url.host}") from None
            raise
        return selected

    def _create_quarantine(self, client: IMAPClient) -> None:
        try:
            client.create_folder(self.quarantine_folder)
        except imaplib.IMAP4.abort:
            raise
        except IMAPClientError as exc:
            # Another router may have made it meanwhile; otherwise the name is refused.
            if server_trouble(exc):
                raise
            if client.folder_exists(self.quarantine_folder):
                return
            raise RefusedError(f"ROUTER_QUARANTINE_FOLDER {self.quarantine_folder} cannot be "
                               f"created on {self.url.host} ({exc})") from None

    def has_idle(self) -> bool:
        return bool(self.client.has_capability("IDLE"))

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._idle:
            self._idle = False
            with contextlib.suppress(*NETWORK_ERRORS):  # going away either way
                client.socket().settimeout(CHECK_TIMEOUT_SECONDS)
                client.idle_done()
        _drop(client)

    def new_uids(self, after: int) -> list[int]:
        """UIDs above `after`, ascending."""
        try:
            # Some servers only show messages that arrived since the last command after a
            # NOOP; it is one cheap round trip per poll.
            self.client.noop()
            # "n:*" always matches the last message even when its UID is below n (RFC 3501).
            uids = self.client.search(["UID", f"{after + 1}:*"])
        except NETWORK_ERRORS as exc:
            raise transient("IMAP search", exc) from None
        return sorted(uid for uid in uids if uid > after)

    def starting_uids(self) -> tuple[list[int], int]:
        """Where a first run (or a rescan) starts: the unread UIDs never routed or
        quarantined, and the top UID now.

        Mail already read in the alias before the router ever ran is history, not work;
        routing it would flood the pool with old threads.
        """
        try:
            self.client.noop()
            # ALL before UNSEEN: anything arriving in between is above `top` and is
            # picked up by the next poll rather than skipped.
            top = max(self.client.search(["ALL"]), default=0)
            unseen = self.client.search(["UNSEEN", "UNKEYWORD", ROUTED_FLAG.decode(),
                                         "UNKEYWORD", QUARANTINED_FLAG.decode()])
        except NETWORK_ERRORS as exc:
            raise transient("IMAP search", exc) from None
        return sorted(uid for uid in unseen if uid <= top), top

    def fetch(
        self, uids: list[int], max_bytes: int, *, skip: Collection[int] = (),
        batch: int = FETCH_BATCH,
    ) -> Iterator[tuple[int, bytes | None]]:
        """(uid, raw bytes) of each message in UID order, without setting \\Seen.

        Sizes are asked first, so a message over `max_bytes` (or in `skip`) is never
        downloaded: it comes as (uid, None). Bodies come in batches bounded by count and
        by total size, so a run of large messages never has to sit in memory at once. A
        message expunged meanwhile is left out. A failed body batch raises FetchError
        naming its UIDs, unless the server said it was in trouble (TransientError).
        """
        for start in range(0, len(uids), SIZE_BATCH):
            group = uids[start : start + SIZE_BATCH]
            sizes = {uid: item[b"RFC822.SIZE"]
                     for uid, item in self._fetch(group, b"RFC822.SIZE").items()
                     if b"RFC822.SIZE" in item}
            listed: list[int] = []
            wanted: list[int] = []
            total = 0
            for uid in group:
                size = sizes.get(uid)
                if size is None:
                    continue
                fits = size <= max_bytes and uid not in skip
                if fits and wanted and (len(wanted) == batch or total + size > FETCH_BATCH_BYTES):
                    yield from self._bodies(listed, wanted)
                    listed, wanted, total = [], [], 0
                listed.append(uid)
                if fits:
                    wanted.append(uid)
                    total += size
            yield from self._bodies(listed, wanted)

    def _bodies(self, listed: list[int], wanted: list[int]) -> Iterator[tuple[int, bytes | None]]:
        try:
            data = self._fetch(wanted, b"BODY.PEEK[]") if wanted else {}
        except TransientError as exc:
            if exc.retry_after is not None or server_trouble(exc):
                raise  # throttled, or the server's own trouble: no message's fault
            raise FetchError(wanted, str(exc).removeprefix("IMAP fetch: ")) from None
        for uid in listed:
            if uid not in wanted:
                yield uid, None
            elif (item := data.get(uid)) is not None and b"BODY[]" in item:
                yield uid, bytes(item[b"BODY[]"])

    def _fetch(self, uids: list[int], what: bytes) -> dict[int, dict[bytes, Any]]:
        try:
            data: dict[int, dict[bytes, Any]] = self.client.fetch(uids, [what])
        except NETWORK_ERRORS as exc:
            raise transient("IMAP fetch", exc) from None
        return data

    def mark_routed(self, uids: list[int]) -> None:
        """Flag messages whose decision is recorded (one command for the lot)."""
        if not uids:
            return
        try:
            self.client.add_flags(uids, [ROUTED_FLAG], silent=True)
        except NETWORK_ERRORS as exc:
            raise transient(f"IMAP flagging {len(uids)} routed message(s)", exc) from None

    def routed_before(self) -> bool:
        """Whether any message here was routed before (flagged), whatever Redis says."""
        try:
            return bool(self.client.search(["KEYWORD", ROUTED_FLAG.decode()]))
        except NETWORK_ERRORS as exc:
            raise transient("IMAP search", exc) from None

    def empty(self) -> bool:
        """Whether the folder held no message when selected (for `check`)."""
        return self.exists == 0

    def latest_header(self, name: str) -> str | None:
        """The topmost `name` header of the newest message here, if any (for `check`)."""
        try:
            uids = self.client.search(["ALL"])
            if not uids:
                return None
            wanted = f"BODY.PEEK[HEADER.FIELDS ({name.upper()})]"
            item = self.client.fetch([max(uids)], [wanted.encode()]).get(max(uids), {})
        except NETWORK_ERRORS as exc:
            raise transient("IMAP fetch", exc) from None
        raw = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"")
        unfolded = raw.decode("utf-8", "replace").replace("\r\n ", " ").replace("\r\n\t", " ")
        for line in unfolded.splitlines():
            if line.lower().startswith(name.lower() + ":"):
                return line.split(":", 1)[1].strip()
        return None

    def quarantine(self, uid: int, *, copy: bool = True) -> None:
        """Copy the message to the quarantine folder and flag the original (kept in place);
        without `copy`, only flag it, for a message the server cannot even copy."""
        try:
            if copy:
                self.client.copy([uid], self.quarantine_folder)
            self.client.add_flags([uid], [QUARANTINED_FLAG])
        except NETWORK_ERRORS as exc:
            raise transient(f"IMAP quarantine of UID {uid}", exc) from None

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Block until the server reports a change, `timeout` (at most MAX_IDLE_SECONDS)
        passes, or `stop` is set; then the caller searches the folder.

        Every IDLE_CHECK_SECONDS the IDLE is ended and the connection asked with NOOP, each
        answered within CHECK_TIMEOUT_SECONDS: a server that stopped pushing reports there
        what it holds, and one that stopped answering is a TransientError within a minute.
        """
        if not self.has_idle():
            stop.wait(timeout)
            return
        deadline = time.monotonic() + min(timeout, MAX_IDLE_SECONDS)
        try:
            while not stop.is_set() and (now := time.monotonic()) < deadline:
                pushed = self._idle_until(min(deadline, now + IDLE_CHECK_SECONDS), stop)
                if self._check() or pushed:
                    return
        except NETWORK_ERRORS as exc:
            # Nothing more is said on a connection that stopped answering: dropped at once.
            client, self._client, self._idle = self._client, None, False
            with contextlib.suppress(*NETWORK_ERRORS):
                if client is not None:
                    client.shutdown()
            raise transient("IMAP IDLE", exc) from None

    def _idle_until(self, until: float, stop: threading.Event) -> bool:
        """IDLE until `until` or `stop`; answers whether the server pushed anything."""
        client = self.client
        client.socket().settimeout(CHECK_TIMEOUT_SECONDS)  # a dead connection is found here too
        client.idle()
        self._idle = True
        # Short local waits so a stop request is honoured within a second; they cost no
        # network traffic.
        while not stop.is_set() and (left := until - time.monotonic()) > 0:
            step, started = min(left, 1.0), time.monotonic()
            responses: list[Any] = client.idle_check(timeout=step)
            if responses:
                log.debug("IDLE woke: %s", responses)
                return True
            if time.monotonic() - started < step / 2:
                return False  # readable, yet nothing came: closed? The check tells.
        return False

    def _check(self) -> bool:
        """End IDLE and NOOP, each within CHECK_TIMEOUT_SECONDS; answers whether the
        server reported new mail meanwhile (what a silent IDLE never pushed)."""
        client = self.client
        client.socket().settimeout(CHECK_TIMEOUT_SECONDS)
        said: list[Any] = []
        if self._idle:
            said += client.idle_done()[1]
            self._idle = False
        said += client.noop()[1]
        client.socket().settimeout(self.timeout)
        return any(isinstance(r, tuple) and b"EXISTS" in r for r in said)
