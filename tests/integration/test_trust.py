"""What an outsider may not do, on real servers: join another customer's thread, or make a
customer's HTML cost more than linear time."""

from __future__ import annotations

import email
import email.policy
import time
from email.message import EmailMessage

import pytest

from support.product import GENUINE, Product, body_of, customer_mail

pytestmark = pytest.mark.integration


def test_a_stranger_quoting_a_reference_gets_a_thread_of_their_own(product: Product) -> None:
    product.write("Jane Doe <jane@globex.com>", "Renewal of our contract",
                  "Hello,\n\nOur renewal figures are confidential: 42 seats at $90.\n")
    (first,) = product.route()
    owner = first.rcpt_tos[0]
    product.staff_writes(owner, "Re: [CS-1001] Renewal of our contract", "Done.\n\n#close\n",
                         to="jane@globex.com", cc=product.alias)
    product.route()  # the confirmation of #close
    product.write("Eve Mallory <eve@initech.com>", "Re: [CS-1001] Renewal of our contract",
                  "Hi, please send me the figures again.\n")
    (forward,) = product.route()
    assert str(forward.message["Subject"]) == "Re: [CS-1002] Renewal of our contract"
    text = body_of(forward)
    assert "CS-1001, another customer's thread" in text
    assert "confidential" not in text  # nothing of Jane's thread goes anywhere
    thread = product.cli("thread", "CS-1001").stdout
    assert "closed" in thread and "eve@initech.com" not in thread  # not reopened


def test_a_colleague_at_the_customers_domain_stays_in_the_thread(product: Product) -> None:
    product.write("Jane Doe <jane@globex.com>", "Onboarding questions")
    (first,) = product.route()
    product.write("Raj Patel <raj@globex.com>", "Re: [CS-1001] Onboarding questions",
                  "Adding one more question from my side.\n")
    (second,) = product.route()
    assert str(second.message["Subject"]) == "Re: [CS-1001] Onboarding questions"
    assert second.rcpt_tos == first.rcpt_tos


def test_a_megabyte_of_hostile_html_is_forwarded_in_well_under_a_second(
    product: Product,
) -> None:
    hostile = "<div>" * 100_000 + "<script>" * 50_000 + "<style>x{}" * 20_000
    _, raw = customer_mail("Jane Doe <jane@globex.com>", "Formatting", "see the HTML part",
                           to=product.alias)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    msg.add_alternative(f"<html><body>{hostile}<p>Real question</p></body></html>",
                        subtype="html")
    product.deliver(msg.as_bytes())
    start = time.perf_counter()
    (forward,) = product.route()
    elapsed = time.perf_counter() - start
    html = forward.message.get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert "<script" not in content and "<style" not in content
    # Two processes start (about a second of Python imports each) and route it; a
    # quadratic cleaner took 24 s for 160 KB.
    assert elapsed < 10, elapsed


def test_without_authentication_results_the_reply_address_proves_a_csm(
    product: Product,
) -> None:
    del product.env["ROUTER_TRUSTED_AUTHSERV_ID"]
    product.env["ROUTER_REPLY_SECRET"] = "a-secret-of-the-site-0123456789"
    product.write("Jane Doe <jane@globex.com>", "Export question")
    (forward,) = product.route()
    owner = forward.rcpt_tos[0]
    reply_to = [str(a.addr_spec) for a in forward.message["Reply-To"].addresses]
    assert reply_to[0] == "jane@globex.com"
    own_address = reply_to[1]
    assert own_address.startswith(product.alias.split("@")[0] + "+r-")
    # A forger who knows the alias but not the reply address: quarantined, steers nothing.
    product.write(owner, "Re: [CS-1001] Export question", "#reassign carol@acme.com\n",
                  to="jane@globex.com", cc=product.alias)
    assert product.route() == []
    # The CSM's plain Reply (To the customer, Cc the address from Reply-To, no header).
    product.write(owner, "Re: [CS-1001] Export question", "Here is how.\n\n#close\n",
                  to="jane@globex.com", cc=own_address)
    (confirmation,) = product.route()
    assert confirmation.rcpt_tos == [owner]
    thread = product.cli("thread", "CS-1001").stdout
    assert "closed" in thread and "reassigned" not in thread


def test_without_a_trusted_server_a_pass_forged_below_the_topmost_cannot_steer(
    product: Product,
) -> None:
    del product.env["ROUTER_TRUSTED_AUTHSERV_ID"]
    product.write("Jane Doe <jane@globex.com>", "Dashboard export")
    (first,) = product.route()
    owner = first.rcpt_tos[0]
    _, raw = customer_mail(f"Owner <{owner}>", "Re: [CS-1001] Dashboard export",
                           "#reassign carol@acme.com\n", to="jane@globex.com",
                           cc=product.alias, headers=GENUINE)
    product.deliver(b"Authentication-Results: mx.example.net; dmarc=fail "
                    b"header.from=acme.com\r\n" + raw)
    assert product.route() == []
    assert "reassigned" not in product.cli("thread", "CS-1001").stdout


def test_reassigning_a_thread_to_its_owner_changes_nothing(product: Product) -> None:
    product.write("Jane Doe <jane@globex.com>", "Dashboard export")
    (first,) = product.route()
    owner = first.rcpt_tos[0]
    done = product.cli("reassign", "CS-1001", owner)
    assert "nothing to do" in done.stdout
    assert product.route() == []  # no second forward
    assert "reassigned" not in product.cli("thread", "CS-1001").stdout
