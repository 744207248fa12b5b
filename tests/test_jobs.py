"""Worker jobs against a real SMTP relay (in-process) and an in-memory Redis."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest

from csm_router.app.worker import run_worker
from csm_router.config import Settings, load_settings
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.demo.relay import RecordingSmtp
from csm_router.errors import PermanentError, TransientError
from csm_router.runtime import Runtime, record_decision
from csm_router.sends import jobs
from csm_router.state.store import Outcome, message_key
from csm_router.support import SupportHandoff
from support.runtime import worker_runtime

RAW = (b"From: Jane Doe <jane@globex.com>\r\nTo: success@acme.com\r\nSubject: Help\r\n"
       b"Message-ID: <q1@globex.com>\r\n\r\nHow do I export?\r\n")


@pytest.fixture
def rt(smtp: RecordingSmtp) -> Iterator[Runtime]:
    with worker_runtime(smtp.url, "alice@acme.com") as runtime:
        yield runtime


def routed(rt: Runtime) -> str:
    msg = parse(RAW)
    msgkey = message_key(msg, RAW)
    rt.store.ensure_sequence()
    rt.store.record(msgkey, msg, decide(msg, rt.store.snapshot(msg, 0.0)), 0.0, raw=RAW)
    return msgkey


def test_delivering_twice_sends_once(rt: Runtime, smtp: RecordingSmtp) -> None:
    msgkey = routed(rt)
    assert jobs.deliver(msgkey, "alice@acme.com").startswith("sent")
    assert jobs.deliver(msgkey, "alice@acme.com").startswith("already sent")
    assert len(smtp.messages) == 1
    assert rt.store.message(msgkey)["state"] == "delivered"


def test_relay_saying_try_later_is_transient(rt: Runtime, smtp: RecordingSmtp) -> None:
    msgkey = routed(rt)
    smtp.fail_next(451, "4.3.0 try again later")
    with pytest.raises(TransientError, match="451"):
        jobs.deliver(msgkey, "alice@acme.com")
    jobs.deliver(msgkey, "alice@acme.com")  # the retry goes through
    assert len(smtp.messages) == 1


def test_relay_rejecting_is_permanent(rt: Runtime, smtp: RecordingSmtp) -> None:
    msgkey = routed(rt)
    smtp.fail_next(550, "5.7.1 rejected")
    with pytest.raises(PermanentError, match="550"):
        jobs.deliver(msgkey, "alice@acme.com")
    assert rt.store.message(msgkey)["state"] != "delivered"


def test_expired_raw_message_is_a_clear_permanent_error(rt: Runtime) -> None:
    msgkey = routed(rt)
    rt.redis.delete(f"csm:raw:{msgkey}")
    with pytest.raises(PermanentError, match="expired"):
        jobs.deliver(msgkey, "alice@acme.com")


def test_overflow_notice_names_customer_subject_and_reference(
    rt: Runtime, smtp: RecordingSmtp
) -> None:
    routed(rt)
    jobs.notify_overflow(1001)
    (notice,) = smtp.messages
    assert notice.rcpt_tos == ["cs-lead@acme.com"]
    assert "[CS-1001]" in str(notice.message["Subject"])
    text = notice.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "jane@globex.com" in text and "Help" in text and "CS-1001" in text
    assert notice.message["Auto-Submitted"] == "auto-generated"


HANDOFFS: list[SupportHandoff] = []


def record_handoff(handoff: SupportHandoff, settings: Settings) -> None:
    """A team's own Support handler (a ticket system), as ROUTER_SUPPORT_HANDLER names it."""
    HANDOFFS.append(handoff)


def refuse_handoff(handoff: SupportHandoff, settings: Settings) -> None:
    """A ticket system that turns every handoff down for good."""
    raise PermanentError("the ticket system refused the ticket: project closed")


def technical_request(smtp: RecordingSmtp, handler: str) -> tuple[Runtime, str, Outcome]:
    """A technical request recorded for Support, with `handler` as the Support handler."""
    settings = load_settings(
        alias="Acme CS <success@acme.com>", pool="alice@acme.com", smtp_url=smtp.url,
        away="", max_open_per_csm=0, support_address="support@acme.com",
        support_handler=handler, overflow_address="cs-lead@acme.com",
    )
    rt = Runtime.from_settings(settings, fakeredis.FakeRedis())
    jobs.configure(rt)
    raw = RAW.replace(b"How do I export?", b"The export returns a 500 error since today.")
    msg = parse(raw)
    msgkey = message_key(msg, raw)
    rt.store.ensure_sequence()
    outcome = record_decision(rt.store, msgkey, msg, decide(msg, rt.store.snapshot(
        msg, 0.0, support_rules=rt.support_rules)), 0.0, raw=raw)
    return rt, msgkey, outcome


def test_a_team_can_plug_in_its_own_support_handler(smtp: RecordingSmtp) -> None:
    rt, msgkey, outcome = technical_request(smtp, f"{__name__}:record_handoff")
    assert outcome.followup.support == msgkey
    run_worker(rt, burst=True)
    jobs.configure(None)

    (handoff,) = HANDOFFS
    assert (handoff.ref, handoff.customer.address, handoff.account) == (
        "CS-1001", "jane@globex.com", "globex.com")
    assert "500 error" in handoff.why and "500 error" in handoff.message.text
    assert [r.rcpt_tos for r in smtp.messages] == [["jane@globex.com"]]  # only the note


def test_a_forward_refused_for_good_moves_the_thread_and_tells_the_lead(
    smtp: RecordingSmtp,
) -> None:
    settings = load_settings(
        alias="Acme CS <success@acme.com>", pool="alice@acme.com, bob@acme.com",
        smtp_url=smtp.url, away="", max_open_per_csm=0, overflow_address="cs-lead@acme.com",
    )
    rt = Runtime.from_settings(settings, fakeredis.FakeRedis())
    jobs.configure(rt)
    msgkey = routed(rt)
    assert rt.store.thread(1001)["owner"] == "alice@acme.com"
    smtp.fail_next(550, "5.1.1 mailbox unavailable")
    run_worker(rt, burst=True)
    jobs.configure(None)

    (letter,) = rt.outbox.dead_letters()
    assert letter.kind == "deliver" and "550" in letter.error
    assert letter.args["owner"] == "alice@acme.com"
    assert rt.store.thread(1001)["owner"] == "bob@acme.com"
    assert sorted(r.rcpt_tos[0] for r in smtp.messages) == ["bob@acme.com", "cs-lead@acme.com"]
    forward = next(r for r in smtp.messages if r.rcpt_tos == ["bob@acme.com"])
    text = forward.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "could not be delivered to alice@acme.com" in text
    assert rt.store.message(msgkey)["state"] == "delivered"
    assert rt.outbox.pending() == 0


def test_a_support_handler_that_fails_for_good_gives_the_thread_back(
    smtp: RecordingSmtp,
) -> None:
    rt, _, outcome = technical_request(smtp, f"{__name__}:refuse_handoff")
    assert rt.store.thread(outcome.ref or 0)["state"] == "support"
    run_worker(rt, burst=True)
    jobs.configure(None)

    (letter,) = rt.outbox.dead_letters()
    assert letter.kind == "support" and "ticket system refused" in letter.error
    thread = rt.store.thread(outcome.ref or 0)
    assert (thread["state"], thread["owner"]) == ("open", "alice@acme.com")
    assert sorted(r.rcpt_tos[0] for r in smtp.messages) == ["alice@acme.com", "cs-lead@acme.com"]
    lead = next(r for r in smtp.messages if r.rcpt_tos == ["cs-lead@acme.com"])
    assert "Support failed for good" in lead.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_a_worker_will_not_start_with_a_support_handler_it_cannot_load(
    smtp: RecordingSmtp,
) -> None:
    rt, _, _ = technical_request(smtp, "csm_router.nope:handler")
    with pytest.raises(PermanentError, match=r"ROUTER_SUPPORT_HANDLER csm_router\.nope:handler"):
        run_worker(rt, burst=True)
    jobs.configure(None)
