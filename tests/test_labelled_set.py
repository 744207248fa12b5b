"""The labelled classification set is complete, well-formed and parses with the product parser."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from csm_router.core.message import parse
from support.labelled import DATA_DIR, LABELS, Labelled, labelled_set

_REQUIRED_HEADERS = ("from", "to", "subject", "date", "message-id", "mime-version", "content-type")
_LANG = re.compile(r"\blang:([a-z]{2})\b")

SET = labelled_set()


def test_labels_csv_and_files_match() -> None:
    listed = [item.name for item in SET]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    on_disk = {p.name for p in DATA_DIR.glob("*.eml")}
    assert set(listed) - on_disk == set(), "listed but missing"
    assert on_disk - set(listed) == set(), "on disk but not listed"


def test_labels_are_known_and_balanced() -> None:
    assert {item.label for item in SET} <= set(LABELS)
    counts = Counter(item.label for item in SET)
    assert len(SET) >= 80
    assert counts["technical"] >= 35
    assert counts["cs"] >= 35
    assert all(item.note for item in SET), "every row needs a note"


@pytest.mark.parametrize("item", SET, ids=lambda item: item.name)
def test_email_parses(item: Labelled) -> None:
    inbound = parse(item.raw)  # raises MalformedMessageError for broken mail
    names = {name.lower() for name, _ in inbound.headers}
    assert set(_REQUIRED_HEADERS) <= names
    assert inbound.to == ("success@acme.com",)
    assert inbound.date is not None
    assert inbound.subject
    assert inbound.text.strip()


def test_message_ids_are_unique() -> None:
    ids = Counter(parse(item.raw).message_id for item in SET)
    assert [i for i, n in ids.items() if n > 1] == []


def test_variety() -> None:
    parsed = [parse(item.raw) for item in SET]
    html_only = [m for m in parsed if m.content_type == "text/html"]
    assert len(html_only) >= 3
    languages = Counter(m[1] for item in SET if (m := _LANG.search(item.note)) and m[1] != "en")
    assert sum(languages.values()) >= 4
    by_label = {
        label: {m[1] for item in SET if item.label == label and (m := _LANG.search(item.note))}
        for label in LABELS
    }
    assert by_label["technical"] and by_label["cs"], "other languages in both labels"
