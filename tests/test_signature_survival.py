"""The product promise: a CSM's signature tag survives quoting by real mail clients.

A customer who replies in a fresh message but quotes the CSM's signature reaches that CSM, so
the tag must still be found in the parsed text (or HTML) after each client's quoting style,
transfer encoding and charset. The replies below are real ones from the shared corpus with a
signature block, as `csm-router signature` prints it, put into their quoted part.
"""

from __future__ import annotations

import base64
import quopri
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from enum import Enum
from html import escape
from pathlib import Path

import pytest

from csm_router.core.message import Inbound, parse
from csm_router.core.threads import format_tag, new_tag, tags_in_text
from csm_router.mail.outbound import render

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


class Style(Enum):
    """Where a client puts the message it quotes."""

    PREFIXED = "prefixed"  # every quoted line starts with ">"
    BELOW = "below"  # unprefixed below an Outlook header block or "On ... wrote:" line


def signature(tag: str) -> str:
    """The signature block a CSM pastes into their client, from the product's own template."""
    return render(
        "signature.txt.j2",
        name="Alice Smith",
        alias_name="Acme Customer Success",
        alias="success@acme.com",
        tag=format_tag(tag),
    )


def quote_signature(text: str, tag: str, style: Style, marker: str) -> str:
    """`text` with the signature put at the end of its quoted part, in the client's style."""
    lines = text.splitlines()
    sig = signature(tag).splitlines()
    if style is Style.PREFIXED:
        at = max(i for i, line in enumerate(lines) if line.startswith(">")) + 1
        block = [f"> {line}" for line in sig]
    else:
        at = max(i for i, line in enumerate(lines) if line.strip()) + 1
        block = ["", *sig]
    # The test is only worth something if the signature really sits in the quote.
    assert marker in "\n".join(lines[:at]), f"quote marker {marker!r} not above the signature"
    return "\n".join([*lines[:at], *block, *lines[at:]]) + "\n"


def message(
    body: str, *, subtype: str = "plain", charset: str = "utf-8", cte: str = "8bit"
) -> bytes:
    """A full customer message around `body`, encoded the way a client would send it."""
    data = body.encode(charset)
    if cte == "base64":
        payload = base64.encodebytes(data)
    elif cte == "quoted-printable":
        payload = quopri.encodestring(data)
    else:
        payload = data
    head = (
        "From: Dana Customer <dana@customer.example>\n"
        "To: Acme Customer Success <success@acme.com>\n"
        "Subject: One more question\n"
        "Date: Tue, 03 Mar 2026 11:00:00 +0000\n"
        "Message-ID: <fresh.1@customer.example>\n"
        "MIME-Version: 1.0\n"
        f'Content-Type: text/{subtype}; charset="{charset}"\n'
        f"Content-Transfer-Encoding: {cte}\n"
        "\n"
    )
    return head.encode("ascii") + payload


def corpus_file(*parts: str) -> Path:
    path = CORPUS.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"corpus file {path} not found")
    return path


def plain_body_of(path: Path) -> tuple[str, str, str]:
    """Decoded text/plain body of a corpus message, its charset and transfer encoding."""
    original = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(original, EmailMessage)
    part = original.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).lower()
    return str(part.get_content()), part.get_content_charset() or "us-ascii", cte


# -- real client replies ---------------------------------------------------------------------

# (file, quoting style, a line of the quote marker that must stand above the signature)
TALON_REPLIES = [
    ("android.eml", Style.PREFIXED, "написал:"),
    ("aol.eml", Style.BELOW, "-----Original Message-----"),
    ("apple_mail.eml", Style.PREFIXED, "bob wrote:"),
    ("apple_mail_2.eml", Style.PREFIXED, "> On 22 Aug 2015"),
    ("comcast.eml", Style.BELOW, "----- Original Message -----"),
    ("gmail.eml", Style.PREFIXED, "Megan One <xxx@gmail.com> wrote:"),
    ("hotmail.eml", Style.PREFIXED, "> From: bob@xxx.mailgun.org"),
    ("iphone.eml", Style.PREFIXED, "<bob@example.com> wrote:"),
    ("outlook.eml", Style.BELOW, "Sent: March-09-12 4:22 PM"),
    ("reply-quotations-share-block.eml", Style.BELOW, "--- On Wed, 4/4/12"),
    ("sparrow.eml", Style.PREFIXED, "4:55 PM, xxx wrote:"),
    ("thunderbird.eml", Style.PREFIXED, "Megan One wrote:"),
    ("yahoo.eml", Style.BELOW, "----- Original Message -----"),
]


@pytest.mark.parametrize(
    ("name", "style", "marker"),
    [pytest.param(*row, id=row[0].removesuffix(".eml")) for row in TALON_REPLIES],
)
def test_talon_reply_quoting_signature_reaches_its_csm(
    name: str, style: Style, marker: str
) -> None:
    text, charset, cte = plain_body_of(corpus_file("replies", "talon", name))
    tag = new_tag()
    body = quote_signature(text, tag, style, marker)
    # Keep the client's charset and encoding where they can carry the signature's "·".
    try:
        body.encode(charset)
    except UnicodeEncodeError:
        charset = "utf-8"
    cte = "8bit" if cte == "7bit" else cte

    msg = parse(message(body, charset=charset, cte=cte))

    assert tags_in_text(msg.text) == [tag], msg.text


# (file, quoting style, marker) for reply bodies without headers.
REPLY_BODIES = [
    ("zapier-email-reply-parser", "email_1_2.body", Style.PREFIXED, "Abhishek Kona wrote:"),
    ("zapier-email-reply-parser", "email_1_3.body", Style.PREFIXED, "Russell Brown wrote:"),
    ("zapier-email-reply-parser", "greedy_on.body", Style.PREFIXED, "George Plymale wrote:"),
    ("zapier-email-reply-parser", "email_2_1.body", Style.BELOW, "*Sent:* Thursday"),
    ("zapier-email-reply-parser", "email_headers_no_delimiter.body", Style.BELOW, "Sent: Monday"),
    ("zapier-email-reply-parser", "email_gmail.body", Style.BELOW, "<notifications@github.com>"),
    ("crisp-email-reply-parser", "email_ios_outlook.body", Style.BELOW, "Sent: Thursday"),
    ("crisp-email-reply-parser", "email_ios_outlook_fr.body", Style.BELOW, "Sent: Thursday"),
    ("crisp-email-reply-parser", "email_msn.body", Style.BELOW, "Sent: Wednesday"),
    ("crisp-email-reply-parser", "email_outlook_split_line_from.body", Style.BELOW, "Sent: Mon"),
    ("crisp-email-reply-parser", "email_german_outlook.body", Style.BELOW, "Betreff:"),
    ("crisp-email-reply-parser", "email_original_message.body", Style.BELOW, "original message"),
    ("crisp-email-reply-parser", "email_gmail_split_line_from.body", Style.PREFIXED, "wrote:"),
    ("crisp-email-reply-parser", "email_norwegian_gmail.body", Style.PREFIXED, "skrev Test"),
    ("crisp-email-reply-parser", "email_french_2.body", Style.PREFIXED, "> Le 29 avr. 2025"),
    ("crisp-email-reply-parser", "email_german.body", Style.BELOW, "schrieb"),
    ("crisp-email-reply-parser", "email_italian.body", Style.BELOW, "ha scritto:"),
    ("crisp-email-reply-parser", "email_portuguese.body", Style.BELOW, "escreveu:"),
    ("crisp-email-reply-parser", "email_finnish.body", Style.BELOW, "kirjoitti:"),
    ("crisp-email-reply-parser", "email_russian.body", Style.BELOW, "John Doe <doe@example.com>:"),
    ("crisp-email-reply-parser", "email_zoho.body", Style.BELOW, "john@gmail.com wrote ----"),
]


@pytest.mark.parametrize(
    ("folder", "name", "style", "marker"),
    [
        pytest.param(*row, id=f"{row[0].split('-')[0]}-{row[1].removesuffix('.body')}")
        for row in REPLY_BODIES
    ],
)
@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64"])
def test_reply_body_quoting_signature_reaches_its_csm(
    folder: str, name: str, style: Style, marker: str, cte: str
) -> None:
    text = corpus_file("reply-bodies", folder, name).read_text(encoding="utf-8")
    tag = new_tag()
    body = quote_signature(text, tag, style, marker)

    msg = parse(message(body, cte=cte))

    assert tags_in_text(msg.text) == [tag], msg.text


# (file, last piece of the quoted message to put the signature after, quote marker above it)
HTML_REPLIES = [
    ("gmail.html", "Sasha.</div>", '<blockquote class="gmail_quote"'),
    ("hotmail.html", "Sasha.</div>", "From: abc@example.com"),
    ("mail_ru.html", "Sasha.</div>", "<blockquote"),
    ("ms_outlook_2003.html", "Sasha.<o:p></o:p></span></font></p>", "Sent:</span>"),
    ("ms_outlook_2007.html", "Sasha.<o:p></o:p></span></p>", "<b>Sent:</b>"),
    ("ms_outlook_2010.html", "Hello! How are you?<o:p></o:p></p>", "<b>Sent:</b>"),
    ("thunderbird.html", "Sasha.</div>", "<blockquote"),
    ("windows_mail.html", "Sasha.</div>", "Кому:"),
    ("yandex_ru.html", "Sasha.", "<blockquote>"),
]


def html_signature(tag: str) -> str:
    lines = [escape(line).replace("·", "&middot;") for line in signature(tag).splitlines()]
    return f"<div>{'<br>'.join(lines)}</div>"


@pytest.mark.parametrize(
    ("name", "anchor", "marker"),
    [pytest.param(*row, id=row[0].removesuffix(".html")) for row in HTML_REPLIES],
)
def test_html_only_reply_quoting_signature_reaches_its_csm(
    name: str, anchor: str, marker: str
) -> None:
    html = corpus_file("reply-bodies", "talon-html", name).read_text(encoding="utf-8")
    at = html.rindex(anchor) + len(anchor)
    assert marker in html[:at], f"quote marker {marker!r} not above the signature"
    tag = new_tag()
    body = html[:at] + html_signature(tag) + html[at:]

    msg = parse(message(body, subtype="html", cte="quoted-printable"))

    assert msg.html is not None
    assert tags_in_text(msg.html) == [tag]
    assert tags_in_text(msg.text) == [tag], msg.text  # what the HTML renders to


@pytest.mark.parametrize(
    "marked_up",
    [
        pytest.param("<span class=SpellE>{tag}</span>", id="outlook-spelling-span"),
        pytest.param("<span>CSM-</span><span>{rest}</span>", id="split-over-two-spans"),
        pytest.param("CSM-<wbr>{rest}", id="word-break-opportunity"),
        pytest.param("CSM&#45;{rest}", id="hyphen-as-character-reference"),
        pytest.param(
            '<a href="mailto:success@acme.com">success@acme.com</a>&nbsp;{tag}', id="nbsp"
        ),
    ],
)
def test_tag_broken_up_by_html_markup_is_found_in_the_rendered_text(marked_up: str) -> None:
    html = corpus_file("reply-bodies", "talon-html", "gmail.html").read_text(encoding="utf-8")
    tag = new_tag()
    anchor = "Sasha.</div>"
    at = html.rindex(anchor) + len(anchor)
    sig = "<div>Alice Smith<br>" + marked_up.format(tag=format_tag(tag), rest=tag) + "</div>"

    msg = parse(message(html[:at] + sig + html[at:], subtype="html", cte="quoted-printable"))

    assert tags_in_text(msg.text) == [tag], msg.text


# -- encodings and wrapping, by hand -------------------------------------------------------------

QUOTED_REPLY = """\
Thanks, that fixed it.

On Tue, 3 Mar 2026 at 09:12, Alice Smith <success@acme.com> wrote:
> Glad to help!
>
"""


def one_message(tag: str) -> Inbound:
    return parse(message(quote_signature(QUOTED_REPLY, tag, Style.PREFIXED, "wrote:")))


@pytest.mark.parametrize("eol", [pytest.param(b"\n", id="lf"), pytest.param(b"\r\n", id="crlf")])
@pytest.mark.parametrize(
    "split", [pytest.param(i, id=f"{'CSM-XXXXXX'[:i]}=|{'CSM-XXXXXX'[i:]}") for i in range(1, 10)]
)
def test_tag_broken_by_a_quoted_printable_soft_line_break_is_found(split: int, eol: bytes) -> None:
    tag = new_tag()
    full = format_tag(tag).encode("ascii")
    lines = [
        b"From: Dana Customer <dana@customer.example>",
        b"To: Acme Customer Success <success@acme.com>",
        b"Subject: One more question",
        b"Message-ID: <qp.1@customer.example>",
        b"MIME-Version: 1.0",
        b'Content-Type: text/plain; charset="utf-8"',
        b"Content-Transfer-Encoding: quoted-printable",
        b"",
        b"Thanks, that fixed it.",
        b"",
        b"On Tue, 3 Mar 2026 at 09:12, Alice Smith <success@acme.com> wrote:",
        b"> Glad to help!",
        b">",
        b"> --=20",
        b"> Alice Smith",
        b"> Customer Success =C2=B7 Acme Customer Success",
        b"> success@acme.com =C2=B7 " + full[:split] + b"=",
        full[split:],
        b"",
    ]
    raw = eol.join(lines)
    assert full not in raw  # the soft break really is inside the tag

    msg = parse(raw)

    assert tags_in_text(msg.text) == [tag], msg.text


def test_tag_in_a_base64_body_is_found() -> None:
    tag = new_tag()
    raw = message(quote_signature(QUOTED_REPLY, tag, Style.PREFIXED, "wrote:"), cte="base64")
    assert format_tag(tag).encode() not in raw

    assert tags_in_text(parse(raw).text) == [tag]


@pytest.mark.parametrize(
    ("charset", "cte"),
    [
        pytest.param("windows-1252", "8bit", id="windows-1252-8bit"),
        pytest.param("windows-1252", "quoted-printable", id="windows-1252-qp"),
        pytest.param("iso-8859-1", "8bit", id="latin-1-8bit"),
        pytest.param("utf-8", "quoted-printable", id="utf-8-qp"),
    ],
)
def test_tag_in_an_outlook_reply_is_found_whatever_its_charset(charset: str, cte: str) -> None:
    tag = new_tag()
    outlook = (
        "I\u2019m attaching the \u201cfinal\u201d invoice \u2013 thanks!\n"
        "\n"
        "From: Alice Smith <success@acme.com>\n"
        "Sent: Tuesday, March 3, 2026 9:12 AM\n"
        "To: Dana Customer <dana@customer.example>\n"
        "Subject: RE: Invoice\n"
        "\n"
        "Glad to help!\n"
    )
    if charset == "iso-8859-1":
        outlook = outlook.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
        outlook = outlook.replace("\u2013", "-")
    body = quote_signature(outlook, tag, Style.BELOW, "Subject: RE: Invoice")
    raw = message(body, charset=charset, cte=cte)

    msg = parse(raw)

    assert "·" in msg.text  # decoded, not mangled into replacement characters
    assert tags_in_text(msg.text) == [tag]


def test_tag_in_an_8bit_windows_1252_body_labelled_us_ascii_is_found() -> None:
    tag = new_tag()
    body = quote_signature(QUOTED_REPLY, tag, Style.PREFIXED, "wrote:")
    raw = message(body, charset="windows-1252").replace(
        b'charset="windows-1252"', b"charset=us-ascii"
    )
    assert b"\xb7" in raw

    assert tags_in_text(parse(raw).text) == [tag]


@pytest.mark.parametrize(
    ("wrapped", "flowed"),
    [
        pytest.param("> success@acme.com \u00b7\n> {tag}\n", False, id="quoted-hard-wrap"),
        pytest.param(">> success@acme.com \u00b7\n>> {tag}\n", False, id="twice-quoted-wrap"),
        pytest.param("success@acme.com \u00b7\n{tag}\n", False, id="outlook-unprefixed-wrap"),
        pytest.param("> success@acme.com \u00b7 \n> {tag}\n", True, id="format-flowed-soft-break"),
        pytest.param("> success@acme.com\n> \u00b7 {tag}\n", False, id="wrapped-before-the-dot"),
    ],
)
def test_tag_on_its_own_line_after_the_client_wrapped_the_line_before_is_found(
    wrapped: str, flowed: bool
) -> None:
    tag = new_tag()
    body = (
        "Thanks, that fixed it.\n"
        "\n"
        "On Tue, 3 Mar 2026 at 09:12, Alice Smith <success@acme.com> wrote:\n"
        "> Glad to help!\n"
        "> -- \n"
        "> Alice Smith\n"
        "> Customer Success \u00b7 Acme Customer Success\n"
    ) + wrapped.format(tag=format_tag(tag))
    raw = message(body)
    if flowed:  # RFC 3676: a trailing space marks a soft line break
        raw = raw.replace(b'charset="utf-8"', b'charset="utf-8"; format=flowed', 1)

    assert tags_in_text(parse(raw).text) == [tag]


@pytest.mark.parametrize(
    "almost",
    [
        pytest.param(lambda tag: f"CSM-{tag[:5]}", id="five-characters"),
        pytest.param(lambda tag: f"CSM-{tag}7", id="seven-characters"),
        pytest.param(lambda tag: f"CSM-{tag[:3]}O{tag[4:]}", id="letter-O-not-in-alphabet"),
        pytest.param(lambda tag: f"CSM-{tag[:3]}-{tag[3:]}", id="dash-inside"),
    ],
)
def test_text_with_something_that_is_almost_a_tag_finds_none(
    almost: Callable[[str], str],
) -> None:
    tag = new_tag()
    fake = almost(tag)
    body = quote_signature(QUOTED_REPLY, tag, Style.PREFIXED, "wrote:")
    body = body.replace(format_tag(tag), fake)
    assert fake in body

    msg = parse(message(body))

    assert fake in msg.text
    assert tags_in_text(msg.text) == []


def test_same_reply_with_the_real_tag_finds_it() -> None:
    # The same message as the negatives above, with the real tag: proves they can fail.
    tag = new_tag()

    assert tags_in_text(one_message(tag).text) == [tag]
