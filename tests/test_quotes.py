"""Reply splitting and HTML-to-text, checked on literal samples and the shared reply corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from csm_router.core.quotes import html_to_text, split_reply

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
BODIES = CORPUS / "reply-bodies"
NO_CORPUS = f"shared corpus not found at {CORPUS}"
FUSCE = "Fusce bibendum, quam hendrerit sagittis tempor"

# body file -> (first line of the reply, quoted header line); None: the body quotes nothing.
EXPECTED: dict[str, tuple[str, str | None]] = {
    "zapier-email-reply-parser/correct_sig.body": ("this is an email with a correct", None),
    "zapier-email-reply-parser/email_1_1.body": ("Hi folks", None),
    "zapier-email-reply-parser/email_1_2.body": (
        "Hi,",
        "On Tue, 2011-03-01 at 18:02 +0530, Abhishek Kona wrote:",
    ),
    "zapier-email-reply-parser/email_1_3.body": (
        "Oh thanks.",
        "On 01/03/11 7:07 PM, Russell Brown wrote:",
    ),
    "zapier-email-reply-parser/email_1_4.body": (
        "Awesome! I haven't had another problem with it.",
        "On Aug 22, 2011, at 7:37 PM, defunkt<reply@reply.github.com> wrote:",
    ),
    "zapier-email-reply-parser/email_1_5.body": ("One: Here's what I've got.", None),
    "zapier-email-reply-parser/email_1_6.body": (
        "I get proper rendering as well.",
        "On Dec 16, 2011, at 12:47 PM, Corey Donohoe",
    ),
    "zapier-email-reply-parser/email_1_7.body": (
        ":+1:",
        "On Tue, Sep 25, 2012 at 8:59 AM, Chris Wanstrath",
    ),
    # Interleaved reply under a leading quote: the unquoted lines are what is new.
    "zapier-email-reply-parser/email_1_8.body": (
        "I will reply under this one",
        "On Tue, Apr 29, 2014 at 4:22 PM, Example Dev <sugar@example.com>wrote:",
    ),
    "zapier-email-reply-parser/email_2_1.body": (
        "Outlook with a reply",
        "*From:* Google Apps Sync Team [mailto:mail-noreply@google.com]",
    ),
    "zapier-email-reply-parser/email_2_2.body": (
        "Outlook with a reply directly above line",
        "From: CRM Comments [crm-comment@example.com]",
    ),
    "zapier-email-reply-parser/email_2_3.body": (
        "Outlook with a reply above headers using unusual format",
        "*From:* Kim via Site [mailto:noreply@site.com]",
    ),
    "zapier-email-reply-parser/email_BlackBerry.body": ("Sent from my BlackBerry", None),
    "zapier-email-reply-parser/email_bullets.body": (
        "test 2 this should list second",
        "On Fri, Feb 24, 2012 at 10:19 AM, <examples@email.goalengine.com> wrote:",
    ),
    "zapier-email-reply-parser/email_gmail.body": (
        "This is a test for inbox replying to a github message.",
        "On Wed, May 18, 2016 at 11:10 PM Steven Scott <notifications@github.com>",
    ),
    "zapier-email-reply-parser/email_headers_no_delimiter.body": (
        "And another reply!",
        "From: Dan Watson [mailto:user@host.com]",
    ),
    "zapier-email-reply-parser/email_iPhone.body": ("Sent from my iPhone", None),
    "zapier-email-reply-parser/email_multi_word_sent_from_my_mobile_device.body": (
        "Sent from my Verizon Wireless BlackBerry",
        None,
    ),
    "zapier-email-reply-parser/email_one_is_not_on.body": (
        "One outstanding question I had:",
        "On Oct 1, 2012, at 11:55 PM, Dave Tapley wrote:",
    ),
    "zapier-email-reply-parser/email_partial_quote_header.body": (
        "On your remote host you can run:",
        "On 9 Jan 2014, at 2:47, George Plymale wrote:",
    ),
    "zapier-email-reply-parser/email_sent_from_my_not_signature.body": (
        "Sent from my desk, is much easier then my mobile phone.",
        None,
    ),
    "zapier-email-reply-parser/email_sig_delimiter_in_middle_of_line.body": ("Hi there!", None),
    "zapier-email-reply-parser/greedy_on.body": (
        "On your remote host you can run:",
        "On 9 Jan 2014, at 2:47, George Plymale wrote:",
    ),
    "zapier-email-reply-parser/pathological.body": (
        "I think you're onto something.",
        'On Dec 8, 2013 2:10 PM, "John Sullivan" <notifications@github.com> wrote:',
    ),
    "github-email_reply_parser/email_2_3.body": (
        "Outlook with a reply directly above line",
        "From: CRM Comments [crm-comment@example.com]",
    ),
    "github-email_reply_parser/email_long_quote.body": ("Hi folks", ">>>>>>>>>>"),
    "crisp-email-reply-parser/email_10.body": (
        FUSCE,
        "De : Company Questions<mailto:questions@company.com>",
    ),
    "crisp-email-reply-parser/email_11.body": (
        FUSCE,
        "De : Company Questions<mailto:questions@company.com>",
    ),
    "crisp-email-reply-parser/email_12.body": (
        FUSCE,
        "Van: Company Questions [mailto:questions@company.com]",
    ),
    "crisp-email-reply-parser/email_13.body": (
        FUSCE,
        "Da: Company Questions<mailto:questions@company.com>",
    ),
    "crisp-email-reply-parser/email_14.body": (FUSCE, "użytkownik Company Questions"),
    "crisp-email-reply-parser/email_15.body": ("Sent from my Wiko RIDGE FAB 4G", None),
    "crisp-email-reply-parser/email_16.body": (FUSCE, "Dnia 27 grudnia 2016 12:08"),
    "crisp-email-reply-parser/email_17.body": (FUSCE, "użytkownik Company Questions"),
    "crisp-email-reply-parser/email_18.body": (FUSCE, "From: John Jung <john@hellolucy.io>"),
    "crisp-email-reply-parser/email_19.body": (
        "On Thursday, I get proper rendering.",
        "On Dec 16, 2011, at 12:47 PM, Corey Donohoe",
    ),
    "crisp-email-reply-parser/email_20.body": (
        "On Thursday.",
        "> On May 17, 2017, at 01:42 PM, John Doe <doe@example.com> wrote:",
    ),
    "crisp-email-reply-parser/email_21.body": ("On Thursday:", None),
    "crisp-email-reply-parser/email_22.body": (
        FUSCE,
        '30.09.2017, 18.30, "John - Doe" <s.rewrre34r34reere.i@saas.com>:',
    ),
    "crisp-email-reply-parser/email_23.body": (
        FUSCE,
        "2017-11-24 16:32 GMT+01:00 Baptiste - Crisp <s.rgrefecerg.i@mail.support.crisp.chat>:",
    ),
    "crisp-email-reply-parser/email_24.body": (
        FUSCE,
        "On Wed, 14 Nov 2018 08:14:43 -0200 John Doe <john@doe.com> wrote",
    ),
    "crisp-email-reply-parser/email_25.body": (
        FUSCE,
        '11:00 AM, November 17, 2021, "John - Acme" <john@mail.acme.com>:',
    ),
    "crisp-email-reply-parser/email_26.body": (
        FUSCE,
        "Wednesday, 17 November 2021, 3:32 PM +0300 from john@mail.acme.com",
    ),
    "crisp-email-reply-parser/email_custom_quote_header.body": (
        "Thank you!",
        '2013.02.08. 7:31 keltezéssel, "Gyõrvári Eszter" írta:',
    ),
    "crisp-email-reply-parser/email_customer_quote_header_2.body": (
        "Thank you very much.",
        "From: somedude [mailto:test@webdomain.com]",
    ),
    "crisp-email-reply-parser/email_customer_quote_header_3.body": (
        "bonjour,",
        "De : Someone Somewhere <someone@yahoo.fr>",
    ),
    "crisp-email-reply-parser/email_danish_dash_separator.body": (
        FUSCE,
        "-------- Oprindelig besked --------",
    ),
    "crisp-email-reply-parser/email_emoji.body": ("🎉", None),
    "crisp-email-reply-parser/email_en_multiline_2.body": (
        FUSCE,
        "On Tue, 16 Nov 2021, 12:34 pm John - Acme <john@acme.supportcorp.com>",
    ),
    "crisp-email-reply-parser/email_finnish.body": (
        FUSCE,
        "pe 20. lokakuuta 2017 klo 17.50 John Coe",
    ),
    "crisp-email-reply-parser/email_fr_multiline.body": (
        FUSCE,
        "Le lun. 15 nov. 2021 à 19:42, John - Acme <john@acme.supportcorp.com>",
    ),
    "crisp-email-reply-parser/email_french_2.body": (
        FUSCE,
        "> Le 29 avr. 2025 à 11:11, Chris - Crisp <chris@mail.support.crisp.chat> a écrit :",
    ),
    "crisp-email-reply-parser/email_french_dash_separator.body": (
        FUSCE,
        "-------- Message d'origine --------",
    ),
    "crisp-email-reply-parser/email_german.body": (
        FUSCE,
        'Am 13.12.2017 21:11 schrieb "John Doe - Stripe <s.test.i@mail.stripe.com>:',
    ),
    "crisp-email-reply-parser/email_german_2.body": (FUSCE, "Von: John Doe <service@example.de>"),
    "crisp-email-reply-parser/email_german_3.body": ("Gesendet von Outlook für Android", None),
    "crisp-email-reply-parser/email_german_outlook.body": (
        FUSCE,
        "-----Ursprüngliche Nachricht-----",
    ),
    "crisp-email-reply-parser/email_gmail_split_line_from.body": (
        FUSCE,
        "On Mon, Aug 26, 2019 at 4:37 PM The Hiring Engine <",
    ),
    "crisp-email-reply-parser/email_ios_outlook.body": (
        "Get Outlook for iOS",
        "From: The Hiring Engine <job-applicant-incoming-text+65701@hiringenginemail.com>",
    ),
    "crisp-email-reply-parser/email_ios_outlook_fr.body": (
        "Envoyé à partir de Outlook pour iOS",
        "From: The Hiring Engine <job-applicant-incoming-text+65701@hiringenginemail.com>",
    ),
    "crisp-email-reply-parser/email_italian.body": (
        FUSCE,
        'In data 11 ottobre 2017 21:11:31 "John Doe - Stripe" <s.test.i@mail.stripe.com>',
    ),
    "crisp-email-reply-parser/email_msn.body": (
        FUSCE,
        "From: The Hiring Engine Automation <job-applicant-inbound+65560@hiringenginemail.com>",
    ),
    "crisp-email-reply-parser/email_norwegian_gmail.body": (
        FUSCE,
        "tir. 18. apr. 2017 kl. 13:09 skrev Test user <test@example.com",
    ),
    "crisp-email-reply-parser/email_original_message.body": (FUSCE, "-----original message-----"),
    "crisp-email-reply-parser/email_original_message_2.body": (
        FUSCE,
        "----- Original Message -----",
    ),
    "crisp-email-reply-parser/email_outlook_split_line_from.body": (
        FUSCE,
        "From: Human Resources",
    ),
    "crisp-email-reply-parser/email_portuguese.body": (
        FUSCE,
        "Em 10 de julho de 2017 às 16:32:35, John Doe - Stripe (",
    ),
    "crisp-email-reply-parser/email_reply_header.body": (
        "This is the latest reply.",
        "On Wed, Dec 9, Mister Example",
    ),
    "crisp-email-reply-parser/email_russian.body": (FUSCE, "John Doe <doe@example.com>:"),
    "crisp-email-reply-parser/email_sent_from.body": (
        "Sent from TypeApp",
        "On Jun 17, 2017, at 14:15, Valerian - Crisp <test@gmail.com<",
    ),
    "crisp-email-reply-parser/email_thread.body": (
        "This is new email reply in thread from bellow.",
        "On Nov 21, 2014,",
    ),
    "crisp-email-reply-parser/email_unquoted_reply.body": (
        "This is my reply.",
        "On Nov 26, 2013 you wrote:",
    ),
    "crisp-email-reply-parser/email_with_date_headers.body": ("Thank you very much.", None),
    "crisp-email-reply-parser/email_with_from_headers.body": ("[FROM]", None),
    "crisp-email-reply-parser/email_zoho.body": (
        "What is the best way to clear a Riak bucket",
        "---- On Wed, 24 Feb 2021 14:02:50 +0530 john@gmail.com wrote ----",
    ),
}

# talon-html: every sample is "Hi. I am fine." above a quote of "Hello! How are you?".
HTML_HEADERS = {
    "gmail.html": "On Thu, Jun 26, 2014 at 2:14 PM, Alexander L <a@example.com> wrote:",
    "hotmail.html": "Subject: Test message",
    "mail_ru.html": "Thu, 26 Jun 2014 14:00:51 +0400 от Alexander L <abc@example.com>:",
    "ms_outlook_2003.html": "From: Alexander L [mailto:abc@example.com]",
    "ms_outlook_2007.html": "From: Alexander L [mailto:abc@example.com]",
    "ms_outlook_2010.html": "From: Foo [mailto:foo@bar.com] On Behalf Of baz@bar.com",
    "thunderbird.html": "On 26.06.2014 14:41, Alexander L wrote:",
    "windows_mail.html": "От: Alexander L",
    "yandex_ru.html": '26.06.2014, 14:41, "Alexander L" <abc@example.com>:',
}


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace")


@pytest.mark.skipif(not BODIES.is_dir(), reason=NO_CORPUS)
def test_every_corpus_body_has_an_expectation() -> None:
    bodies = {
        str(p.relative_to(BODIES))
        for p in BODIES.glob("*/*.body")
        if not p.parent.name.startswith("talon")
    }
    assert bodies == set(EXPECTED)
    assert {p.name for p in (BODIES / "talon-html").glob("*.html")} == set(HTML_HEADERS)


@pytest.mark.skipif(not BODIES.is_dir(), reason=NO_CORPUS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_body(name: str) -> None:
    text = read(BODIES / name)
    first_line, header = EXPECTED[name]
    fresh, quoted = split_reply(text)
    assert first_line in fresh
    if header is None:
        assert quoted == ""
        assert fresh == text.strip()
    else:
        assert header not in fresh
        assert header in quoted


@pytest.mark.skipif(not BODIES.is_dir(), reason=NO_CORPUS)
@pytest.mark.parametrize("name", sorted(HTML_HEADERS))
def test_corpus_html_reply(name: str) -> None:
    fresh, quoted = split_reply(html_to_text(read(BODIES / "talon-html" / name)))
    assert fresh.startswith("Hi. I am fine.")
    assert HTML_HEADERS[name] not in fresh
    assert "Hello! How are you?" not in fresh
    assert HTML_HEADERS[name] in quoted
    assert "Hello! How are you?" in quoted


@pytest.mark.skipif(not BODIES.is_dir(), reason=NO_CORPUS)
def test_interleaved_reply_keeps_every_unquoted_line() -> None:
    fresh, quoted = split_reply(read(BODIES / "zapier-email-reply-parser/email_1_8.body"))
    assert "and under this." in fresh
    assert "okay?" not in fresh
    assert "> okay?" in quoted


@pytest.mark.skipif(not BODIES.is_dir(), reason=NO_CORPUS)
def test_pathological_long_quote_is_split() -> None:
    # 767 KB of ">" lines: the single pass over lines must get through it at all.
    text = read(BODIES / "github-email_reply_parser/email_long_quote.body")
    fresh, quoted = split_reply(text)
    assert fresh.splitlines() == [
        "Hi folks",
        "",
        "What is the best way to clear a Riak bucket of all key, values after",
        "running a test?",
    ]
    assert len(quoted) > 700_000


@pytest.mark.parametrize(
    ("text", "fresh"),
    [
        ("Thanks!\n\nOn Mon, 2 Mar 2026 at 09:00, Ann <a@x.com> wrote:\n> hi", "Thanks!"),
        ("Thanks!\n> hi\n> there", "Thanks!"),
        ("Gracias\n\nEl lun, 2 mar 2026 a las 9:00, Ann (<a@x.com>) escribió:\n> hola", "Gracias"),
        ("Dank je\n\nOp ma 2 mrt. 2026 om 09:00 schreef Ann <a@x.com>:\n> hoi", "Dank je"),
        (
            "Grazie\n\nIl giorno lun 2 mar 2026 alle 09:00 Ann <a@x.com> ha scritto:\n> ciao",
            "Grazie",
        ),
        ("Tack\n\nDen 2 mars 2026 kl. 09:00 skrev Ann <a@x.com>:\n> hej", "Tack"),
        ("Danke\n\n-----Ursprüngliche Nachricht-----\nVon: Ann\nGesendet: heute", "Danke"),
        ("Merci\n\nDe : Ann\nEnvoyé : lundi\nÀ : Bob\nObjet : Re", "Merci"),
        ("Yes\n________________________________\nFrom: Ann\nSent: Monday\nTo: Bob", "Yes"),
        ("Ok\r\n\r\nOn 2 Mar 2026, Ann <a@x.com> wrote:\r\n> hi\r\n", "Ok"),
    ],
)
def test_literal_quote_markers(text: str, fresh: str) -> None:
    got_fresh, quoted = split_reply(text)
    assert got_fresh == fresh
    assert quoted
    assert fresh not in quoted


@pytest.mark.parametrize(
    "text",
    [
        "Please call me.\n\nSent from my iPhone",
        "On Thursday we talked about it.\nAs Bob wrote: it works.",
        "From: the sales team we heard nothing.",
        "Here is the log:\n\n_______________________\nriak-users mailing list",
        "",
    ],
)
def test_text_without_quotes_is_all_fresh(text: str) -> None:
    assert split_reply(text) == (text.strip(), "")


def test_bottom_posted_reply_is_fresh() -> None:
    text = "On 04/02/2012 06:26 PM, Megan One wrote:\n> Hi\nHello"
    assert split_reply(text) == ("Hello", "On 04/02/2012 06:26 PM, Megan One wrote:\n> Hi")


def test_html_blockquote_lines_are_prefixed() -> None:
    html = (
        "<html><head><title>t</title><style>p {color: red}</style></head><body>"
        "<div>Thanks&nbsp;a lot &amp; bye<br>Ann</div>"
        "<div>On Mon, Bob &lt;b@x.com&gt; wrote:</div>"
        "<blockquote><p>First</p><p>Second</p><blockquote>Deeper</blockquote></blockquote>"
        "<script>alert(1)</script><ul><li>one</li><li>two</li></ul></body></html>"
    )
    assert html_to_text(html) == (
        "Thanks a lot & bye\nAnn\nOn Mon, Bob <b@x.com> wrote:\n"
        "> First\n>\n> Second\n>\n> > Deeper\none\ntwo"
    )


def test_html_collapses_blank_lines_and_whitespace() -> None:
    html = "<p>  a\n  b  </p><br><br><br><p>c</p><pre>x  y\n  z</pre>"
    assert html_to_text(html) == "a b\n\nc\n\nx  y\nz"


def test_html_unclosed_head_ends_at_body() -> None:
    assert html_to_text("<head><meta charset=utf-8><body>Hi there") == "Hi there"


@pytest.mark.parametrize(
    "html",
    [
        "<a " * 50_000,
        "<!--" + "<a " * 50_000,
        "<!-- > " * 50_000,
        "<![" * 50_000,
        "<blockquote>" * 50_000 + "x<br>" * 1_000,
        "<p>ok</p><![bogus keyword]><p>still here</p>",
    ],
    ids=["open-tags", "open-comment", "open-comments", "marked-sections", "nesting", "bogus"],
)
def test_hostile_html_is_converted(html: str) -> None:
    # html.parser alone is quadratic (or raises) on these; the converter must get through.
    text = html_to_text(html)
    assert isinstance(text, str)
    if "still here" in html:
        assert text == "ok\n\nstill here"
    if html.startswith("<blockquote>"):
        assert text.splitlines()[0] == "> " * 16 + "x"


@pytest.mark.parametrize(
    "line",
    ["1 <" + "@" * 390 + ":", "Note: " + "wrote " * 60 + "1:", "*" * 390 + "From", "-" * 399],
    ids=["at-signs", "verbs", "asterisks", "dashes"],
)
def test_hostile_lines_are_split(line: str) -> None:
    # Each line once cost a backtracking regex quadratic time; thousands of them must pass.
    fresh, quoted = split_reply("hi\n" + "\n".join([line] * 3000))
    assert fresh.startswith("hi")
    assert quoted == ""
