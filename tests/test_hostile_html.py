"""Customer HTML in a forward: sanitised, unable to hide the context block, linear in time."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from csm_router.config import Address, PoolMember
from csm_router.core.message import parse
from csm_router.core.quotes import html_to_text, split_reply
from csm_router.mail.outbound import render_forward, safe_html

MB = 1024 * 1024
# A guard against super-linear blow-up, not a benchmark: quadratic on 1 MB takes minutes.
BOUND_SECONDS = 2.0


def mail_with_html(markup: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Jane <jane@globex.com>"
    msg["To"] = "success@acme.com"
    msg["Subject"] = "Hello"
    msg["Message-ID"] = "<h-1@globex.com>"
    msg.set_content("Hello in plain text.\n")
    msg.add_alternative(markup, subtype="html")
    return msg.as_bytes()


def forward_html(markup: str) -> str:
    out = render_forward(
        parse(mail_with_html(markup)), ref=1042, owner=PoolMember("alice@acme.com"),
        alias=Address("success@acme.com"), why="new thread", message_id="<f@acme.com>",
        due=None, sla_minutes=60,
    )
    back = email.message_from_bytes(out.as_bytes(), policy=email.policy.default)
    return str(back.get_body(("html",)).get_content())  # type: ignore[union-attr]


def test_active_content_and_styling_are_dropped() -> None:
    clean = safe_html(
        "<html><head><title>T</title><style>pre{display:none}</style>"
        '<meta http-equiv="refresh" content="0;url=https://evil.example"></head>'
        '<body onload="x()"><p style="color:white" class="c" onclick="x()">Hi</p>'
        "<script>alert(1)</script><iframe src=https://evil.example>frame</iframe>"
        '<form action="https://evil.example"><input name="pw"></form>'
        "<svg><text>drawn</text></svg></body></html>"
    )
    assert clean == "<p>Hi</p>"


@pytest.mark.parametrize(
    ("markup", "kept"),
    [
        ('<a href="https://acme.com/x">l</a>',
         '<a href="https://acme.com/x" rel="noopener noreferrer">l</a>'),
        ('<a href="mailto:jane@globex.com">m</a>',
         '<a href="mailto:jane@globex.com" rel="noopener noreferrer">m</a>'),
        ('<a href="javascript:alert(1)">j</a>', '<a rel="noopener noreferrer">j</a>'),
        ('<a href="java\tscript:alert(1)">j</a>', '<a rel="noopener noreferrer">j</a>'),
        ('<a href="data:text/html,<b>x</b>">d</a>', ""),  # the stray "<" defuses the tag
        ('<a href="data:text/html;base64,PGI+">d</a>', '<a rel="noopener noreferrer">d</a>'),
        ('<a href="/relative">r</a>', '<a rel="noopener noreferrer">r</a>'),
        ('<img src="cid:chart@globex" alt="chart">', '<img src="cid:chart@globex" alt="chart">'),
        ('<img src="data:image/png;base64,iVBORw0KGgo=">',
         '<img src="data:image/png;base64,iVBORw0KGgo=">'),
        ('<img src="data:image/svg+xml;base64,PHN2Zz4=">', "<img>"),
        ('<img src="https://globex.com/logo.png" width="80">',
         '<img src="https://globex.com/logo.png" width="80">'),
    ],
)
def test_links_and_images_keep_only_safe_urls(markup: str, kept: str) -> None:
    assert kept in safe_html(markup)
    if not kept:
        assert "<a" not in safe_html(markup)


def test_ordinary_formatting_and_tables_survive() -> None:
    clean = safe_html("<h2>Q3</h2><ul><li><b>bold</b><li><i>it</i></ul>"
                      "<table border=1><tr><td colspan=2>cell</table><blockquote>q</blockquote>")
    assert clean == ('<h2>Q3</h2><ul><li><b>bold</b></li><li><i>it</i></li></ul>'
                     '<table border="1"><tbody><tr><td colspan="2">cell</td></tr></tbody></table>'
                     "<blockquote>q</blockquote>")


def test_customer_markup_cannot_hide_or_close_the_context_block() -> None:
    html = forward_html(
        "<style>div, pre { display: none !important }</style>"
        "</pre></div></div></body></html>"
        '<div style="position:absolute;top:0;left:0;background:#fff">FAKE CONTEXT</div>'
        "<!-- unclosed comment swallowing what follows"
    )
    assert "display" not in html and "position" not in html and "<style" not in html
    assert html.count("</pre>") == 1 and html.count("</body>") == 1
    assert html.index("Why you: new thread") < html.index("FAKE CONTEXT")
    assert html.count("<div") == html.count("</div>")  # balanced: nothing closed ours


def test_deep_nesting_keeps_the_text_and_a_bounded_depth() -> None:
    clean = safe_html("<div>" * 5000 + "deep" + "</div>" * 5000)
    assert "deep" in clean and clean.count("<div>") <= 100


HOSTILE = {
    "less-than": "<" * MB,
    "open-tags": "<a" * (MB // 2),
    "scripts": "<script>" * (MB // 8),
    "bodies": "<body" * (MB // 5),
    "divs": "<div>" * (MB // 5),
    "blockquotes": "<blockquote>" * (MB // 12),
    "spans-then-closes": "<span>" * (MB // 12) + "</div>" * (MB // 12),
    "formatting": "".join(f'<b title="{i}">' for i in range(MB // 16)) + "<p>x</p>" * 500,
    "list-items": "<ul><li>" * (MB // 8),
    "ampersands": "&#" * (MB // 2),
    "comments": "<!--" * (MB // 4),
    "long-line": "word " * (MB // 5),
    "unclosed-quotes": '<a href="' * (MB // 9),
}


def _forward(markup: str) -> None:
    assert "Why you: new thread" in forward_html(markup)


def _text_and_split(markup: str) -> None:
    split_reply(html_to_text(markup))
    split_reply(markup)


def _seconds(work: Callable[[str], None], markup: str) -> float:
    start = time.perf_counter()
    work(markup)
    return time.perf_counter() - start


@pytest.mark.parametrize("work", [_forward, _text_and_split], ids=["forward", "text"])
@pytest.mark.parametrize("markup", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_megabyte_of_hostile_html_is_handled_in_linear_time(
    work: Callable[[str], None], markup: str
) -> None:
    elapsed = _seconds(work, markup)
    if elapsed < BOUND_SECONDS:
        return
    # Slow in absolute terms, which a loaded machine can be: then it must at least scale
    # linearly, measured against a quarter of the input in the same conditions (a
    # quadratic cost would take 16 times as long, a linear one 4).
    # Each is the best of two runs, so that one stall of a busy machine is not read as cost.
    elapsed = min(elapsed, _seconds(work, markup))
    quarter = min(_seconds(work, markup[: len(markup) // 4]) for _ in range(2))
    assert elapsed < 8 * quarter, f"{elapsed:.2f}s for 1 MB, {quarter:.2f}s for a quarter"
