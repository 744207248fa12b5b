"""Thread references and signature tags as they appear in real text."""

from __future__ import annotations

import pytest

from csm_router.core.threads import (
    account_of,
    format_tag,
    is_free_mail,
    is_own_message_id,
    new_tag,
    parse_ref,
    refs_in_subject,
    refs_in_text,
    reply_subject,
    same_customer,
    subject_with_ref,
    tags_in_text,
)


def test_a_typed_reference_reads_as_its_thread_number() -> None:
    typed = ("CS-1042", "cs-1042", " 1042 ", "CS-\u0661\u0660\u0664\u0662", "CS-", "CS-1042x",
             "CS-" + "9" * 13)
    assert [parse_ref(t) for t in typed] == [1042, 1042, 1042, None, None, None, None]


def test_every_prefix_language_counts_as_a_reply_and_a_list_tag_ends_the_prefixes() -> None:
    for subject in ("Antw: Offer", "Res: Offer", "Odp: Offer", "Enc: Offer", "Doorst: Offer",
                    "Re[2]: Offer", "SV: VS: Offer"):
        assert reply_subject(subject) == subject
        assert subject_with_ref(subject, 1042).endswith(": [CS-1042] Offer")
    assert reply_subject("[EXT] Re: Offer") == "Re: [EXT] Re: Offer"
    assert subject_with_ref("[EXT] Re: Offer", 1042) == "[CS-1042] [EXT] Re: Offer"


def test_subject_gets_one_reference() -> None:
    assert subject_with_ref("Renewal", 1042) == "[CS-1042] Renewal"
    assert subject_with_ref("Re: [CS-1042] Renewal", 1042) == "Re: [CS-1042] Renewal"
    assert subject_with_ref("RE: AW: Renewal", 1042) == "RE: AW: [CS-1042] Renewal"


def test_reply_subject_does_not_stack() -> None:
    assert reply_subject("Renewal") == "Re: Renewal"
    assert reply_subject("RE: Renewal") == "RE: Renewal"
    assert reply_subject("AW: Renewal") == "AW: Renewal"


def test_reference_found_in_reply_subjects() -> None:
    assert refs_in_subject("RE: AW: [cs-1042] Renewal") == [1042]
    assert refs_in_subject("Fwd: [ CS-1043 ] x [CS-1042]") == [1043, 1042]
    assert refs_in_subject("CS-1042 without brackets") == []


def test_reference_in_body_bare_or_bracketed() -> None:
    assert refs_in_text("About CS-1042, and [CS-1043].") == [1042, 1043]
    assert refs_in_text("ABCS-1042 or CS-10 or CS-1042x") == []


def test_tag_survives_quoting_and_case() -> None:
    tag = new_tag()
    quoted = f"> Alice Smith\n>> success@acme.com · {format_tag(tag).lower()}\n"
    assert tags_in_text(quoted) == [tag]
    assert tags_in_text(f"<td>{format_tag(tag)}</td>") == [tag]


def test_tags_do_not_match_references_or_longer_words() -> None:
    assert tags_in_text("CS-123456 and CSM-ABCDEFG and XCSM-ABCDEF") == []


def test_a_subject_carries_one_reference_only() -> None:
    assert subject_with_ref("Re: [CS-1001] Renewal", 1002) == "Re: [CS-1002] Renewal"
    assert subject_with_ref("Re: [CS-1002] Renewal", 1002) == "Re: [CS-1002] Renewal"


PROVIDERS = ("rediffmail.com", "hotmail.co.uk", "t-online.de", "yahoo.co.jp", "gmx.de",
             "mail.ru", "qq.com", "gmail.com", "hey.com")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_two_people_at_a_free_mail_provider_are_two_customers(provider: str) -> None:
    assert is_free_mail(provider)
    assert account_of(f"Asha@{provider}") == f"asha@{provider}"
    assert not same_customer(f"asha@{provider}", f"ravi@{provider}")
    assert same_customer(f"asha@{provider}", f"ASHA@{provider}")


def test_colleagues_at_a_company_are_one_customer() -> None:
    assert not is_free_mail("globex.com")
    assert account_of("Jane@Globex.com") == "globex.com"
    assert same_customer("jane@globex.com", "bob@globex.com")
    assert same_customer("jane@globex.com", "bob@eu.globex.com")
    assert not same_customer("jane@globex.com", "bob@initech.com")
    # A company and a free-mail address are never one customer, whatever the domains.
    assert not same_customer("jane@globex.com", "jane@gmail.com")


def test_only_ids_of_our_own_form_at_the_alias_domain_are_ours() -> None:
    assert is_own_message_id("<fwd.0123abcd.89ef@acme.com>", "acme.com")
    assert is_own_message_id("<support-copy.0a1b2c@ACME.com>", "acme.com")
    assert not is_own_message_id("<fwd.0123abcd.89ef@globex.com>", "acme.com")
    assert not is_own_message_id("<CAF1x2=abc@mail.gmail.com>", "acme.com")
    # A CSM's own mail client at the alias's domain writes ids of another form.
    assert not is_own_message_id("<8A1B2C3D-4E5F-6789-ABCD-0123456789AB@acme.com>", "acme.com")
