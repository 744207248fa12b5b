"""Passwords only travel encrypted: STARTTLS is required off this machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis

from csm_router import config
from csm_router.config import ServerUrl, is_loopback, parse_server_url
from csm_router.config import values as configvalues
from csm_router.config.values import parse_sentinel_url
from csm_router.demo.relay import RecordingSmtp
from csm_router.errors import PermanentError
from csm_router.mail.outbound import Mailer
from csm_router.state.connect import (
    cleartext_passwords,
    redis_cleartext_password,
    redis_client,
)
from support.servers import free_ports


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("LOCALHOST.", True), ("127.0.0.1", True), ("127.8.9.10", True),
     ("::1", True), ("::ffff:127.0.0.1", True), ("imap.acme.com", False),
     ("192.0.2.2", False), ("10.0.0.1", False), ("::", False), ("localhost.acme.com", False),
     ("128.0.0.1", False)],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("url", "allow", "required"),
    [
        ("imap://u:p@imap.acme.com/INBOX", False, True),
        ("imap://u:p@imap.acme.com/INBOX", True, False),
        ("imaps://u:p@imap.acme.com/INBOX", False, False),  # implicit TLS: nothing to upgrade
        ("imap://u:p@127.0.0.1:1143/INBOX", False, False),
        ("smtp://u:p@smtp.acme.com:587", False, True),
        ("smtp://u:p@smtp.acme.com:587", True, False),
        ("smtps://u:p@smtp.acme.com", False, False),
        ("smtp://[::1]:2525", False, False),
    ],
)
def test_starttls_is_required_for_plain_urls_off_this_machine(
    url: str, allow: bool, required: bool
) -> None:
    parsed = parse_server_url(url, ("imap", "imaps", "smtp", "smtps"))
    assert replace(parsed, allow_plaintext=allow).starttls_required is required


def test_the_refusal_names_the_server_and_the_ways_out() -> None:
    url = parse_server_url("imap://u:secret@imap.acme.com/INBOX", ("imap",))
    assert url.plaintext_refused("IMAP") == (
        "IMAP server imap.acme.com:143 offers no STARTTLS: refusing to send the password in "
        "the clear (set ROUTER_ALLOW_PLAINTEXT=true to allow, or use imaps://)"
    )


@pytest.fixture
def relay() -> Iterator[RecordingSmtp]:
    with RecordingSmtp() as smtp:  # on 127.0.0.1, without STARTTLS
        yield smtp


def mail() -> EmailMessage:
    out = EmailMessage()
    out["From"], out["To"], out["Subject"] = "success@acme.com", "alice@acme.com", "Hi"
    out.set_content("Hello\n")
    return out


def send_one(url: ServerUrl) -> None:
    mailer = Mailer(url)
    try:
        mailer.send(mail(), ["alice@acme.com"], sender="success@acme.com")
    finally:
        mailer.close()


def test_a_relay_on_this_machine_may_go_without_starttls(relay: RecordingSmtp) -> None:
    url = parse_server_url(relay.url, ("smtp",))
    send_one(url)
    assert [m.rcpt_tos for m in relay.messages] == [["alice@acme.com"]]


def test_a_remote_relay_without_starttls_is_refused_before_anything_is_sent(
    relay: RecordingSmtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(configvalues, "is_loopback", lambda host: False)  # as if it were remote
    url = parse_server_url(relay.url, ("smtp",))
    with pytest.raises(PermanentError, match=r"SMTP server 127\.0\.0\.1:\d+ offers no STARTTLS"):
        send_one(url)
    assert relay.messages == []

    allowed = replace(url, allow_plaintext=True)
    send_one(allowed)
    assert len(relay.messages) == 1


# -- Redis: rediss://, rediss+sentinel://, and `check` on passwords in the clear ----------

BASE = {"alias": "Acme CS <success@acme.com>", "pool": "alice@acme.com", "away": ""}


@pytest.mark.parametrize(("url", "warned"), [
    ("redis://:secret@redis.acme.com:6379/0", "in the clear to redis.acme.com: use rediss://"),
    ("redis://user:secret@10.0.0.5/0", "in the clear to 10.0.0.5"),
    ("redis://:secret@127.0.0.1:6379/0", None),  # never leaves this machine
    ("redis://redis.acme.com:6379/0", None),  # no password to read
    ("rediss://:secret@redis.acme.com:6380/0", None),
    ("unix:///run/redis.sock?password=secret", None),
    ("redis+sentinel://:secret@s1.acme.com:26379,s2:26379/mymaster/0",
     "sentinels name (s1.acme.com...): use rediss+sentinel://"),
    ("rediss+sentinel://:secret@s1.acme.com:26379/mymaster/0", None),
    ("redis+sentinel://:secret@127.0.0.1:26379/mymaster/0", None),
])
def test_a_redis_password_in_the_clear_off_this_machine_is_named(
    url: str, warned: str | None
) -> None:
    said = redis_cleartext_password(url)
    assert (said is None) if warned is None else (said is not None and warned in said)
    assert "secret" not in (said or "")


def test_check_names_every_password_the_settings_send_in_the_clear() -> None:
    settings = config.load_settings(
        **BASE, redis_url="redis://:pw@redis.acme.com/0", allow_plaintext="true",
        imap_url="imap://success%40acme.com:pw@imap.acme.com/INBOX",
        smtp_url="smtps://mailer:pw@smtp.acme.com")
    said = cleartext_passwords(settings)
    assert len(said) == 2
    assert "redis.acme.com" in said[0] and "IMAP password" in said[1]
    safe = config.load_settings(**BASE, redis_url="rediss://:pw@redis.acme.com/0",
                                imap_url="imap://success%40acme.com:pw@imap.acme.com/INBOX")
    assert cleartext_passwords(safe) == []  # STARTTLS is required: never in the clear


def test_a_tls_sentinel_url_is_parsed_with_its_options() -> None:
    found = parse_sentinel_url(
        "rediss+sentinel://:pw@s1:26379,s2:26380/mymaster/2?ssl_ca_certs=/etc/ca.pem")
    assert found.hosts == (("s1", 26379), ("s2", 26380))
    assert (found.service, found.db, found.password) == ("mymaster", 2, "pw")
    assert found.tls == {"ssl_ca_certs": "/etc/ca.pem"}
    assert parse_sentinel_url("redis+sentinel://s1:26379/mymaster").tls is None
    with pytest.raises(ValueError, match="unknown option 'ssl_ca_certs'"):
        parse_sentinel_url("redis+sentinel://s1:26379/mymaster?ssl_ca_certs=/etc/ca.pem")
    with pytest.raises(ValueError, match="unknown option 'sll_ca_certs'"):
        parse_sentinel_url("rediss+sentinel://s1:26379/mymaster?sll_ca_certs=x")
    settings = config.load_settings(**BASE,
                                    redis_url="rediss+sentinel://s1:26379/mymaster/0")
    assert settings.redis_url.startswith("rediss+sentinel://")


def make_certificates(root: Path) -> Path:
    """A private CA and a certificate from it for 127.0.0.1; answers the directory."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=root, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
        "ca.crt", "-days", "2", "-subj", "/CN=csm-router test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr",
        "-subj", "/CN=localhost")
    (root / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "redis.crt", "-days", "2", "-extfile", "ext")
    return root


def tls_server(root: Path, certs: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server (or, with `--sentinel` in `extra`, a sentinel) speaking TLS only."""
    (port,) = free_ports(1)
    conf = root / f"{port}.conf"
    conf.write_text(f"port 0\ntls-port {port}\nbind 127.0.0.1\ndir {root}\nsave \"\"\n"
                    f"tls-cert-file {certs / 'redis.crt'}\ntls-key-file {certs / 'redis.key'}\n"
                    f"tls-ca-cert-file {certs / 'ca.crt'}\ntls-auth-clients no\n"
                    + "".join(f"{line}\n" for line in extra if line != "--sentinel"))
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    args = [binary, str(conf)] + (["--sentinel"] if "--sentinel" in extra else [])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def answers(url: str) -> bool:
    try:
        return bool(redis_client(url, socket_timeout=2, socket_connect_timeout=2).ping())
    except redis.ConnectionError:
        return False


@pytest.mark.integration
def test_rediss_and_rediss_sentinel_verify_the_certificate(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    ca = f"ssl_ca_certs={certs / 'ca.crt'}"
    master, port = tls_server(tmp_path, certs)
    sentinel, sentinel_port = (None, 0)
    try:
        wait_until(lambda: answers(f"rediss://127.0.0.1:{port}/0?{ca}"), "redis over TLS")
        assert not answers(f"rediss://127.0.0.1:{port}/0")  # an unknown CA is refused
        assert not answers(f"redis://127.0.0.1:{port}/0")  # and nothing speaks in the clear
        sentinel, sentinel_port = tls_server(
            tmp_path, certs, "--sentinel", "tls-replication yes",
            f"sentinel monitor mymaster 127.0.0.1 {port} 1")
        url = f"rediss+sentinel://127.0.0.1:{sentinel_port}/mymaster/0?{ca}"
        wait_until(lambda: answers(url), "the master through a TLS sentinel")
        client = redis_client(url)
        client.set("csm:probe", "over TLS")
        assert client.get("csm:probe") == b"over TLS"
        assert not answers(f"rediss+sentinel://127.0.0.1:{sentinel_port}/mymaster/0")
    finally:
        for proc in (master, sentinel):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Ask again until the server answers (its answer is the event; nothing to subscribe)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_csm_router_check_warns_of_the_redis_password_in_the_clear(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")} | {
        "ROUTER_ALIAS": "Acme CS <success@acme.com>", "ROUTER_POOL": "alice@acme.com",
        "ROUTER_REDIS_URL": "redis://:hunter2@redis.invalid:6379/0",
        "ROUTER_IMAP_URL": "imap://success%40acme.com:pw@127.0.0.1:1/INBOX",
        "ROUTER_SMTP_URL": "smtp://127.0.0.1:1", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "csm_router.cli", "check"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "warn  tls    ROUTER_REDIS_URL sends the Redis password in the clear to " \
           "redis.invalid: use rediss://" in done.stdout, done.stdout + done.stderr
    assert "hunter2" not in done.stdout + done.stderr
