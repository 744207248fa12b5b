"""The product as a user runs it: the real `csm-router` commands against the test servers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_lib

from csm_router.demo.relay import Received, RecordingSmtp
from csm_router.demo.stage import compose
from support.servers import Mailbox

POOL = "Alice Smith <alice@acme.com>*2, Bob Jones <bob@acme.com>, Carol Diaz <carol@acme.com>"
ALICE, BOB, CAROL = "alice@acme.com", "bob@acme.com", "carol@acme.com"
AUTHSERV = "mx.acme.test"  # the tests' ROUTER_TRUSTED_AUTHSERV_ID
# What the receiving MTA writes for genuine mail from acme.com (RFC 8601): CSMs and Support
# steer only with it.
GENUINE = {"Authentication-Results":
           f"{AUTHSERV}; spf=pass smtp.mailfrom=acme.com; dkim=pass header.d=acme.com; "
           "dmarc=pass header.from=acme.com"}


def customer_mail(
    sender: str,
    subject: str,
    body: str = "Hello,\n\nCould you help?\n\nThanks\n",
    **kw: Any,
) -> tuple[str, bytes]:
    """A message as a mail client writes it; answers (Message-ID, bytes)."""
    return compose(sender, subject, body, **kw)


@dataclass
class Product:
    """Runs the real `csm-router` commands with an environment pointing at the test servers."""

    mailbox: Mailbox
    smtp: RecordingSmtp
    env: dict[str, str]
    workdir: Path
    seen: int = 0
    logs: list[str] = field(default_factory=list)

    @property
    def alias(self) -> str:
        return self.mailbox.user

    def deliver(self, raw: bytes) -> None:
        self.mailbox.deliver(raw)

    def write(self, sender: str, subject: str, body: str = "Hello,\n\nCould you help?\n",
              **kw: str | dict[str, str] | None) -> str:
        """A customer writes to the alias; answers the Message-ID."""
        kw.setdefault("to", self.alias)
        message_id, raw = customer_mail(sender, subject, body, **kw)  # type: ignore[arg-type]
        self.deliver(raw)
        return message_id

    def staff_writes(self, sender: str, subject: str, body: str,
                     **kw: str | dict[str, str] | None) -> str:
        """A CSM or Support writes, as proven by the receiving server's topmost header."""
        headers = kw.pop("headers", None)
        assert headers is None or isinstance(headers, dict)
        return self.write(sender, subject, body, headers=GENUINE | (headers or {}), **kw)

    def redis(self) -> redis_lib.Redis:
        """A client of the Redis the product uses."""
        return redis_lib.Redis.from_url(self.env["ROUTER_REDIS_URL"])

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "csm_router.cli", *args],
            env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=120,
        )
        self.logs.append(f"$ csm-router {' '.join(args)}\n{done.stdout}{done.stderr}")
        if check and done.returncode != 0:
            raise AssertionError(f"csm-router {' '.join(args)} failed:\n{done.stderr}")
        return done

    def route(self) -> list[Received]:
        """Run the router until idle, then a burst worker; answers what was newly sent."""
        self.cli("run", "--exit-when-idle")
        self.cli("worker", "--burst")
        new = self.smtp.messages[self.seen :]
        self.seen = len(self.smtp.messages)
        return new


def body_of(received: Received) -> str:
    part = received.message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())
