"""Support handoff, commands by mail and the first-response SLA, end to end on real servers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from csm_router.demo.relay import Received
from support.product import (
    ALICE,
    AUTHSERV,
    BOB,
    CAROL,
    GENUINE,
    Product,
    body_of,
    customer_mail,
)

pytestmark = pytest.mark.integration

SUPPORT = "support@acme.com"
LEAD = "cs-lead@acme.com"
TECHNICAL = (
    "Hi,\n\nsince this morning the API returns 500 errors on every call:\n\n"
    "Traceback (most recent call last):\n  File \"sync.py\", line 12, in <module>\n"
    "requests.exceptions.HTTPError: 500 Server Error\n\nThis blocks our nightly sync.\n"
)


@pytest.fixture
def acme(product: Product) -> Product:
    # ROUTER_TRUSTED_AUTHSERV_ID=AUTHSERV is set for every product test.
    product.env.update(ROUTER_SUPPORT_ADDRESS=f"Acme Support <{SUPPORT}>")
    return product


def to(sent: list[Received], address: str) -> list[Received]:
    return [r for r in sent if address in r.rcpt_tos]


def new_thread(acme: Product, subject: str = "How do I invite my team?") -> tuple[str, Received]:
    acme.write("Jane Doe <jane@globex.com>", subject, "Hello, how do I invite my team?\n")
    (fwd,) = acme.route()
    return fwd.rcpt_tos[0], fwd


def csm_writes(acme: Product, csm: str, body: str, fwd: Received, **headers: str) -> None:
    acme.write(f"CSM <{csm}>", f"Re: {fwd.message['Subject']}", body, to="jane@globex.com",
               cc=acme.alias, in_reply_to=str(fwd.message["Message-ID"]),
               headers=headers or GENUINE)


def test_technical_request_goes_to_support_and_the_customer_is_told(acme: Product) -> None:
    acme.write("Jane Doe <jane@globex.com>", "API down?", TECHNICAL)
    sent = acme.route()
    (handoff,) = to(sent, SUPPORT)
    assert str(handoff.message["Subject"]) == "[CS-1001] API down?"
    assert handoff.message["Reply-To"].addresses[0].addr_spec == "jane@globex.com"
    body = body_of(handoff)
    assert "Traceback (most recent call last)" in body and "nightly sync" in body
    assert "Handed to Support because: technical" in body
    (note,) = to(sent, "jane@globex.com")
    assert "CS-1001" in str(note.message["Subject"]) and "Support" in body_of(note)
    assert not any(set(r.rcpt_tos) & {ALICE, BOB, CAROL} for r in sent)
    assert "technical" in acme.cli("thread", "CS-1001").stdout

    acme.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] API down?", "Any news?\n")
    later = acme.route()
    (again,) = to(later, SUPPORT)
    assert "Any news?" in body_of(again)
    assert to(later, "jane@globex.com") == []  # told once, when the thread moved


def test_support_command_hands_the_thread_over(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    csm_writes(acme, owner, "Hi Jane, looping in Support.\n\n#SUPPORT\n", fwd)
    sent = acme.route()
    (handoff,) = to(sent, SUPPORT)
    assert "how do I invite my team?" in body_of(handoff)
    assert f"#support by {owner}" in body_of(handoff)
    assert len(to(sent, "jane@globex.com")) == 1  # the customer's note
    for_owner = to(sent, owner)
    assert any("is with Support now" in body_of(r) for r in for_owner)  # confirmation
    assert any("For your information" in body_of(r) for r in for_owner)  # copy


def test_close_then_the_customer_reopens_with_the_same_owner(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    csm_writes(acme, owner, "Done, see Settings > Team.\n#close\n", fwd)
    (confirmation,) = acme.route()
    assert confirmation.rcpt_tos == [owner] and "is closed" in body_of(confirmation)
    assert "closed" in acme.cli("thread", "CS-1001").stdout
    status = json.loads(acme.cli("status", "--json").stdout)
    assert sum(r["open"] for r in status["pool"]) == 0

    acme.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] How do I invite my team?",
               "One more question.\n")
    (reopened,) = acme.route()
    assert reopened.rcpt_tos == [owner]


def test_reassign_moves_the_thread_and_tells_both(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    other = CAROL if owner != CAROL else BOB
    csm_writes(acme, owner, f"Carol knows this best.\n#reassign {other}\n", fwd)
    sent = acme.route()
    (moved,) = to(sent, other)
    assert f"{owner} reassigned the thread to you" in body_of(moved)
    (confirmation,) = to(sent, owner)
    assert f"is now with {other}" in body_of(confirmation)
    acme.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] How do I invite my team?", "Hi!\n")
    assert [r.rcpt_tos for r in acme.route()] == [[other]]


def test_reassign_to_someone_outside_the_pool_is_refused(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    csm_writes(acme, owner, "#reassign dave@acme.com\n", fwd)
    (error,) = acme.route()
    assert error.rcpt_tos == [owner]
    assert "Could not carry out #reassign dave@acme.com" in body_of(error)
    assert "not in the pool" in body_of(error)


def test_a_command_inside_quoted_text_does_nothing(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    csm_writes(acme, owner, "Thanks!\n\nOn Monday Bob wrote:\n> #close\n", fwd)
    assert acme.route() == []
    assert "closed" not in acme.cli("thread", "CS-1001").stdout.split("history:")[0]


def test_someone_only_claiming_to_be_a_csm_cannot_steer(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    forged = {"Authentication-Results": f"{AUTHSERV}; spf=fail smtp.mailfrom=acme.com; "
              "dkim=none; dmarc=fail header.from=acme.com"}
    csm_writes(acme, owner, "#reassign carol@acme.com\n", fwd, **forged)
    assert acme.route() == []  # no confirmation, no forward
    thread = acme.cli("thread", "CS-1001").stdout
    assert "reassigned" not in thread
    assert re.search(rf"owner\s+{owner}", thread)
    client = acme.mailbox.imap_client()
    client.select_folder("Quarantine", readonly=True)
    assert len(client.search("ALL")) == 1


def test_a_passing_result_forged_below_the_servers_own_cannot_steer(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    # The sender wrote the passing header itself; the receiving server added its own, failing
    # one on top, as servers do (RFC 8601 section 5: only that topmost one counts).
    _, raw = customer_mail(f"CSM <{owner}>", f"Re: {fwd.message['Subject']}",
                           "#reassign carol@acme.com\n", to="jane@globex.com", cc=acme.alias,
                           in_reply_to=str(fwd.message["Message-ID"]), headers=GENUINE)
    acme.deliver(f"Authentication-Results: {AUTHSERV}; spf=softfail smtp.mailfrom=acme.com; "
                 "dkim=none; dmarc=fail header.from=acme.com\r\n".encode() + raw)
    assert acme.route() == []
    assert re.search(rf"owner\s+{owner}", acme.cli("thread", "CS-1001").stdout)
    client = acme.mailbox.imap_client()
    client.select_folder("Quarantine", readonly=True)
    assert len(client.search("ALL")) == 1


def test_support_gives_a_thread_back_with_success(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    csm_writes(acme, owner, "#support\n", fwd)
    acme.route()
    acme.write(f"Acme Support <{SUPPORT}>", "Re: [CS-1001] How do I invite my team?",
               "Not a bug: this is a training question.\n\n#success\n", headers=GENUINE)
    sent = acme.route()
    (back,) = to(sent, owner)
    assert "Support gave the thread back" in body_of(back)
    (confirmation,) = to(sent, SUPPORT)
    assert "is back with Customer Success" in body_of(confirmation)

    # Handing the same thread over a second time reaches Support a second time.
    csm_writes(acme, owner, "Sorry, it is technical after all.\n#support\n", back)
    (again,) = to(acme.route(), SUPPORT)
    assert "how do I invite my team?" in body_of(again)


def _at(minutes: int) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S")


def test_overdue_thread_is_escalated_exactly_once(acme: Product) -> None:
    owner, _ = new_thread(acme)
    acme.cli("sweep", "--at", _at(50))
    acme.cli("worker", "--burst")
    (reminder,) = acme.smtp.messages[acme.seen:]
    acme.seen += 1
    assert reminder.rcpt_tos == [owner] and "waiting for a first answer" in body_of(reminder)

    for minutes in (61, 62, 70):
        acme.cli("sweep", "--at", _at(minutes))
    acme.cli("worker", "--burst")
    sent = acme.smtp.messages[acme.seen:]
    (lead,) = to(sent, LEAD)
    assert "CS-1001" in body_of(lead) and "jane@globex.com" in body_of(lead)
    (moved,) = [r for r in sent if r.rcpt_tos != [LEAD]]
    assert moved.rcpt_tos != [owner]
    assert "first response overdue" in body_of(moved)
    assert len(sent) == 2
    status = json.loads(acme.cli("status", "--json").stdout)
    assert sum(r["open"] for r in status["pool"]) == 1


def test_an_answer_stops_the_clock(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    csm_writes(acme, owner, "Hi Jane, Settings > Team.\n", fwd)
    acme.route()
    acme.cli("sweep", "--at", _at(120))
    acme.cli("worker", "--burst")
    assert acme.smtp.messages[acme.seen:] == []
    row = next(r for r in json.loads(acme.cli("status", "--json").stdout)["pool"]
               if r["address"] == owner)
    assert row["overdue"] == 0 and row["p90_first_response_minutes"] is not None


def test_technical_reply_in_a_csm_thread_stays_with_the_owner_flagged(acme: Product) -> None:
    owner, _ = new_thread(acme)
    acme.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] How do I invite my team?", TECHNICAL)
    (follow_up,) = acme.route()
    assert follow_up.rcpt_tos == [owner]
    assert "Looks technical" in body_of(follow_up) and "#support" in body_of(follow_up)


def test_a_csm_new_to_a_thread_reads_what_was_said_so_far(acme: Product) -> None:
    owner, fwd = new_thread(acme)
    csm_writes(acme, owner, "Hi Jane, it is under Settings > Team.\n", fwd)
    acme.route()
    acme.cli("away", owner)
    acme.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] How do I invite my team?",
               "I cannot find Settings, where is it?\n")
    (moved,) = acme.route()
    assert moved.rcpt_tos != [owner]
    body = body_of(moved)
    assert "how do I invite my team?" in body  # the customer's first message
    assert f"Earlier in this thread: {owner}" in body and "Settings > Team" in body
    assert "where is it?" in body
    acme.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] How do I invite my team?",
               "Found it, thanks.\n")
    (again,) = acme.route()
    assert "Earlier in this thread" not in body_of(again)  # they have it already


def test_a_mailbox_refusing_the_customer_note_leaves_the_thread_with_support(
    acme: Product,
) -> None:
    acme.smtp.refuse("jane@globex.com", 550, "5.1.1 mailbox unavailable")
    acme.write("Jane Doe <jane@globex.com>", "API down?", TECHNICAL)
    sent = acme.route()
    assert len(to(sent, SUPPORT)) == 1 and to(sent, "jane@globex.com") == []
    # Support has the request: the refused note is a dead letter of its own, nothing more.
    assert acme.redis().hget("csm:thread:1001", "state") == b"support"
    listed = json.loads(acme.cli("failed", "list", "--json").stdout)
    assert [d["kind"] for d in listed] == ["support-note"]
    acme.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] API down?", "Any news?\n")
    later = acme.route()
    (again,) = to(later, SUPPORT)
    assert "Any news?" in body_of(again)
    assert not any(set(r.rcpt_tos) & {ALICE, BOB, CAROL} for r in later)
    owner, _ = new_thread(acme, "How do I invite my team?")  # the next customer
    assert owner in (ALICE, BOB, CAROL)


def test_notes_to_an_unverified_sender_echo_nothing_and_are_limited(acme: Product) -> None:
    name, subject = "Win Big At casino-spam.example", "Claim your prize at casino-spam.example"
    for n in range(4):  # one forged From, four technical requests on one day
        acme.write(f"{name} <victim@example.org>", f"{subject} {n}", TECHNICAL)
    sent = acme.route()
    assert len(to(sent, SUPPORT)) == 4  # Support gets every request
    notes = to(sent, "victim@example.org")
    assert len(notes) == 3  # but the sender at most three automatic notes a day
    for note in notes:
        assert "casino-spam" not in note.data.decode()
        assert re.match(r"\[CS-\d+\] ", str(note.message["Subject"]))
        assert "Support" in body_of(note)
