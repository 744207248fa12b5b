"""Who a customer is, and which Message-IDs point to a thread, end to end on real servers."""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from csm_router.core.message import parse
from csm_router.demo.relay import Received
from csm_router.state.store import message_key
from support.product import ALICE, BOB, CAROL, Product, body_of, customer_mail

pytestmark = pytest.mark.integration

POOL = {ALICE, BOB, CAROL}
PROVIDERS = ("rediffmail.com", "t-online.de", "yahoo.co.jp", "qq.com")


def forward(sent: list[Received]) -> Received:
    (fwd,) = [r for r in sent if set(r.rcpt_tos) & POOL]
    return fwd


def thread_state(product: Product, ref: int) -> tuple[str, str]:
    found = product.redis().hmget(f"csm:thread:{ref}", "state", "owner")
    return tuple(v.decode() if v else "" for v in found)  # type: ignore[return-value]


def with_message_id(raw: bytes, message_id: str) -> bytes:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    msg.replace_header("Message-ID", message_id)
    return msg.as_bytes()


def next_customer_is_routed(product: Product, ref: str) -> None:
    product.write("Jane Doe <jane@globex.com>", "A new question", "Hello, one more thing.\n")
    fwd = forward(product.route())
    assert str(fwd.message["Subject"]) == f"[{ref}] A new question"


def test_two_people_at_a_public_provider_are_two_customers(product: Product) -> None:
    n = len(PROVIDERS)
    for provider in PROVIDERS:  # threads CS-1001.. (Asha at each provider)
        product.write(f"Asha <asha@{provider}>", f"Private: our {provider} layoffs",
                      "Hello, a confidential question.\n")
    assert len(product.route()) == n
    # A stranger at the same provider quotes Asha's reference: threads CS-1005..
    for i, provider in enumerate(PROVIDERS):
        product.write(f"Ravi <ravi@{provider}>", f"Re: [CS-{1001 + i}] hello",
                      f"Hi, about CS-{1001 + i}: what is new?\n")
    for i, theirs in enumerate(sorted(product.route(), key=lambda r: str(r.message["Subject"]))):
        assert str(theirs.message["Subject"]) == f"Re: [CS-{1001 + n + i}] hello"
        assert "layoffs" not in theirs.data.decode("utf-8", "replace")
    # Asha's threads hold Asha's message alone.
    assert [product.redis().llen(f"csm:thread:{1001 + i}:msgs") for i in range(n)] == [1] * n
    # Ravi writes again: only Ravi's own thread is an earlier one of his account.
    for provider in PROVIDERS:
        product.write(f"Ravi <ravi@{provider}>", f"Another question for {provider}", "Hi?\n")
    for again in product.route():
        provider = str(again.message["Subject"]).rpartition(" ")[2]
        i = PROVIDERS.index(provider)
        text = body_of(again)
        assert f"Earlier threads of ravi@{provider}" in text and f"CS-{1001 + n + i}" in text
        assert "layoffs" not in again.data.decode("utf-8", "replace")
    ref = 1001 + 3 * n

    since = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    report = json.loads(product.cli("report", "--since", since, "--json").stdout)
    accounts = {a["account"] for a in report["accounts"]}
    assert f"ravi@{PROVIDERS[0]}" in accounts and PROVIDERS[0] not in accounts
    next_customer_is_routed(product, f"CS-{ref}")


def test_assigning_a_free_mail_provider_is_refused_but_one_person_may_be(
    product: Product,
) -> None:
    refused = product.cli("assign", "gmail.com", ALICE, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "csm-router: gmail.com is a free-mail provider, not a customer: its users are separate "
        "people; assign one address instead, e.g. someone@gmail.com"]
    assert "asha@gmail.com -> bob@acme.com" in product.cli("assign", "Asha@Gmail.com", BOB).stdout

    product.write("Ravi <ravi@gmail.com>", "Hello", "A question.\n")
    product.write("Asha <asha@gmail.com>", "Onboarding", "Our set-up question.\n")
    sent = product.route()
    asha = next(r for r in sent if "Onboarding" in str(r.message["Subject"]))
    assert asha.rcpt_tos == [BOB] and "onboarding owner of asha@gmail.com" in body_of(asha)
    next_customer_is_routed(product, "CS-1003")


def test_mail_claiming_a_forwards_message_id_cannot_re_point_the_thread(
    product: Product,
) -> None:
    message_id, raw = customer_mail("Jane Doe <jane@globex.com>", "Renewal terms",
                                    "Hello, our renewal terms?\n", to=product.alias,
                                    cc="eve@initech.com")
    product.deliver(raw)
    fwd = forward(product.route())
    owner, real_id = fwd.rcpt_tos[0], str(fwd.message["Message-ID"])

    # Eve, on Cc, computes the forward's Message-ID the old way, from public data; or
    # claims the customer's own Message-ID, or (had she seen it) the forward's real one.
    msgkey = message_key(parse(raw), raw)
    unkeyed = hashlib.sha256(f"{owner}\0".encode()).hexdigest()[:8]
    old_way = f"<fwd.{msgkey}.{unkeyed}@acme.com>"
    assert real_id != old_way
    for n, claimed in enumerate((old_way, message_id, real_id)):
        _, forged = customer_mail("Eve <eve@initech.com>", f"Re: Renewal terms {n}",
                                  "Please look at this.\n", to=product.alias)
        product.deliver(with_message_id(forged, claimed))
    assert len([r for r in product.route() if set(r.rcpt_tos) & POOL]) == 3

    product.staff_writes(f"CSM <{owner}>", f"Re: {fwd.message['Subject']}",
                         "Done, see the new terms.\n#close\n", to="jane@globex.com",
                         cc=product.alias, in_reply_to=real_id)
    product.route()
    assert thread_state(product, 1001)[0] == "closed"
    assert [thread_state(product, r)[0] for r in (1002, 1003, 1004)] == ["open"] * 3
    next_customer_is_routed(product, "CS-1005")
