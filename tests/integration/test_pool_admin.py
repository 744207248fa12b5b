"""The pool's tuning from the command line, on real servers: a backup for whoever is away."""

from __future__ import annotations

import pytest

from csm_router.mail.keyed import SHARED_SECRET_KEY
from csm_router.state.forget import handle
from support.erasure import scan
from support.product import ALICE, BOB, Product, body_of, customer_mail

pytestmark = pytest.mark.integration


def test_a_backup_covers_an_away_csm_and_the_thread_comes_back(product: Product) -> None:
    product.write("Jane Doe <jane@globex.com>", "Dashboard export")
    (first,) = product.route()
    assert first.rcpt_tos == [ALICE]
    said = product.cli("away", ALICE, "--backup", BOB).stdout
    assert f"replies in their threads go to {BOB}" in said

    product.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] Dashboard export")
    product.write("Max Muster <max@initech.com>", "A new question")
    covered, new = product.route()
    assert covered.rcpt_tos == [BOB] and "[CS-1001]" in str(covered.message["Subject"])
    assert f"{BOB} covers as their backup" in body_of(covered)  # the note says why
    assert new.rcpt_tos != [ALICE]  # away: no new threads for her

    back = product.cli("back", ALICE).stdout
    assert "1 thread(s) back from their backup: CS-1001" in back
    product.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] Dashboard export")
    (again,) = product.route()
    assert again.rcpt_tos == [ALICE]


def test_a_german_customer_reaches_the_csm_who_reads_german(product: Product) -> None:
    product.env["ROUTER_LANGUAGES"] = f"{BOB}=de,en; {ALICE}=en"
    product.write("Jana Schulz <jana@beispiel.de>", "Export fehlt",
                  "Hallo,\n\nseit dem Update finde ich den Export der Monatsberichte nicht "
                  "mehr. Können Sie mir helfen?\n\nViele Grüße\nJana\n")
    (forward,) = product.route()
    assert forward.rcpt_tos == [BOB]  # Alice is first in the round robin, but reads no German
    body = body_of(forward)
    assert "writes in German" in body and "among those who read German" in body
    # Nobody who reads German can take it now: to the whole pool, and the forward says so.
    product.cli("away", BOB)
    product.write("Udo Kraus <udo@firma.de>", "Rechnung doppelt",
                  "Guten Tag,\n\ndie Rechnung für November wurde uns zweimal belastet. "
                  "Bitte prüfen Sie das.\n\nMit freundlichen Grüßen\nUdo Kraus\n")
    (fallback,) = product.route()
    assert fallback.rcpt_tos != [BOB]
    assert "nobody who reads German can take it now" in body_of(fallback)


def test_forget_erases_a_customer_from_redis_and_the_mailbox(product: Product) -> None:
    client = product.mailbox.imap_client()
    client.create_folder("Quarantine")  # one message of hers was quarantined earlier
    client.append("Quarantine", customer_mail("Jane Doe <jane@globex.com>", "Odd one",
                                              "Hello", to=product.alias)[1])
    product.write("Jane Doe <jane@globex.com>", "Dashboard export")
    product.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] Dashboard export")
    product.write("Max Muster <max@globex.com>", "Invoice")
    assert len(product.route()) == 3
    done = product.cli("forget", "jane@globex.com", "--mailbox")
    said = done.stdout
    assert "threads erased: CS-1001" in said
    assert "1 message(s) expunged from Quarantine" in said
    assert "expunged from INBOX" in said and "the forwards in these CSMs' own inboxes" in said
    assert "jane@globex.com" not in done.stderr  # the log names the request, not her
    secret = product.redis().get(SHARED_SECRET_KEY)  # one team: the shared key
    assert secret and handle("jane@globex.com", secret) in done.stderr
    assert scan(product.redis(), "jane@globex.com") == []
    client = product.mailbox.imap_client()
    client.select_folder("Quarantine", readonly=True)
    assert client.search() == []
    client.select_folder("INBOX", readonly=True)
    senders = [data[b"ENVELOPE"].from_[0].mailbox.decode()
               for data in client.fetch(client.search(), ["ENVELOPE"]).values()]
    assert senders == ["max"]  # Jane's two messages are gone, Max's stays
    # Max's thread goes on as before.
    product.write("Max Muster <max@globex.com>", "Re: [CS-1002] Invoice")
    (again,) = product.route()
    assert "[CS-1002]" in str(again.message["Subject"])
