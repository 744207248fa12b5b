"""Who may steer, on real servers: a forged or borrowed proof moves no thread, and a
customer's command quoted in a CSM's reply is not the CSM's."""

# ruff: noqa: RUF001 - localized quote headers are meant to hold full-width punctuation

from __future__ import annotations

import pytest

from support.product import ALICE, AUTHSERV, BOB, CAROL, GENUINE, Product, body_of, customer_mail

pytestmark = pytest.mark.integration

SECRET = "a-secret-of-the-site-0123456789"
FORGED = "mx.evil.example; dmarc=pass header.from=acme.com"
# A valid address whose local part is RFC 2047 text: decoded, it reads
# "x;dmarc=pass header.from=acme.com (" and its "(" would swallow what follows it.
ENCODED_SENDER = "=?utf-8?q?x=3Bdmarc=3Dpass=20header.from=3Dacme.com=20=28?=@attacker.example"


def quarantined(product: Product) -> int:
    client = product.mailbox.imap_client()
    return int(client.select_folder("Quarantine", readonly=True)[b"EXISTS"])


def start_thread(product: Product, body: str = "Hello,\n\nCould you help?\n") -> str:
    """Jane's new thread CS-1001; answers its owner (Alice: first in the round-robin)."""
    product.write("Jane Doe <jane@globex.com>", "Export question", body)
    (forward,) = product.route()
    assert forward.rcpt_tos == [ALICE]
    return ALICE


def forge(product: Product, owner: str, body: str, results: str,
          mail_from: str = "customer@example.com") -> None:
    """Mail as `owner` copied to the alias, under `results` as if the server wrote them."""
    _, raw = customer_mail(f"Owner <{owner}>", "Re: [CS-1001] Export question", body,
                           to="jane@globex.com", cc=product.alias)
    product.mailbox.deliver(f"Authentication-Results: {results}\r\n".encode() + raw,
                            mail_from=mail_from)


def assert_unmoved_and_routing_goes_on(product: Product, owner: str, held: int) -> None:
    thread = product.cli("thread", "CS-1001").stdout
    assert "reassigned" not in thread and "closed" not in thread
    assert owner in thread
    assert quarantined(product) == held
    product.write("Raj Patel <raj@initech.com>", "Training for new staff")
    (forward,) = product.route()
    assert forward.rcpt_tos == [BOB]  # the round-robin's next turn
    assert str(forward.message["Subject"]) == "[CS-1002] Training for new staff"


def test_forged_results_do_not_steer_where_the_server_writes_none_and_a_reply_secret_is_set(
    product: Product,
) -> None:
    del product.env["ROUTER_TRUSTED_AUTHSERV_ID"]
    product.env["ROUTER_REPLY_SECRET"] = SECRET
    owner = start_thread(product)
    forge(product, owner, "#reassign carol@acme.com\n", FORGED)
    forge(product, owner, "#close\n", f"{FORGED}; auth=pass smtp.auth={owner}")
    assert product.route() == []
    assert_unmoved_and_routing_goes_on(product, owner, held=2)


def test_with_nothing_configured_mail_steers_nothing_and_the_router_says_so(
    product: Product,
) -> None:
    del product.env["ROUTER_TRUSTED_AUTHSERV_ID"]
    owner = start_thread(product)
    forge(product, owner, "#reassign carol@acme.com\n", FORGED)
    # Even what looks like the real server's genuine pass: nobody said whose it is.
    forge(product, owner, "#close\n", GENUINE["Authentication-Results"])
    assert product.route() == []
    started = [entry for entry in product.logs if entry.startswith("$ csm-router run")][-1]
    assert ("neither ROUTER_TRUSTED_AUTHSERV_ID nor ROUTER_REPLY_SECRET is set: mail from "
            "CSMs and Support steers nothing") in started
    assert f"Authentication-Results is from {AUTHSERV}" in started  # the latest mail's
    check = product.cli("check").stdout
    assert "steers nothing" in check
    assert f"set ROUTER_TRUSTED_AUTHSERV_ID={AUTHSERV} if that is your server" in check
    assert_unmoved_and_routing_goes_on(product, owner, held=2)


@pytest.mark.parametrize("command", ["#reassign carol@acme.com", "#close"])
def test_an_encoded_envelope_sender_cannot_forge_a_pass_in_the_pinned_servers_results(
    product: Product, command: str
) -> None:
    owner = start_thread(product)
    # The pinned server copies the envelope sender as it was given, then its own verdict.
    results = (f"{AUTHSERV}; spf=pass smtp.mailfrom={ENCODED_SENDER}; "
               "dkim=none; dmarc=fail (p=none) header.from=acme.com")
    forge(product, owner, f"{command}\n", results, mail_from=ENCODED_SENDER)
    assert product.route() == []
    assert_unmoved_and_routing_goes_on(product, owner, held=1)


def test_another_acme_mailbox_cannot_act_as_a_csm(product: Product) -> None:
    owner = start_thread(product)
    # DKIM and SPF pass for acme.com: true of every acme.com mailbox, here an intern's.
    forge(product, owner, "#reassign carol@acme.com\n",
          f"{AUTHSERV}; spf=pass smtp.mailfrom=intern@acme.com; dkim=pass header.d=acme.com")
    # DMARC passes too, but the server recorded who submitted it.
    forge(product, owner, "#close\n",
          f"{AUTHSERV}; auth=pass smtp.auth=intern@acme.com; dkim=pass header.d=acme.com; "
          "dmarc=pass header.from=acme.com")
    assert product.route() == []
    assert_unmoved_and_routing_goes_on(product, owner, held=2)


QUOTED_BLOCKS = {
    "cs": ("Díky, podívám se na to.", "Od", "Odesláno", "Komu", "Předmět",
           "úterý 3. března 2026 9:30"),
    "ja": ("確認します。", "差出人", "送信日時", "宛先", "件名", "2026年3月3日 9:30"),
    "zh": ("收到，我来处理。", "发件人", "发送时间", "收件人", "主题", "2026年3月3日 9:30"),
    # A language the splitter does not know: the quoted command is caught by matching
    # the customer's own mail instead.
    "ko": ("확인하겠습니다.", "보낸 사람", "보낸 날짜", "받는 사람", "제목",
           "2026년 3월 3일 화요일 오전 9:30"),
}


@pytest.mark.parametrize("locale", sorted(QUOTED_BLOCKS))
def test_a_customers_command_quoted_by_a_localized_outlook_is_not_obeyed(
    product: Product, locale: str
) -> None:
    request = "Please move this to Carol.\n\n#reassign carol@acme.com\n"
    owner = start_thread(product, request)
    words, sender, sent, to, subject, date = QUOTED_BLOCKS[locale]
    reply = (f"{words}\n\n{sender}: Jane Doe <jane@globex.com>\n{sent}: {date}\n"
             f"{to}: Acme Customer Success <{product.alias}>\n{subject}: Export question\n\n"
             f"Hello,\n\n{request}")
    product.staff_writes(owner, "RE: [CS-1001] Export question", reply,
                         to="jane@globex.com", cc=product.alias)
    sent_now = product.route()
    thread = product.cli("thread", "CS-1001").stdout
    assert "reassigned" not in thread and CAROL not in thread
    if locale == "ko":  # the command was seen, and refused with a reason
        (refusal,) = sent_now
        assert refusal.rcpt_tos == [owner]
        assert "customer's mail has the same line" in body_of(refusal)
    else:
        assert sent_now == []  # a plain answer: recorded, nothing to confirm
    assert "answered" in thread or "reply" in thread
    assert_unmoved_and_routing_goes_on(product, owner, held=0)
