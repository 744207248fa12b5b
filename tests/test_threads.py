"""Thread references and signature tags as they appear in real text."""

from __future__ import annotations

from csm_router.threads import (
    format_tag,
    new_tag,
    refs_in_subject,
    refs_in_text,
    reply_subject,
    subject_with_ref,
    tags_in_text,
)


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
