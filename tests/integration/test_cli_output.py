"""`csm-router threads` and `thread` on real servers: a customer's subject and name are
printed as text, never obeyed as Rich markup or terminal control sequences."""

from __future__ import annotations

import pytest

from support.product import Product

pytestmark = pytest.mark.integration

# RFC 2047 lets a customer put any byte in a header: here ESC ] 0 ; ... BEL, which retitles
# a terminal window, and an ANSI colour change.
SUBJECT = ("=?utf-8?q?Bug_[/]_[link=3Dhttp://x]click[/link]_[black_on_black]hidden[/]"
           "_=1B]0;pwned=07=1B[31mred?=")
SHOWN = "Bug [/] [link=http://x]click[/link] [black on black]hidden[/]"
# What reaches Redis by other ways (a record written before the parser blanked controls,
# an admin's tool) with the bytes themselves.
RAW_ESCAPES = "Bug [/] \x1b]0;pwned\x07\x1b[31mred\x9b2J [link=http://x]click[/link]"


def assert_inert(stdout: str) -> None:
    assert "\x1b]" not in stdout  # no window title, no OSC 8 hyperlink
    assert "\x07" not in stdout and "\x9b" not in stdout and "\x1b[2J" not in stdout
    assert "\x1b[31m" not in stdout and "\x1b[30;40m" not in stdout  # no colour of theirs


def test_threads_and_thread_print_customer_markup_and_escapes_inert(product: Product) -> None:
    product.deliver((
        f"From: =?utf-8?q?Eve_[bold]=1B[2J?= <eve@globex.com>\r\nTo: {product.alias}\r\n"
        f"Subject: {SUBJECT}\r\nMessage-ID: <markup@globex.com>\r\n\r\nHello\r\n").encode())
    sent = product.route()
    assert len(sent) == 1  # routed like any other mail
    ref = str(sent[0].message["Subject"]).split("]")[0].strip("[")
    # As in a real terminal: colours on, wide enough that no cell is wrapped.
    product.env |= {"FORCE_COLOR": "1", "COLUMNS": "400", "TERM": "xterm-256color"}
    for args in (("threads",), ("thread", ref)):
        done = product.cli(*args)
        assert done.returncode == 0, done.stderr  # no MarkupError
        shown = done.stdout.replace("\x1b[0m", "").replace("\x1b[1m", "")
        assert SHOWN in shown, done.stdout
        assert_inert(done.stdout)

    with product.redis() as client:
        client.hset(f"csm:thread:{ref.removeprefix('CS-')}", "subject", RAW_ESCAPES)
    done = product.cli("thread", ref)
    assert "Bug [/] red [link=http://x]click[/link]" in done.stdout, done.stdout
    assert "pwned" not in done.stdout  # the whole sequence goes, not only its ESC
    assert_inert(done.stdout)

    # Routing goes on for the next customer.
    product.write("Next <next@initech.com>", "Export question")
    assert len(product.route()) == 1


def test_check_says_which_zone_the_lead_s_figures_use_and_why(product: Product) -> None:
    product.env["ROUTER_DIGEST_ADDRESS"] = "boss@acme.com"
    product.env["ROUTER_HOURS"] = ("boss@acme.com=Asia/Tokyo 09-17; "
                                   "cs-lead@acme.com=Europe/Berlin 09-17")
    done = product.cli("check")
    assert ("zone   the lead's figures and digest count days in Asia/Tokyo: the ROUTER_HOURS "
            "of boss@acme.com (ROUTER_DIGEST_ADDRESS)") in done.stdout
    del product.env["ROUTER_HOURS"]
    done = product.cli("check")
    assert "count days in UTC: neither ROUTER_DIGEST_ADDRESS nor" in done.stdout
