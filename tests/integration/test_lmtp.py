"""`csm-router lmtp` on real servers: the MTA's copy is routed at once, the alias mailbox's
copy (Dovecot, delivered over LMTP as Postfix would) is recognised, never routed twice."""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator

import pytest
from test_processes import start, stop
from test_two_teams import teams, us_mailbox  # noqa: F401  # fixtures

from support.product import Product, customer_mail
from support.servers import Mailbox, free_ports, wait_until

pytestmark = pytest.mark.integration


def listening(product: Product, log: str = "lmtp.log") -> None:
    wait_until(lambda: "LMTP listening" in (product.workdir / log).read_text(),
               "csm-router lmtp listening")


@pytest.fixture
def lmtp(product: Product) -> Iterator[int]:
    """`csm-router lmtp` running for `product`; answers its port. The mailbox's router has
    run once: it starts the thread numbering (LMTP answers 451 until it has)."""
    product.cli("run", "--exit-when-idle")
    (port,) = free_ports(1)
    product.env["ROUTER_LMTP_ADDRESS"] = f"127.0.0.1:{port}"
    server = start(product, "lmtp", log="lmtp.log")
    try:
        listening(product)
        yield port
    finally:
        assert stop(server) == 0


def hand_over(port: int, rcpts: list[str], raw: bytes) -> dict[str, tuple[int, bytes]]:
    """Deliver `raw` as an MTA does; answers each recipient's LMTP reply."""
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo_or_helo_if_needed()
        client.mail("customer@example.com")
        accepted = [r for r in rcpts if client.rcpt(r)[0] == 250]
        # LMTP answers DATA once per accepted recipient: the first reply, then the others.
        replies = [client.data(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))]
        replies += [client.getreply() for _ in accepted[1:]]
        return dict(zip(accepted, replies, strict=True))


def test_mail_from_the_mta_is_routed_at_once_and_the_mailbox_copy_is_not_routed_again(
        product: Product, lmtp: int) -> None:
    worker = start(product, "worker", log="worker.log")
    try:
        _, raw = customer_mail("Jane Doe <jane@globex.com>", "Export", to=product.alias)
        replies = hand_over(lmtp, [product.alias], raw)
        assert replies == {product.alias: (250, b"2.0.0 OK: routed (CS-1001 -> alice@acme.com)")}
        (forward,) = product.smtp.wait_for(1, timeout=30)
        product.deliver(raw)  # the MTA's other copy, to the alias mailbox
        # Jane's reply reaches the mailbox first this time; the MTA's copy comes late.
        _, reply = customer_mail("Jane Doe <jane@globex.com>", "Re: [CS-1001] Export",
                                 to=product.alias)
        product.deliver(reply)
        product.cli("run", "--exit-when-idle")
        product.smtp.wait_for(2, timeout=30)
        assert hand_over(lmtp, [product.alias], reply) == {
            product.alias: (250, b"2.0.0 OK: routed before")}
        product.cli("worker", "--burst")
    finally:
        code = stop(worker)
    assert code == 0
    assert str(forward.message["Subject"]) == "[CS-1001] Export"
    sent = product.smtp.messages
    assert [str(r.message["Subject"]) for r in sent] == [
        "[CS-1001] Export", "Re: [CS-1001] Export"]
    assert sent[1].rcpt_tos == forward.rcpt_tos  # the same CSM keeps the thread


def test_a_message_to_quarantine_is_left_to_the_mailbox(product: Product, lmtp: int) -> None:
    raw = b"From: \r\nSubject: \xff\xfe\r\n\r\n"  # no sender, no Message-ID: unroutable
    assert hand_over(lmtp, [product.alias], raw) == {
        product.alias: (250, b"2.0.0 OK: left to the mailbox's router")}
    product.deliver(raw)
    assert product.route() == []
    client = product.mailbox.imap_client()  # the mailbox's router kept it aside
    assert client.select_folder("Quarantine", readonly=True)[b"EXISTS"] == 1
    assert "left to the mailbox's router" in (product.workdir / "lmtp.log").read_text()


def test_with_redis_down_the_mta_keeps_the_message(product: Product) -> None:
    (port, dead) = free_ports(2)
    product.env |= {"ROUTER_LMTP_ADDRESS": f"127.0.0.1:{port}",
                    "ROUTER_REDIS_URL": f"redis://127.0.0.1:{dead}/0"}
    server = start(product, "lmtp", log="lmtp.log")
    try:
        listening(product)
        _, raw = customer_mail("Jane Doe <jane@globex.com>", "Export", to=product.alias)
        (code, text), = hand_over(port, [product.alias], raw).values()
    finally:
        assert stop(server) == 0
    assert code == 451 and text.startswith(b"4.3.0")  # queued at the MTA, tried again


def test_one_listener_for_every_team_by_recipient(
        teams: Product, us_mailbox: Mailbox) -> None:  # noqa: F811
    teams.cli("run", "--exit-when-idle")  # each team's numbering started
    (port,) = free_ports(1)
    teams.env["ROUTER_LMTP_ADDRESS"] = f"127.0.0.1:{port}"
    server = start(teams, "lmtp", log="lmtp.log")
    try:
        listening(teams)
        _, raw = customer_mail("Joe Roe <joe@initech.io>", "Invoice", to=us_mailbox.user)
        # As a transport map hands it over: the alias's local part at a pseudo-domain.
        pseudo = us_mailbox.user.replace("@acme.com", "@csm-router.lmtp")
        replies = hand_over(port, [pseudo, "nobody@acme.com"], raw)
        teams.cli("worker", "--burst")
    finally:
        assert stop(server) == 0
    # nobody@ was refused at RCPT: no reply of its own after DATA.
    assert list(replies) == [pseudo] and replies[pseudo][0] == 250
    (sent,) = teams.smtp.messages
    assert sent.rcpt_tos[0] in {"carol@acme.com", "dan@acme.com"}  # team us's pool
    assert subprocess.run(["pgrep", "-f", "csm_router.cli lmtp"],
                          capture_output=True).stdout == b""
