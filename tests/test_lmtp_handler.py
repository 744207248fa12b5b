"""The LMTP handler's replies: routed, routed before, left to the mailbox, try again; and
whose alias a recipient is."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from csm_router.app import lmtp as lmtp_module
from csm_router.app.lmtp import LmtpHandler, Teams
from csm_router.app.routing import MAX_TRIES
from csm_router.config import load_settings
from csm_router.core.message import parse
from csm_router.demo.stage import compose
from csm_router.runtime import Runtime
from csm_router.state.store import key, message_key


def runtime(alias: str = "Acme CS <success@acme.com>") -> Runtime:
    settings = load_settings(
        imap_url="imap://u:p@127.0.0.1:1/INBOX", smtp_url="smtp://127.0.0.1:2",
        alias=alias, pool="alice@acme.com, bob@acme.com", away="", max_open_per_csm=0,
        allow_plaintext=True)
    rt = Runtime.from_settings(settings, fakeredis.FakeRedis())
    rt.store.ensure_sequence(0, lost=False, by="test")  # as the mailbox's router does
    return rt


def mail(subject: str = "Export") -> bytes:
    return compose("Jane Doe <jane@globex.com>", subject, "How do I export?\n",
                   to="success@acme.com")[1]


def test_a_message_is_routed_once_and_its_sends_owed_before_250() -> None:
    rt = runtime()
    handler = LmtpHandler(Teams({"": rt}))
    raw = mail()
    assert handler.deliver("", raw) == "250 2.0.0 OK: routed (CS-1001 -> alice@acme.com)"
    assert rt.outbox.pending() >= 1  # the forward is owed, in Redis, before the reply
    assert handler.deliver("", raw) == "250 2.0.0 OK: routed before"
    assert not rt.redis.keys(key("tries", "*"))  # nothing left counting


def test_redis_failing_answers_451_and_costs_the_message_no_try(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime()
    handler = LmtpHandler(Teams({"": rt}))

    def down(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(lmtp_module, "route", down)
    raw = mail()
    for _ in range(MAX_TRIES + 1):
        assert handler.deliver("", raw).startswith("451 4.3.0")
    assert rt.redis.hget(key("tries", "lmtp", message_key(None, raw)), "n") == b"0"


def test_a_message_that_kept_killing_the_process_is_left_to_the_mailbox() -> None:
    rt = runtime()
    handler = LmtpHandler(Teams({"": rt}))
    raw = mail()
    # Each try counted before it started, none came back: the process died each time.
    rt.redis.hset(key("tries", "lmtp", message_key(None, raw)), "n", MAX_TRIES)
    assert handler.deliver("", raw) == "250 2.0.0 OK: left to the mailbox's router"
    assert rt.store.message(message_key(parse(raw), raw)) == {}  # not routed here
    assert not rt.redis.keys(key("tries", "*"))


def test_a_bug_leaves_the_message_to_the_mailbox_instead_of_bouncing_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    rt = runtime()

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(lmtp_module, "route", broken)
    reply = LmtpHandler(Teams({"": rt})).deliver("", mail())
    assert reply == "250 2.0.0 OK: left to the mailbox's router"
    assert "internal error: KeyError" in caplog.text


def test_a_recipient_is_the_team_whose_alias_it_is_or_shares_its_local_part() -> None:
    teams = Teams({"eu": runtime("EU <success@acme.com>"),
                   "us": runtime("US <success-us@acme.com>"),
                   "de": runtime("DE <success@acme.de>")})
    assert teams.team_of("<SUCCESS-US@acme.com>") == "us"
    assert teams.team_of("success-us@csm-router.lmtp") == "us"  # a transport map's pseudo-domain
    assert teams.team_of("success-us+lmtp@csm-router.lmtp") == "us"
    assert teams.team_of("success@acme.de") == "de"
    assert teams.team_of("success@csm-router.lmtp") is None  # eu's or de's: refused
    assert teams.team_of("nobody@acme.com") is None
    alone = Teams({"": runtime()})
    assert alone.team_of("anything@csm-router.lmtp") == ""  # one team: the MTA decides
