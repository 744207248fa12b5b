"""Languages: each new thread's language detected from its text, and handed out among the
CSMs who read it, with the whole pool as the fallback that the forward explains."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from csm_router.config import ConfigError, load_settings
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.lead import report
from csm_router.lead.threadpage import thread_view
from csm_router.mail.language import Detector
from csm_router.runtime import Runtime
from csm_router.state import pool
from csm_router.state.store import Outcome, Store, message_key
from data.languages import MAILS

ALICE, BOB, CAROL = "alice@acme.com", "bob@acme.com", "carol@acme.com"
LANGUAGES = f"{ALICE}=de,en; {BOB}=en,es; {CAROL}=fr,en"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def detector() -> Detector:
    found = Detector(frozenset({"de", "fr", "es"}))
    found.load()
    return found


def test_the_detector_names_the_language_of_a_few_sentences(detector: Detector) -> None:
    results = [(code, detector.detect(text)) for code, texts in MAILS.items() for text in texts]
    wrong = [(code, found) for code, found in results if found != code]
    assert wrong == [], f"{len(results) - len(wrong)}/{len(results)} right"


@pytest.mark.parametrize("text", ["ok", "Thx!", "", "   ", "+1", "CS-1042"])
def test_a_text_too_short_to_tell_names_no_language(detector: Detector, text: str) -> None:
    assert detector.detect(text) is None


def make_runtime(**settings: Any) -> Runtime:
    values: dict[str, Any] = {"alias": "success@acme.com", "pool": f"{ALICE}, {BOB}, {CAROL}",
                              "away": "", "max_open_per_csm": 0, "languages": LANGUAGES}
    rt = Runtime.from_settings(load_settings(**(values | settings)), fakeredis.FakeRedis())
    rt.store.ensure_sequence()
    return rt


def write(rt: Runtime, n: int, text: str, at: float = NOW) -> Outcome:
    """A new customer's mail, routed as the router does (detection included)."""
    raw = (f"From: c{n}@customer{n}.com\r\nTo: success@acme.com\r\nSubject: Question {n}\r\n"
           f"Message-ID: <m{n}@example.com>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           f"{text}\r\n").encode()
    msg = parse(raw)
    assert rt.languages is not None
    language = rt.languages.detect(f"{msg.subject}\n{msg.fresh_text}")
    store: Store = rt.store
    decision = decide(msg, store.snapshot(msg, at, language=language))
    return store.record(message_key(msg, raw), msg, decision, at, raw=raw, language=language)


def test_new_threads_go_to_csms_who_read_their_language() -> None:
    rt = make_runtime()
    owners = {code: {write(rt, 100 * i + n, text).owner for n, text in enumerate(texts)}
              for i, (code, texts) in enumerate(MAILS.items())}
    assert owners["de"] == {ALICE}
    assert owners["fr"] == {CAROL}
    assert owners["es"] == {BOB}
    assert owners["en"] == {ALICE, BOB, CAROL}  # everyone reads English: the whole pool
    outcome = write(rt, 999, MAILS["de"][0])
    thread = rt.store.thread(outcome.ref)
    assert thread["language"] == "de"
    (event,) = [e for e in rt.store.events(outcome.ref) if e.get("event") == "new"]
    assert "among those who read German" in event["why"]


def test_with_no_reader_available_the_whole_pool_takes_it_and_says_why() -> None:
    rt = make_runtime()
    pool.set_away(rt.store, ALICE)
    outcome = write(rt, 1, MAILS["de"][1])
    assert outcome.owner in {BOB, CAROL}
    (event,) = [e for e in rt.store.events(outcome.ref) if e.get("event") == "new"]
    assert "nobody who reads German can take it now: to the whole pool" in event["why"]
    (entry,) = outcome.owed
    why = rt.store.redis.hget(f"csm:outbox:e:{entry}", "args")
    assert why is not None and b"nobody who reads German" in why  # the forward says so


def test_languages_name_pool_members_and_known_codes() -> None:
    with pytest.raises(ConfigError, match="ROUTER_LANGUAGES"):
        load_settings(alias="success@acme.com", pool=ALICE, languages="dave@acme.com=de")
    with pytest.raises(ConfigError, match="xx"):
        load_settings(alias="success@acme.com", pool=ALICE, languages=f"{ALICE}=de,xx")
    assert load_settings(alias="success@acme.com", pool=ALICE, languages="").readers == {}


def test_the_report_and_the_thread_name_the_language() -> None:
    rt = make_runtime()
    german = write(rt, 1, MAILS["de"][0])
    write(rt, 2, MAILS["fr"][0])
    pool.set_away(rt.store, ALICE)
    write(rt, 3, MAILS["de"][1])  # no German reader free: the whole pool
    day = datetime.fromtimestamp(NOW, UTC).date()
    figures = report.build(rt.store, day, day + timedelta(days=1))
    rows = {x.language: (x.name, x.came_in, x.to_a_reader, x.to_the_pool)
            for x in figures.languages}
    assert rows == {"de": ("German", 2, 1, 1), "fr": ("French", 1, 1, 0)}
    assert figures.as_dict()["languages"][0] == {
        "language": "de", "name": "German", "came_in": 2, "to_a_reader": 1, "to_the_pool": 1}
    assert "de:to_the_pool,1" in figures.csv()
    view = thread_view(rt.store, german.ref, NOW)
    assert view is not None
    assert ("language", "German") in view["facts"]
