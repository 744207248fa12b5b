"""The CSM's own words, whatever their mail client's language: a customer's command in the
quoted text is never read as the CSM's."""

# ruff: noqa: RUF001 - localized quote headers are meant to hold full-width punctuation

from __future__ import annotations

import email
from email.message import Message
from pathlib import Path

import pytest

from csm_router.core.commands import Command, command_lines, find_command
from csm_router.core.quotes import split_reply

REPLIES = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "replies" / "talon"
CUSTOMER = "Please move this to Carol.\n#reassign carol@acme.com\n"
QUOTED = "> Please move this to Carol.\n> #reassign carol@acme.com\n"
ADDR = "Dana Customer <dana@customer.example>"

# Outlook's header block over the quoted mail, as localized Outlook writes it, without ">".
OUTLOOK = {
    "cs": ("Od", "Odesláno", "Komu", "Předmět", "úterý 3. března 2026 9:30"),
    "ja": ("差出人", "送信日時", "宛先", "件名", "2026年3月3日 9:30"),
    "zh": ("发件人", "发送时间", "收件人", "主题", "2026年3月3日 9:30"),
    "zh-tw": ("寄件者", "寄件日期", "收件者", "主旨", "2026年3月3日 上午 09:30"),
    "de": ("Von", "Gesendet", "An", "Betreff", "Dienstag, 3. März 2026 09:30"),
    "fr": ("De", "Envoyé", "À", "Objet", "mardi 3 mars 2026 09:30"),
    "es": ("De", "Enviado el", "Para", "Asunto", "martes, 3 de marzo de 2026 9:30"),
    "en": ("From", "Sent", "To", "Subject", "Tuesday, March 3, 2026 9:30 AM"),
}

# Gmail's and Apple Mail's attribution lines (Gmail wraps long ones), then the quote.
ATTRIBUTIONS = {
    "en-gmail": f"On Tue, Mar 3, 2026 at 9:30 AM {ADDR} wrote:",
    "de-gmail": "Am Di., 3. März 2026 um 09:30 Uhr schrieb Dana Customer <\n"
                "dana@customer.example>:",
    "fr-gmail": f"Le mar. 3 mars 2026 à 09:30, {ADDR} a\nécrit :",
    "es-gmail": "El mar, 3 mar 2026 a las 9:30, Dana Customer (<dana@customer.example>)\n"
                "escribió:",
    "cs-gmail": f"út 3. 3. 2026 v 9:30 odesílatel {ADDR}\nnapsal:",
    "ja-gmail": f"2026年3月3日(火) 9:30 {ADDR}:",
    "zh-gmail": f"{ADDR} 于2026年3月3日周二 09:30写道：",
    "en-apple": f"On 3 Mar 2026, at 09:30, {ADDR} wrote:",
    "de-apple": f"Am 03.03.2026 um 09:30 schrieb {ADDR}:",
    "fr-apple": f"Le 3 mars 2026 à 09:30, {ADDR} a écrit :",
    "es-apple": f"El 3 mar 2026, a las 9:30, {ADDR} escribió:",
    "cs-apple": f"Dne 3. 3. 2026 v 9:30, {ADDR} napsal(a):",
    "ja-apple": f"2026/03/03 9:30、{ADDR}のメール:",
    "zh-apple": f"2026年3月3日 09:30，{ADDR} 写道：",
}


def outlook_block(locale: str, colon: str = ":") -> str:
    sender, sent, to, subject, date = OUTLOOK[locale]
    return (f"{sender}{colon} {ADDR}\n{sent}{colon} {date}\n"
            f"{to}{colon} Acme Customer Success <success@acme.com>\n{subject}{colon} Renewal\n")


@pytest.mark.parametrize(
    ("locale", "colon"),
    # Chinese and Japanese Outlook may write full-width colons.
    [(locale, ":") for locale in sorted(OUTLOOK)] + [("ja", "："), ("zh", "："), ("zh-tw", "：")],
)
def test_a_localized_outlook_header_block_ends_the_csms_words(locale: str, colon: str) -> None:
    text = f"Thanks, I will look into it.\n\n{outlook_block(locale, colon)}\n{CUSTOMER}"
    fresh, quoted = split_reply(text)
    assert fresh == "Thanks, I will look into it."
    assert find_command(fresh) is None and "#reassign carol@acme.com" in quoted


@pytest.mark.parametrize("client", sorted(ATTRIBUTIONS))
@pytest.mark.parametrize("customer", [CUSTOMER, QUOTED], ids=["unmarked", "quoted"])
def test_an_attribution_line_in_any_language_ends_the_csms_words(
    client: str, customer: str
) -> None:
    text = f"Thanks, I will look into it.\n\n{ATTRIBUTIONS[client]}\n\n{customer}"
    fresh, _ = split_reply(text)
    assert fresh == "Thanks, I will look into it."


def plain_body(path: Path) -> str:
    msg = email.message_from_bytes(path.read_bytes())
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    assert isinstance(part, Message)
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(part.get_content_charset() or "utf-8", "replace")


@pytest.mark.skipif(not REPLIES.is_dir(), reason="shared reply corpus not found")
@pytest.mark.parametrize("locale", sorted(OUTLOOK))
def test_real_outlook_reply_relabelled_for_each_locale_hides_the_customers_command(
    locale: str,
) -> None:
    # Outlook's own reply from the corpus, its header labels in the CSM's language and the
    # quoted mail replaced by a customer's command.
    text = plain_body(REPLIES / "outlook.eml")
    head, _, _ = text.partition("\n\n")  # "Hello"
    sender, sent, to, subject, _ = OUTLOOK[locale]
    block = text.split("\n\n")[1]
    for label, local in (("From", sender), ("Sent", sent), ("To", to), ("Subject", subject)):
        block = block.replace(f"\n{label}: ", f"\n{local}: ", 1)
        block = block.replace(f"{label}: ", f"{local}: ", 1) if label == "From" else block
    fresh, _ = split_reply(f"{head}\n\n{block}\n\n{CUSTOMER}")
    assert fresh == "Hello" and find_command(fresh) is None


@pytest.mark.skipif(not REPLIES.is_dir(), reason="shared reply corpus not found")
@pytest.mark.parametrize("name", ["android", "aol", "apple_mail", "comcast", "gmail",
                                  "hotmail", "outlook", "thunderbird", "yahoo"])
def test_real_client_replies_keep_only_the_reply_as_fresh(name: str) -> None:
    text = plain_body(REPLIES / f"{name}.eml")
    fresh, quoted = split_reply(text)
    assert fresh == "Hello" and quoted


def test_command_lines_are_read_from_the_customers_whole_mail() -> None:
    found = command_lines(f"Hi,\n{CUSTOMER}\n> > #CLOSE\n  #supporting\nI will #close\n")
    assert found == {"#reassign carol@acme.com", "#close"}
    assert Command("reassign", "carol@acme.com").line in found
    assert Command("close").line in found and Command("support").line not in found
