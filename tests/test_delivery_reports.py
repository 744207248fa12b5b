"""Late delivery reports: read from real bounces, matched to a forward only by its keyed token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

from csm_router.app import bounces
from csm_router.config import Address
from csm_router.core.decide import decide
from csm_router.core.decision import Action
from csm_router.core.message import parse
from csm_router.demo.relay import RecordingSmtp
from csm_router.mail.keyed import (
    SHARED_SECRET_KEY,
    forward_token,
    id_secret,
    verp_address,
    verp_token,
)
from csm_router.runtime import Runtime, record_decision
from csm_router.sends import jobs
from csm_router.state.store import message_key
from support.runtime import worker_runtime

CORPUS = Path("/work/shared/corpus/bounces/sisimai/bsd-lf")
ALIAS = Address("success@acme.com")
TOKEN = "0123456789abcdef0123456789abcdef.0a1b2c3d4e5f"
VERP = f"success+b-{TOKEN}@acme.com"
CUSTOMER = b"""\
From: Jane Doe <jane@globex.com>
To: success@acme.com
Subject: Renewal
Date: Tue, 03 Mar 2026 10:00:00 +0000
Message-ID: <q1@globex.com>

Can we talk about the renewal?
"""


def readdressed(name: str, to: str) -> bytes:
    """A real bounce from the corpus, as if it had come back to `to`."""
    raw = (CORPUS / name).read_bytes()
    head, sep, body = raw.partition(b"\n\n")
    lines = [line for line in head.split(b"\n")
             if not line.lower().startswith((b"to:", b"delivered-to:", b"x-original-to:"))]
    return b"\n".join([f"To: {to}".encode(), *lines]) + sep + body


def test_a_return_address_carries_the_forwards_token_and_nothing_else_matches() -> None:
    assert verp_address(ALIAS, f"<fwd.{TOKEN}@acme.com>") == VERP
    assert verp_token(VERP, ALIAS) == TOKEN
    assert verp_token(f"<{VERP.upper()}>", ALIAS) == TOKEN
    assert verp_token(f"success+b-{TOKEN}@globex.com", ALIAS) is None
    assert verp_token("success+b-nothex@acme.com", ALIAS) is None
    assert verp_token(f"other+b-{TOKEN}@acme.com", ALIAS) is None
    assert verp_address(ALIAS, "<notice.abc@acme.com>") == "success@acme.com"
    assert forward_token(f"<fwd.{TOKEN}@globex.com>", ALIAS) is None


@pytest.mark.parametrize("name", ["lhost-postfix-01.eml", "lhost-exim-01.eml",
                                  "lhost-sendmail-01.eml", "lhost-gmail-01.eml"])
def test_a_real_bounce_to_the_return_address_reports_a_failure_of_that_forward(
    name: str,
) -> None:
    raw = readdressed(name, VERP)
    report = bounces.read_report(parse(raw), raw, ALIAS)
    assert report is not None
    assert (report.token, report.failed) == (TOKEN, True)
    assert report.error


def test_a_report_to_the_alias_itself_names_a_forward_only_by_its_returned_message_id(
) -> None:
    dsn = readdressed("lhost-postfix-01.eml", "success@acme.com")
    report = bounces.read_report(parse(dsn), dsn, ALIAS)
    assert report is not None and report.token is None  # someone else's bounce
    returned = dsn.replace(b"Content-Type: message/rfc822\n\n",
                           f"Content-Type: message/rfc822\n\nMessage-ID: <fwd.{TOKEN}@acme.com>\n"
                           .encode())
    found = bounces.read_report(parse(returned), returned, ALIAS)
    assert found is not None and found.token == TOKEN


def test_a_delay_notice_is_no_failure() -> None:
    raw = readdressed("lhost-postfix-01.eml", VERP).replace(b"Action: failed",
                                                            b"Action: delayed")
    report = bounces.read_report(parse(raw), raw, ALIAS)
    assert report is not None and not report.failed


def test_mail_a_person_wrote_is_no_report() -> None:
    assert bounces.read_report(parse(CUSTOMER), CUSTOMER, ALIAS) is None


@pytest.fixture
def rt(smtp: RecordingSmtp) -> Iterator[Runtime]:
    with worker_runtime(smtp.url, "alice@acme.com, bob@acme.com") as runtime:
        yield runtime


def forwarded(rt: Runtime, smtp: RecordingSmtp) -> tuple[int, str]:
    msg = parse(CUSTOMER)
    msgkey = message_key(msg, CUSTOMER)
    out = record_decision(rt.store, msgkey, msg, decide(msg, rt.store.snapshot(msg, 0.0)),
                          0.0, raw=CUSTOMER)
    assert out.ref is not None and out.owner == "alice@acme.com"
    assert jobs.deliver(msgkey, "alice@acme.com").startswith("sent")
    return out.ref, smtp.messages[-1].mail_from


def settle(rt: Runtime, raw: bytes) -> str:
    msg = parse(raw)
    decision = decide(msg, rt.store.snapshot(msg, 0.0))
    assert decision.action is Action.IGNORE
    return bounces.settle(rt, msg, raw, decision).why


def test_a_late_bounce_of_a_forward_moves_the_thread_once(
    rt: Runtime, smtp: RecordingSmtp,
) -> None:
    ref, sender = forwarded(rt, smtp)
    assert sender.startswith("success+b-") and sender.endswith("@acme.com")
    raw = readdressed("lhost-postfix-01.eml", sender)

    why = settle(rt, raw)
    assert "bounced" in why and "bob@acme.com" in why
    assert rt.store.thread(ref)["owner"] == "bob@acme.com"
    owed = rt.outbox.pending()
    assert "no longer with" in settle(rt, raw)  # the same report again moves nothing
    assert rt.outbox.pending() == owed
    assert rt.store.thread(ref)["owner"] == "bob@acme.com"


def test_a_forged_bounce_changes_nothing(rt: Runtime, smtp: RecordingSmtp) -> None:
    ref, sender = forwarded(rt, smtp)
    token = verp_token(sender, ALIAS)
    assert token is not None
    msgkey, _, _ = token.partition(".")
    for forged in (f"success+b-{msgkey}.{'0' * 12}@acme.com", f"success+b-{TOKEN}@acme.com"):
        why = settle(rt, readdressed("lhost-postfix-01.eml", forged))
        assert "no forward we sent" in why
    assert "names no forward" in settle(rt, readdressed("lhost-postfix-01.eml",
                                                        "success@acme.com"))
    assert rt.store.thread(ref)["owner"] == "alice@acme.com"


def test_the_id_secret_is_made_once_and_shared(rt: Runtime) -> None:
    server = fakeredis.FakeServer()
    one, two = fakeredis.FakeRedis(server=server), fakeredis.FakeRedis(server=server)
    first = id_secret(one, rt.settings, SHARED_SECRET_KEY)
    assert server_secret(two, SHARED_SECRET_KEY) == first and len(first) == 64
    # another process keys ids alike
    assert id_secret(two, rt.settings, SHARED_SECRET_KEY) == first


def test_each_team_keeps_its_secret_first_as_the_one_every_team_shared(rt: Runtime) -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    client.set(SHARED_SECRET_KEY, "a" * 64)  # before teams kept their own
    eu = id_secret(client, rt.settings, "csm:{eu}:secret:ids")
    assert eu == b"a" * 64 and server_secret(client, "csm:{eu}:secret:ids") == eu
    client.delete(SHARED_SECRET_KEY)  # a new deployment, or the team moved to its own Redis
    us = id_secret(fakeredis.FakeRedis(server=server), rt.settings, "csm:{us}:secret:ids")
    assert us != eu and len(us) == 64


def server_secret(client: fakeredis.FakeRedis, where: str) -> bytes:
    value = client.get(where)
    assert isinstance(value, bytes)
    return value
