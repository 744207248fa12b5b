"""Real redis-server, Dovecot (IMAP + LMTP) and a recording SMTP relay for integration tests.

Every server listens on a free loopback port and keeps its files in a directory handed in by
the caller (a pytest tmp dir).
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis
from imapclient import IMAPClient

from csm_router.demo.service import Service

if TYPE_CHECKING:
    from support.oauth import TokenServer

HOST = "127.0.0.1"
TEST_COMMAND_HINT = (
    "run the test suite with the test command from the README, which installs "
    "redis-server, dovecot-imapd and dovecot-lmtpd"
)
START_TIMEOUT = 15.0


class MissingServerBinary(RuntimeError):
    """A server program the integration tests need is not installed."""


class ServerStartError(RuntimeError):
    """A server process exited or never became ready."""


def free_ports(count: int) -> list[int]:
    """Return `count` distinct loopback ports that were free a moment ago."""
    with ExitStack() as stack:
        # Hold every socket open until all are bound so the kernel cannot hand out one port twice.
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def find_binary(name: str, fallback: str) -> str:
    """Locate a server program on PATH or at its Debian path, or raise MissingServerBinary."""
    found = shutil.which(name) or (fallback if os.access(fallback, os.X_OK) else None)
    if found is None:
        raise MissingServerBinary(f"{name} is not installed (looked on PATH and at {fallback}); "
                                  f"{TEST_COMMAND_HINT}")
    return found


def grant_traverse(path: Path, up_to: Path) -> None:
    """Add o+x to `path` and its ancestors up to and including `up_to`.

    Dovecot's mail processes run as the unprivileged `dovecot` user and must reach the temp dir,
    while pytest creates its tmp dirs with mode 0700. Only directories we own are touched.
    """
    up_to = up_to.resolve()
    current = path.resolve()
    for directory in [current, *current.parents]:
        info = directory.stat()
        if info.st_uid == os.getuid() and not info.st_mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
        if directory == up_to:
            break


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"
    return "\n".join(text.splitlines()[-lines:]) or f"<{path} is empty>"


def _await_answer(proc: subprocess.Popen[bytes], ask: Callable[[], object],
                  stop: Callable[[], None], what: str, log: Path) -> None:
    """Wait until `ask()` answers (a server is up), or fail with the end of its log."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise ServerStartError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if ask():
                return
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            stop()
            raise ServerStartError(f"{what} did not answer:\n{_tail(log)}")
        time.sleep(0.05)


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll `check` until it answers something true, or raise TimeoutError naming `what`.

    For a state a server only shows when asked (a replica's link, Sentinel's view of the
    master), where there is nothing to subscribe to.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)


class RedisServer(Service):
    """A throw-away redis-server; with `persistent`, an append-only file synced on every
    write, as production runs it (deploy/redis.conf.example), so it can be restarted or
    killed and come back with its data; with `replica_of`, a replica of that server."""

    def __init__(self, root: Path, binary: str | None = None, persistent: bool = False,
                 replica_of: RedisServer | None = None) -> None:
        self.root = root
        self.binary = binary
        self.persistent = persistent
        self.replica_of = replica_of
        self.host = HOST
        self.port = 0
        self.log_path = root / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def restart(self, down_seconds: float = 0.0, *, kill: bool = False) -> None:
        """Stop (gracefully, or with SIGKILL) and start again on the same port."""
        assert self._proc is not None
        if kill:
            self._proc.kill()
            self._proc.wait(10)
        else:
            _stop_process(self._proc)
        self._proc = None
        time.sleep(down_seconds)  # the outage itself is what is being tested
        self.start(port=self.port)

    def kill(self) -> None:
        """SIGKILL the server, as a lost host or the OOM killer would; it stays down."""
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait(10)
        self._proc = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the server for the block: connected, but answering nothing (a replica
        that lags, a host that hangs)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._proc.send_signal(signal.SIGCONT)

    def replication(self) -> dict[str, Any]:
        """What `INFO replication` says: role, master_link_status, connected_slaves, ..."""
        with self.client(socket_timeout=5) as client:
            return dict(client.info("replication"))

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a new client for database 0; kwargs go to redis.Redis.from_url."""
        return redis.Redis.from_url(self.url, **kwargs)

    def start(self, port: int = 0) -> None:
        binary = self.binary or find_binary("redis-server", "/usr/bin/redis-server")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_ports(1)[0]
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                       else ["--appendonly", "no"])
        replication = ([] if self.replica_of is None else
                       ["--replicaof", self.replica_of.host, str(self.replica_of.port)])
        args = [binary, "--port", str(self.port), "--bind", self.host, "--save", "",
                *persistence, *replication, "--dir", str(self.root), "--daemonize", "no"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        with self.client(socket_connect_timeout=1, socket_timeout=1) as client:
            _await_answer(self._proc, client.ping, self.stop, "redis-server", self.log_path)

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None



@contextmanager
def master_and_replica(
    root: Path, *, persistent: bool = False
) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A redis-server and a replica of it, yielded once the replica is in sync."""
    with RedisServer(root / "master", persistent=persistent) as master, \
            RedisServer(root / "replica", persistent=persistent, replica_of=master) as replica:
        wait_until(lambda: replica.replication()["master_link_status"] == "up",
                   "the replica in sync with the master")
        yield master, replica

class SentinelServer(Service):
    """A Redis Sentinel (redis-server in sentinel mode) watching `master` as `name`.

    `quorum` sentinels must agree that the master is down before a failover starts; with
    several sentinels, each needs a `root` of its own (Sentinel rewrites its config file).
    """

    def __init__(self, root: Path, master: RedisServer, name: str = "mymaster",
                 quorum: int = 1) -> None:
        self.root, self.master, self.name, self.quorum = root, master, name, quorum
        self.host = HOST
        self.port = 0
        self.log_path = root / "sentinel.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return sentinel_url([self], self.name)

    def client(self) -> redis.Redis:
        """Return a new client of this sentinel (SENTINEL commands)."""
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)

    def master_address(self) -> tuple[str, int]:
        """Where this sentinel says the master is now."""
        with self.client() as client:
            host, port = client.sentinel_get_master_addr_by_name(self.name)
        return (host.decode() if isinstance(host, bytes) else str(host)), int(port)

    def sees(self, sentinels: int, replicas: int) -> bool:
        """Whether this sentinel knows `sentinels` other sentinels and `replicas` replicas
        that are up: what it needs before it can agree on a failover and carry it out."""
        with self.client() as client:
            others = client.sentinel_sentinels(self.name)
            found = client.sentinel_slaves(self.name)
        healthy = [r for r in found
                   if not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])]
        return len(others) >= sentinels and len(healthy) >= replicas

    def start(self) -> None:
        binary = find_binary("redis-server", "/usr/bin/redis-server")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.port,) = free_ports(1)
        conf = self.root / "sentinel.conf"  # Sentinel rewrites it: it must be its own
        conf.write_text(
            f"port {self.port}\nbind {self.host}\ndir {self.root}\n"
            f"sentinel monitor {self.name} {self.master.host} {self.master.port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 5000\n")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=log,
                                          stderr=subprocess.STDOUT)
        with redis.Redis(host=self.host, port=self.port, socket_timeout=1) as client:
            _await_answer(self._proc, lambda: client.execute_command("SENTINEL", "MASTERS"),
                          self.stop, "redis sentinel", self.log_path)

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None


def sentinel_url(sentinels: list[SentinelServer], name: str = "mymaster", db: int = 0) -> str:
    """ROUTER_REDIS_URL for a set of sentinels watching `name`."""
    hosts = ",".join(f"{s.host}:{s.port}" for s in sentinels)
    return f"redis+sentinel://{hosts}/{name}/{db}"


DOVECOT_CONF = """\
# Generated by tests/support/servers.py: throw-away IMAP + LMTP server for integration tests.
protocols = imap lmtp
listen = {host}
base_dir = {root}/run
state_dir = {root}/state
instance_name = csm-router-test
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log

# Running as root with mail owned by the `dovecot` system user (uid < 500).
first_valid_uid = 1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_username_format = %Lu
# success+b-token@acme.com (a forward's VERP return address) is delivered to success@acme.com.
recipient_delimiter = +
mail_location = maildir:{root}/mail/%u
mail_plugins =
# IDLE normally wakes through inotify; this bounds the fallback polling.
mailbox_idle_check_interval = 1 secs

# Every user exists and shares one password, so each test can take a fresh mailbox.
passdb {{
  driver = static
  args = password={password}{password_mechanisms}
}}{oauth_passdb}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u allow_all_users=yes
}}

service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    port = {lmtp_port}
  }}
}}
"""


OAUTH_PASSDB = """
# Bearer tokens (SASL XOAUTH2, OAUTHBEARER) are checked by the token server's introspection.
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {args}
}}"""

# No tokeninfo_url: the doc asks for it empty when introspection alone answers.
OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
"""


class DovecotServer(Service):
    """Dovecot in the foreground serving IMAP and LMTP for any user with one shared password;
    with `oauth` (a TokenServer), also for the users its live tokens were issued to."""

    def __init__(
        self, root: Path, password: str = "secret", binary: str | None = None, extra: str = "",
        oauth: TokenServer | None = None,
    ) -> None:
        self.root = root
        self.oauth = oauth
        self.extra = extra  # more dovecot.conf lines, e.g. a different imap_capability
        self.password = password
        self.binary = binary
        self.host = HOST
        self.imap_port = 0
        self.lmtp_port = 0
        self.config_path = root / "dovecot.conf"
        self.log_path = root / "dovecot.log"
        self.stderr_path = root / "dovecot.stderr"
        self._proc: subprocess.Popen[bytes] | None = None

    def imap_url(self, user: str, folder: str = "INBOX") -> str:
        """URL with the user and password percent-encoded, e.g. imap://u%40d:pw@host:port/INBOX."""
        return (f"imap://{quote(user, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.imap_port}/{quote(folder, safe='')}")

    def deliver(self, rcpt: str, raw: bytes, mail_from: str = "customer@example.com") -> None:
        """Deliver `raw` to `rcpt` over LMTP like an MTA; raises smtplib errors if refused."""
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=10) as lmtp:
            refused = lmtp.sendmail(mail_from, [rcpt], raw)
        if refused:  # sendmail only raises when all recipients fail; keep this explicit.
            raise smtplib.SMTPRecipientsRefused(refused)

    def imap_client(self, user: str) -> IMAPClient:
        """Return a logged-in IMAPClient; the caller logs out."""
        client = IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=10)
        client.login(user, self.password)
        return client

    def kick(self, user: str) -> None:
        """Drop every IMAP session of `user`, as a server restart or idle timeout would."""
        doveadm = find_binary("doveadm", "/usr/bin/doveadm")
        subprocess.run([doveadm, "-c", str(self.config_path), "kick", user],
                       check=True, capture_output=True, timeout=30)

    def write_config(self) -> None:
        oauth = {"mechanisms": "plain login", "password_mechanisms": "", "oauth_passdb": ""}
        if self.oauth is not None:
            oauth_conf = self.root / "dovecot-oauth2.conf.ext"
            oauth_conf.write_text(OAUTH2_CONF.format(url=self.oauth.introspection_url))
            oauth = {"mechanisms": "plain login xoauth2 oauthbearer",
                     # The password must not be tried against a token.
                     "password_mechanisms": "\n  mechanisms = plain login",
                     "oauth_passdb": OAUTH_PASSDB.format(args=oauth_conf)}
        self.config_path.write_text(DOVECOT_CONF.format(
            host=self.host, root=self.root, password=self.password,
            imap_port=self.imap_port, lmtp_port=self.lmtp_port, **oauth,
        ) + self.extra)

    def start(self) -> None:
        binary = self.binary or find_binary("dovecot", "/usr/sbin/dovecot")
        mail_dir = self.root / "mail"
        mail_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(mail_dir, "dovecot", "dovecot")
        self.imap_port, self.lmtp_port = free_ports(2)
        self.write_config()
        with self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen([binary, "-F", "-c", str(self.config_path)],
                                          stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            self._wait_for_greeting(self.imap_port, b"* OK")
            self._wait_for_greeting(self.lmtp_port, b"220 ")
        except ServerStartError:
            self.stop()
            raise

    def _wait_for_greeting(self, port: int, greeting: bytes) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerStartError(f"dovecot exited with {self._proc.returncode}\n"
                                       f"{self._diagnostics()}")
            try:
                with socket.create_connection((self.host, port), timeout=2) as sock:
                    line = sock.makefile("rb").readline()
                if line.startswith(greeting):
                    return
                last_error = ServerStartError(f"unexpected greeting {line!r}")
            except OSError as exc:
                last_error = exc
            time.sleep(0.05)
        raise ServerStartError(f"dovecot did not greet with {greeting!r} on port {port} "
                               f"({last_error})\n{self._diagnostics()}")

    def _diagnostics(self) -> str:
        return (f"--- tail of {self.log_path} ---\n{_tail(self.log_path)}\n"
                f"--- tail of {self.stderr_path} ---\n{_tail(self.stderr_path)}")

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None


@dataclass
class Mailbox:
    """One user's mailbox on the Dovecot test server."""

    server: DovecotServer
    user: str
    _clients: list[IMAPClient] = field(default_factory=list, repr=False)

    @property
    def imap_url(self) -> str:
        return self.server.imap_url(self.user)

    @property
    def password(self) -> str:
        return self.server.password

    def deliver(self, raw: bytes, mail_from: str = "customer@example.com") -> None:
        """Deliver `raw` to this mailbox over LMTP."""
        self.server.deliver(self.user, raw, mail_from=mail_from)

    def imap_client(self) -> IMAPClient:
        """Return a logged-in IMAPClient that is logged out by close()."""
        client = self.server.imap_client(self.user)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Log out the clients made by imap_client()."""
        for client in self._clients:
            # The test may already have logged out, or the connection died; nothing to clean up.
            with suppress(Exception):
                client.logout()
        self._clients.clear()


def fetch_with_limit(imap_url: str, max_bytes: int) -> tuple[list[int], list[Any]]:
    """The product's Mailbox on `imap_url`: every UID, and what `fetch` gives for them."""
    from csm_router.config import parse_server_url
    from csm_router.mail.mailbox import Mailbox as ProductMailbox

    box = ProductMailbox(parse_server_url(imap_url, ("imap", "imaps")))
    box.connect()
    try:
        uids = box.new_uids(0)
        return uids, list(box.fetch(uids, max_bytes=max_bytes))
    finally:
        box.close()
