"""The mail a benchmark delivers: the kind workload (one short line from 50 domains) and the
realistic one, as a receiving server hands mail over: trace headers (Received,
Authentication-Results, a DKIM signature), bodies of some 500 characters, an HTML part in
every third, 1,000 distinct customers. And a relay that parses everything it gets, as a
real mail server's work would on the same cores."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import multiprocessing
import threading
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from multiprocessing.connection import Connection

from csm_router.demo.relay import RecordingSmtp
from csm_router.demo.stage import compose

CUSTOMERS = 1000
_SENTENCES = (
    "We have been using the dashboard for the quarterly review and a few numbers look off.",
    "Since the last update the export to CSV takes much longer than it used to.",
    "Could you tell us how to give our new team lead access to the reports?",
    "Our finance team asks whether the invoice can show the purchase order number.",
    "The weekly summary email stopped arriving for two of our colleagues.",
    "We would like to understand the difference between the two plans before renewing.",
    "Is there a way to schedule the report so that it goes out every Monday morning?",
    "Thanks again for the onboarding session last week, it helped a lot.",
)


def kind(n: int, user: str, tag: str) -> bytes:
    """One short line from one of 50 customer domains, no trace headers."""
    return compose(f"C{n} <c{n}@customer{n % 50}.com>", f"{tag} {n:05d}",
                   "Hello,\n\nhow do I export a report?\n\nThanks\n", to=user)[1]


def realistic(n: int, user: str, tag: str) -> bytes:
    """A customer's mail as the receiving MTA stores it."""
    c = n % CUSTOMERS
    domain = f"customer{c}.example"
    body = "Hello,\n\n" + " ".join(_SENTENCES[(n + i) % len(_SENTENCES)]
                                   for i in range(5)) + f"\n\nBest regards,\nCustomer {c}\n"
    msg = EmailMessage()
    msg["From"] = f"Customer {c} <c{c}@{domain}>"
    msg["To"] = user
    msg["Subject"] = f"{tag} {n:05d}"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=domain)
    msg.set_content(body)
    if n % 3 == 0:
        paragraphs = "".join(f"<p>{line}</p>" for line in body.splitlines() if line)
        msg.add_alternative(f"<html><body>{paragraphs}</body></html>", subtype="html")
    signature = base64.b64encode(hashlib.sha512(msg.as_bytes()).digest() * 4).decode()
    trace = (
        f"Return-Path: <c{c}@{domain}>\r\n"
        f"Received: from mx.acme.test by imap.acme.test with LMTP id {n:08x}; "
        f"{format_datetime(datetime.now(UTC))}\r\n"
        f"Received: from mail-{c % 7}.{domain} (mail-{c % 7}.{domain} "
        f"[198.51.100.{c % 250}]) by mx.acme.test (Postfix) with ESMTPS id {n:010X} "
        f"for <{user}>; {format_datetime(datetime.now(UTC))}\r\n"
        f"Authentication-Results: mx.acme.test; spf=pass smtp.mailfrom={domain}; "
        f"dkim=pass header.d={domain} header.s=s1; dmarc=pass header.from={domain}\r\n"
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s1;\r\n"
        f"\th=from:to:subject:date:message-id; bh={signature[:44]};\r\n"
        f"\tb={signature[44:120]}\r\n\t{signature[120:196]}\r\n\t{signature[196:272]}\r\n"
    ).encode()
    return trace + msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


WORKLOADS = {"kind": kind, "realistic": realistic}


class Parser:
    """Parses every message the relay records, as it arrives, in a process of its own (as
    a real receiving server would, on the same cores but not under this process's lock)."""

    def __init__(self, smtp: RecordingSmtp) -> None:
        self.smtp, self.passed = smtp, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-parser", daemon=True)
        self._ours, theirs = multiprocessing.Pipe()
        self._process = multiprocessing.Process(target=_parse_forever, args=(theirs,),
                                                daemon=True)

    def __enter__(self) -> Parser:
        self._process.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._ours.send_bytes(b"")
        self._process.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self.smtp.messages
            if self.passed < len(messages):
                for received in messages[self.passed:]:
                    self._ours.send_bytes(received.data)
                    self.passed += 1
            else:
                self._stop.wait(0.005)


def _parse_forever(conn: Connection) -> None:
    """Headers and every part decoded, one message after another, until an empty one."""
    while data := conn.recv_bytes():
        for part in email.message_from_bytes(data, policy=email.policy.default).walk():
            if not part.is_multipart():
                part.get_content()
