"""The technical-request classifier: default rules per family, tricky mail, rule files."""

from __future__ import annotations

import _sre
import fnmatch
import importlib.util
import pickle
import re
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from csm_router.core.classify import (
    _NORMALISE,
    MAX_CHARS,
    Classification,
    Match,
    Rule,
    RuleSet,
    _classify,
    _fold,
    classify,
    examined_text,
)
from csm_router.core.message import Inbound, MalformedMessageError, parse
from csm_router.core.rulefile import RuleFileError, load_rules

RULES = load_rules(None)


def mail(body: str, subject: str = "Question", *, attachment: str | None = None) -> Inbound:
    """A customer email with `body` as its text, optionally with a named attachment."""
    head = (
        "From: Dana Customer <dana@customer.example>\n"
        "To: Acme Customer Success <success@acme.com>\n"
        f"Subject: {subject}\n"
        "Date: Tue, 03 Mar 2026 09:00:00 +0000\n"
        "Message-ID: <c1@customer.example>\n"
        "MIME-Version: 1.0\n"
    )
    if attachment is None:
        raw = head + "Content-Type: text/plain; charset=utf-8\n\n" + body + "\n"
    else:
        raw = (
            head
            + 'Content-Type: multipart/mixed; boundary="b1"\n\n'
            + "--b1\nContent-Type: text/plain; charset=utf-8\n\n"
            + body
            + "\n--b1\nContent-Type: application/octet-stream\n"
            + f'Content-Disposition: attachment; filename="{attachment}"\n\n'
            + "2026-03-03 08:59:59 INFO started\n--b1--\n"
        )
    return parse(raw.encode())


def verdict(body: str, subject: str = "Question", rules: RuleSet = RULES) -> Classification:
    return classify(mail(body, subject), rules)


def matched(result: Classification) -> dict[str, str]:
    return {m.rule: m.text for m in result.matches}


# --- one example per default rule: the rule matches, and the words it reports ---------------

RULE_EXAMPLES = [
    ("stack-trace", 'Traceback (most recent call last):\n  File "app.py", line 3', "Traceback"),
    ("stack-trace", 'Exception in thread "main" java.lang.NullPointerException', "Exception"),
    ("stack-trace", "    at com.acme.Sync.run(Sync.java:42)", "at com.acme.Sync.run(Sync.java:42)"),
    (
        "stack-trace",
        "Uncaught TypeError: Cannot read properties of undefined",
        "Uncaught TypeError",
    ),
    ("stack-trace", "    at Object.save (/app/src/save.js:12:7)", "at Object.save"),
    ("log-excerpt", "2026-03-03T08:12:44Z ERROR sync worker died", "2026-03-03T08:12"),
    (
        "log-excerpt",
        "2026-03-03 08:12:44,120 [main] WARN Connection pool exhausted",
        "2026-03-03 08:12",
    ),
    ("log-excerpt", "[ERROR] could not write file", "[ERROR]"),
    ("http-error", "The export endpoint returns 500 since noon.", "returns 500"),
    ("http-error", "We keep getting error 502 on the dashboard.", "getting error 502"),
    ("http-error", "Every call answers HTTP 401.", "HTTP 401"),
    ("http-error", "The page title is 404 Not Found.", "404 Not Found"),
    ("http-error", "I got a 500 error when saving.", "got a 500"),
    ("error-code", "It shows error code E1234 and stops.", "error code E1234"),
    ("error-code", "Chrome says ERR_CONNECTION_RESET.", "ERR_CONNECTION_RESET"),
    ("error-message", "I get an error when I open the report.", "get an error"),
    ("error-message", "A red error message appears.", "error message"),
    ("error-mention", "There seems to be an error.", "error"),
    ("exception", "The upload throws an exception.", "exception"),
    ("bug", "I think we found a bug in the calendar view.", "bug"),
    ("outage", "Is there an outage? The site is down for everyone.", "outage"),
    ("not-loading", "The reports page is not loading at all.", "not loading"),
    ("crash", "The desktop app crashes on start.", "crashes"),
    ("login-failure", "SSO login fails for all our users.", "SSO login fails"),
    ("login-failure", "We cannot log in since the update.", "cannot log in"),
    ("login-failure", "None of us can log in this morning.", "None of us can log in"),
    ("api-failure", "The API returns an empty body for every request.", "API returns"),
    ("api-failure", "Our webhooks stopped firing on Friday.", "webhooks stopped"),
    ("timeout", "Large exports time out after a minute.", "time out"),
    ("not-working", "The search does not work.", "does not work"),
    ("not-working", "Notifications stopped working.", "stopped working"),
    ("not-working", "The filter is broken.", "broken"),
    ("access-control", "Removed users can still see the project.", "Removed users can"),
    ("known-issue", "Is this a known issue?", "Is this a known"),
    ("known-issue", "Two colleagues have the same problem.", "have the same problem"),
    ("impact", "This is blocking us from closing the month.", "This is blocking us"),
    ("unresponsive-ui", "Nothing happens when I click save.", "Nothing happens when I click"),
    ("unresponsive-ui", "I can't save my changes.", "can't save"),
    ("wrong-data", "We see wrong numbers for March.", "wrong numbers"),
    ("wrong-data", "Some data is missing from the weekly report.", "data is missing"),
    ("sync-failure", "Contacts are not syncing with Salesforce.", "not syncing"),
    ("sync-failure", "The CSV import failed twice.", "CSV import failed"),
    ("regression", "It has been like this since this morning.", "since this morning"),
    ("regression", "It used to work last week.", "used to work"),
    ("slow", "The board is extremely slow today.", "extremely slow"),
    ("diagnostics", "Steps to reproduce: open a board, drag a card.", "Steps to reproduce"),
    ("configuration", "We are configuring SAML with our IdP.", "configuring SAML"),
    ("technical-topic", "Which browser do you support?", "browser"),
    ("how-to", "How do I add a colleague?", "How do I"),
    ("how-to", "How can we share a board?", "How can we"),
    ("how-to", "Is there a way to hide archived items?", "Is there a way"),
    ("best-practice", "What are best practices for naming projects?", "best practices"),
    ("best-practice", "What would you recommend for a team of 20?", "What would you recommend"),
    ("feature-request", "Feature request: dark mode.", "Feature request"),
    ("feature-request", "Would it be possible to add a Gantt view?", "Would it be possible"),
    ("training", "Can you run a training for our new managers?", "training"),
    ("onboarding", "We would like to start onboarding the sales team.", "onboarding"),
    ("meeting", "Shall we schedule our QBR for April?", "QBR"),
    ("renewal", "Our renewal is due in May.", "renewal"),
    ("pricing", "What is the pricing for 50 more seats?", "pricing"),
    ("pricing", "We want to upgrade our plan to Enterprise.", "upgrade our plan"),
    ("billing", "Could you resend the invoice for February?", "invoice"),
]


@pytest.mark.parametrize(("rule", "body", "words"), RULE_EXAMPLES)
def test_each_default_rule_reports_the_words_it_matched(rule: str, body: str, words: str) -> None:
    found = matched(verdict(body))
    assert rule in found, verdict(body).explain()
    assert found[rule].startswith(words)


def test_every_default_rule_has_an_example_and_a_description() -> None:
    assert {rule for rule, _, _ in RULE_EXAMPLES} >= set(RULES.names) - {"log-attachment"}
    assert all(rule.description for rule in RULES.rules)


# --- verdicts on whole emails -----------------------------------------------------------------

TECHNICAL = [
    # a polite bug report without jargon
    "Hi team,\n\nsince this morning nothing happens when I click save. Could you check?\n\nThanks",
    "Hello, the API returns 500 for GET /v2/projects since 10:00 UTC.",
    "Our SSO stopped working: users see 'SAML response invalid' and can't log in.",
    "Traceback (most recent call last):\n  File \"sync.py\", line 10, in run\nKeyError: 'id'",
    "2026-03-03T07:59:01Z ERROR export job 8812 failed: connection reset by peer",
    "The app is down for everyone in our Berlin office.",
    "The March numbers in the revenue dashboard are wrong since the last update.",
    "Our Salesforce contacts are not syncing anymore.",
    "Large CSV exports time out after 60 seconds.",
    "The mobile app crashes as soon as I open a project.",
    "I think there is a bug: archived tasks still show up in search.",
    "The calendar widget doesn't work in Firefox, in Chrome it is fine.",
    "When I upload a file I get an error message saying 'upload rejected'.",
    "We can't log in with Okta since yesterday.",
    # other languages
    "Hallo, seit heute Morgen funktioniert der Export nicht mehr. Fehlermeldung: 'Zugriff "
    "verweigert'.",
    "Beim Speichern geht nichts mehr, es kommt ein Fehler.",
    "Bonjour, l'export ne marche plus depuis ce matin, j'ai une erreur.",
    "La synchronisation ne fonctionne pas.",
    "Hola, la exportación no funciona y falla con un error.",
    "Olá, o login não funciona desde ontem, aparece um erro.",
    "Hallo, het exporteren werkt niet meer, ik krijg een foutmelding.",
    "Olá, desde segunda-feira os e-mails de convite não chegam.",
    # symptoms described in plain words
    "The PDF export comes out as an empty file.",
    "Due dates are shown one hour late in the list view, since Monday.",
    "Ex-employees can still log in even though we deactivated them.",
    "I never receive the invitation emails, and my colleagues have the same problem.",
    "The app keeps logging me out every few minutes.",
    'Saving a filter shows "Something went wrong. Please try again."',
]

CS = [
    # a how-to question that mentions the API
    "Hi, is there an API endpoint to export projects?",
    # an invoice "error"
    "Hello, there is an error on our latest invoice: we were billed for 60 seats, not 50.",
    "How do I set up recurring tasks for my team?",
    "Could you share best practices for rolling out the tool to 200 people?",
    "We'd like to schedule our QBR for next month. Does Tuesday work?",
    "Our renewal is coming up; can you send a quote for 20 more seats?",
    "We want to upgrade our plan to Business. What is the pricing?",
    "Would it be possible to add a Gantt view? Feature request from our PMO.",
    "Can you run a training for our new managers next week?",
    "We are starting onboarding for the marketing team on Monday.",
    "Thursday doesn't work for me, could we meet on Friday instead?",
    "With the exception of the admins, everyone should have read-only access. How do we do that?",
    "Please find attached the signed contract.",
    "Wie können wir Vorlagen für das ganze Team anlegen?",
    "Bonjour, pourriez-vous m'envoyer la facture de mars ? Il y a une erreur dans l'adresse.",
    "Hola, ¿cómo podemos exportar los proyectos? Gracias.",
    "Olá, gostaríamos de saber o preço para mais licenças.",
    "Hoe kan ik een nieuw team aanmaken?",
    "Our usage went down by 10% last quarter, what do you recommend?",
    "Sorry, I sent the previous email in error.",
    # everyday phrasings that resemble symptoms
    "Oops, forgot the attachment: here is the signed order form.",
    "Let's get back in touch after the holidays about the renewal.",
    "I sent this twice already and still have no answer about our renewal.",
    "Sorry I'm a day late with the QBR deck.",
    "We got nothing back from your team about the quote.",
    "We would need a quote for (400-500 seats) next year.",
    "Is it normal that the renewal price went up by 20%?",
    "Guests should not be able to see budgets. How do we set that up?",
]


@pytest.mark.parametrize("body", TECHNICAL)
def test_problem_reports_are_technical(body: str) -> None:
    result = verdict(body)
    assert result.technical, result.explain()


@pytest.mark.parametrize("body", CS)
def test_questions_about_use_and_money_stay_with_cs(body: str) -> None:
    result = verdict(body)
    assert not result.technical, result.explain()


def test_an_api_how_to_question_stays_with_cs() -> None:
    result = verdict("Hi,\n\nis there an API endpoint to export projects?\n\nBest, Dana")
    assert not result.technical
    assert "how-to" in matched(result)


def test_a_polite_bug_report_without_jargon_is_technical() -> None:
    result = verdict("Hi,\n\nsince this morning nothing happens when I click save.\n\nThanks!")
    assert result.technical
    assert set(matched(result)) >= {"regression", "unresponsive-ui"}


def test_an_error_on_an_invoice_is_billing() -> None:
    result = verdict("There is an error on invoice 2026-114, the VAT number is wrong.")
    assert not result.technical
    assert set(matched(result)) >= {"error-mention", "billing"}


def test_strong_evidence_outweighs_a_how_to_question() -> None:
    result = verdict(
        "How do I fix this? The export returns 500:\nTraceback (most recent call last)"
    )
    assert result.technical
    assert "how-to" in matched(result)


def test_the_subject_counts() -> None:
    assert verdict("Can you have a look?", subject="Dashboard is down").technical


def test_a_reply_subject_is_not_read() -> None:
    body = "Confirmed, it works again, thanks! Could we schedule the admin training in April?"
    result = verdict(body, subject="Re: [Case #48213] 500 error when exporting")
    assert not result.technical, result.explain()
    assert verdict("Could you check?", subject="AW: Export returns 500").score <= 0


def test_a_forward_is_read_whole() -> None:
    forwarded = (
        "---------- Forwarded message ---------\n"
        "From: Monitoring <alerts@customer.example>\n"
        "Date: Tue, 3 Mar 2026 at 07:41\n"
        "Subject: health check failing\n"
        "To: <it@customer.example>\n\n"
        "GET https://api.acme.example/v2/health returned 502 Bad Gateway\n"
    )
    by_subject = verdict("Our IT team sent this, can you check?\n\n" + forwarded, "Fwd: alert")
    by_banner = verdict("Our IT team sent this, can you check?\n\n" + forwarded, "Alert")
    assert by_subject.technical, by_subject.explain()
    assert by_banner.technical, by_banner.explain()
    assert matched(by_banner)["http-error"] == "returned 502"


def test_typographic_apostrophes_match_and_are_reported_as_written() -> None:
    result = verdict("The timeline doesn\u2019t work anymore.")
    assert result.technical
    assert matched(result)["not-working"] == "doesn\u2019t work"


def test_a_log_attachment_is_a_technical_signal() -> None:
    bare = classify(mail("Please see attached, thanks."), RULES)
    with_log = classify(mail("Please see attached, thanks.", attachment="server.log"), RULES)
    with_har = classify(mail("See the attached file.", attachment="Session.HAR"), RULES)
    assert "log-attachment" not in matched(bare)
    assert matched(with_log)["log-attachment"] == "server.log"
    assert matched(with_har)["log-attachment"] == "Session.HAR"
    assert with_log.score == bare.score + RULES["log-attachment"].weight


def test_a_pdf_attachment_is_no_signal() -> None:
    result = classify(mail("Our purchase order.", attachment="catalog.pdf"), RULES)
    assert "log-attachment" not in matched(result)


# --- only the text written now counts ----------------------------------------------------------


def test_quoted_earlier_mail_is_ignored() -> None:
    body = (
        "Thanks, that fixed it! How do we invite guests to a board?\n\n"
        "On Mon, 2 Mar 2026 at 10:00, Dana Customer <dana@customer.example> wrote:\n"
        "> The export returns 500 and the app crashes.\n"
        "> Traceback (most recent call last):\n"
    )
    result = verdict(body, subject="Re: Question")
    assert not result.technical
    assert not {"http-error", "crash", "stack-trace"} & set(matched(result))


def test_an_outlook_quoted_block_is_ignored() -> None:
    body = (
        "Could you send me the renewal quote?\n\n"
        "From: Dana Customer <dana@customer.example>\n"
        "Sent: Monday, March 2, 2026 10:00 AM\n"
        "To: success@acme.com\n"
        "Subject: Export broken\n\n"
        "The export is broken, it returns error 502.\n"
    )
    assert not verdict(body).technical


def test_html_only_mail_is_read_as_text() -> None:
    raw = (
        "From: dana@customer.example\nTo: success@acme.com\nSubject: Help\n"
        "Message-ID: <h1@customer.example>\nMIME-Version: 1.0\n"
        "Content-Type: text/html; charset=utf-8\n\n"
        "<html><body><p>Since this morning&nbsp;<b>nothing happens</b> when I click "
        "<i>Save</i>.</p><blockquote>How do I add seats?</blockquote></body></html>\n"
    )
    result = classify(parse(raw.encode()), RULES)
    assert result.technical, result.explain()
    assert "how-to" not in matched(result)


def test_only_the_first_characters_are_examined() -> None:
    far = verdict("Hello.\n" + "Some context here. " * (MAX_CHARS // 19 + 10) + "\nIt crashes.")
    assert "crash" not in matched(far)


def _seconds(rules: RuleSet, msg: Inbound) -> float:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        classify(msg, rules)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("unit", ["a.", "at ", "\n", "(", '"a_b', "2026-03-03 08:00 ", "not "])
def test_classification_time_grows_linearly_on_hostile_text(unit: str) -> None:
    # Four times the text must cost about four times as much, not sixteen (a backtracking
    # pattern); the margin absorbs timer noise.
    text = unit * MAX_CHARS
    small = _seconds(RULES, mail(text[: MAX_CHARS // 8]))
    large = _seconds(RULES, mail(text[: MAX_CHARS // 2]))
    assert large < 8 * small + 0.05


# --- the explanation -----------------------------------------------------------------------------


def test_explain_lists_technical_matches_then_cs_matches() -> None:
    result = verdict("How do I get rid of this? The API returns 500 error.")
    line = result.explain()
    assert "\n" not in line
    assert line.startswith(f"technical (score {result.score} >= 3): ")
    assert "http-error 'returns 500'" in line
    technical, cs = line.split("; cs: ")
    assert "how-to 'How do I'" in cs
    assert "how-to" not in technical


def test_explain_for_cs_and_for_no_match() -> None:
    assert verdict("How do I add a colleague?").explain() == (
        "cs (score -2 < 3): no technical signal; cs: how-to 'How do I'"
    )
    assert verdict("Hello there.", subject="Hi").explain() == "cs (score 0 < 3): no rule matched"


def test_explain_shortens_long_multiline_matches() -> None:
    result = Classification(True, 5, (Match("stack-trace", "technical", 5, "x\n" * 80),), 3)
    line = result.explain()
    assert "\n" not in line
    assert line.endswith("…'")
    assert len(line) < 120


def test_a_classification_is_plain_data() -> None:
    result = verdict("The export returns 500.")
    assert pickle.loads(pickle.dumps(result)) == result


# --- rule files ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_default_rules_load_once() -> None:
    assert load_rules(None) is load_rules(None)
    assert RULES.threshold == 3
    assert RULES.source == "support_rules.toml (default)"
    assert {"technical", "cs"} == {rule.kind for rule in RULES.rules}


def test_a_rule_file_replaces_the_default(tmp_path: Path) -> None:
    rules = load_rules(
        write(
            tmp_path,
            'threshold = 2\n\n[[rules]]\nname = "gizmo"\ndescription = "our gizmo breaks"\n'
            "kind = \"technical\"\nweight = 2\npatterns = ['\\bgizmo\\b']\n",
        )
    )
    assert rules.names == ("gizmo",)
    assert rules.source == str(tmp_path / "rules.toml")
    assert verdict("The gizmo again.", rules=rules).explain() == (
        "technical (score 2 >= 2): gizmo 'gizmo'"
    )
    assert not verdict("The export returns 500.", rules=rules).technical


def test_a_rule_file_extends_the_default(tmp_path: Path) -> None:
    rules = load_rules(
        write(
            tmp_path,
            'extends = "default"\nthreshold = 4\ndisable = ["technical-topic"]\n\n'
            '[[rules]]\nname = "bug"\nweight = 1\n\n'
            '[[rules]]\nname = "gizmo"\nkind = "technical"\nweight = 4\n'
            "patterns = ['''\\bgizmo (?:won't|doesn't) start\\b''']\n"
            "attachments = ['*.gizmo']\n",
        )
    )
    assert rules.threshold == 4
    assert "technical-topic" not in rules.names
    assert rules.names[-1] == "gizmo"
    assert rules.names.index("bug") == RULES.names.index("bug")  # keeps its place
    assert rules["bug"].weight == 1
    assert rules["bug"].patterns == RULES["bug"].patterns  # keys not given are kept
    assert rules["bug"].kind == "technical"
    assert verdict("Our gizmo won't start.", rules=rules).technical
    assert verdict("The export returns 500.", rules=rules).technical  # defaults still apply
    assert not verdict("I found a bug.", rules=rules).technical


def test_an_extending_file_may_only_change_the_threshold(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, 'extends = "default"\nthreshold = 10\n'))
    assert rules.names == RULES.names
    assert not verdict("The export returns 500.", rules=rules).technical


RULE_FILE_ERRORS = [
    ("threshold = 3\n[[rules]\n", "not valid TOML"),
    ('threshold = 3\nextend = "default"\n', "unknown top-level key 'extend'"),
    ('extends = "strict"\n', "'extends' must be \"default\""),
    ("[[rules]]\nname = 'x'\nkind = 'cs'\nweight = 1\npatterns = ['x']\n", "missing 'threshold'"),
    ("threshold = 'high'\n", "'threshold' must be an integer"),
    ("threshold = 3\n", "no rules"),
    ("threshold = 3\nrules = 'all'\n", "'rules' must be an array of tables"),
    ("threshold = 3\n[[rules]]\nkind = 'cs'\n", "rule #1 has no 'name'"),
    ("threshold = 3\n[[rules]]\nname = 'Big Rule'\n", "'name' must be lower-case"),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'cs'\nweight = 1\npattern = ['x']\n",
        "rule 'x': unknown key 'pattern'",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'cs'\nweight = 1\n",
        "rule 'x': missing 'patterns'",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'cs'\nweight = 1\npatterns = []\n",
        "rule 'x': 'patterns' must not be empty",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'cs'\nweight = 1\npatterns = 'x'\n",
        "rule 'x': 'patterns' must be a list of strings",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'cs'\nweight = 1\npatterns = ['(oops']\n",
        "rule 'x': bad regex '(oops': missing ), unterminated subpattern",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'cs'\nweight = 1\npatterns = ['a*']\n",
        "rule 'x': regex 'a*' matches the empty string",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'support'\nweight = 1\npatterns = ['x']\n",
        "rule 'x': unknown kind 'support'",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nweight = 1\npatterns = ['x']\n",
        "rule 'x': missing 'kind'",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'cs'\npatterns = ['x']\n",
        "rule 'x': missing 'weight'",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'cs'\nweight = -2\npatterns = ['x']\n",
        "rule 'x': 'weight' must be a whole number >= 0",
    ),
    (
        "threshold = 3\n[[rules]]\nname = 'x'\nkind = 'cs'\nweight = true\npatterns = ['x']\n",
        "rule 'x': 'weight' must be a whole number >= 0",
    ),
    (
        "threshold = 3\n"
        "[[rules]]\nname = 'x'\nkind = 'cs'\nweight = 1\npatterns = ['x']\n"
        "[[rules]]\nname = 'x'\nkind = 'cs'\nweight = 1\npatterns = ['y']\n",
        "rule 'x': defined twice",
    ),
    ('threshold = 3\ndisable = ["bug"]\n', "'disable' only works with extends"),
    ('extends = "default"\ndisable = ["bugs"]\n', "'disable' names unknown rule 'bugs'"),
    (
        "extends = \"default\"\n[[rules]]\nname = 'bug'\npatterns = ['(?P<x']\n",
        "rule 'bug': bad regex",
    ),
]


@pytest.mark.parametrize(("text", "problem"), RULE_FILE_ERRORS)
def test_a_bad_rule_file_is_refused_in_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_a_missing_rule_file_is_a_rule_file_error(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match=r"nope\.toml: cannot read"):
        load_rules(tmp_path / "nope.toml")


def test_a_rule_file_error_pickles() -> None:
    error = RuleFileError("rules.toml", "bad regex", "bug")
    assert str(pickle.loads(pickle.dumps(error))) == "rules.toml: rule 'bug': bad regex"


# --- the labelled evaluation set (tests/data/classification) -----------------------------------


def test_default_rules_on_the_labelled_set(capsys: pytest.CaptureFixture[str]) -> None:
    """Precision and recall for "technical" with the shipped rules, both at least 0.9."""
    from support.labelled import labelled_set

    cases = labelled_set()
    assert len(cases) >= 80
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    wrong: list[str] = []
    for case in cases:
        result = classify(parse(case.raw), RULES)
        expected = case.label == "technical"
        outcome = ("t" if result.technical == expected else "f") + (
            "p" if result.technical else "n"
        )
        counts[outcome] += 1
        if result.technical != expected:
            wrong.append(f"  {case.label:9} {case.name}: {result.explain()}")
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    with capsys.disabled():
        print(
            f"\nlabelled set: {len(cases)} emails; technical precision {precision:.3f}, "
            f"recall {recall:.3f}\n"
            f"               predicted technical  predicted cs\n"
            f"  technical    {tp:>19}  {fn:>12}\n"
            f"  cs           {fp:>19}  {counts['tn']:>12}"
        )
        print("\n".join(["misclassified:", *wrong] if wrong else ["misclassified: none"]))
    assert precision >= 0.9
    assert recall >= 0.9


# --- fast search: the same results as searching every pattern on its own -----------------------

CORPUS = Path("/work/shared/corpus")  # third-party mail collected for testing (PROVENANCE.md)
_BENCH = Path(__file__).resolve().parents[1] / "bench"


def reference_find(rule: Rule, text: str, original: str, filenames: list[str]) -> str | None:
    """Rule.find as it was: each pattern searches the whole text, the earliest match wins."""
    first: re.Match[str] | None = None
    for pattern in rule.patterns:
        found = pattern.search(text)
        if found is not None and (first is None or found.start() < first.start()):
            first = found
    if first is not None:
        return original[first.start() : first.end()]
    for filename in filenames:
        if any(fnmatch.fnmatchcase(filename.lower(), glob) for glob in rule.attachments):
            return filename
    return None


def reference_classify(msg: Inbound, rules: RuleSet) -> Classification:
    """_classify as it was, on reference_find."""
    original = examined_text(msg)
    text = original.translate(_NORMALISE)
    filenames = [a.filename for a in msg.attachments if a.filename]
    matches = []
    for rule in rules.rules:
        found = reference_find(rule, text, original, filenames)
        if found is not None:
            matches.append(Match(rule.name, rule.kind, rule.weight, found))
    score = sum(rules[m.rule].signed_weight for m in matches)
    return Classification(score >= rules.threshold, score, tuple(matches), rules.threshold)


def _positions(text: str) -> str:
    # As `original`: a distinct character per position, so the words found are their span.
    assert len(text) < 0xFFFE
    return "".join(chr(0xF0000 + i) for i in range(len(text)))


def assert_same_finds(text: str, rules: tuple[Rule, ...]) -> None:
    """Each rule finds the same span of ``text`` as reference_find."""
    spans = _positions(text)
    for rule in rules:
        assert rule.find(text, spans, []) == reference_find(rule, text, spans, []), (
            rule.name,
            text,
        )


def _corpus() -> list[Inbound]:
    if not CORPUS.is_dir():
        pytest.skip(f"no corpus at {CORPUS}")
    messages = []
    for path in sorted(CORPUS.rglob("*")):
        if path.suffix in (".eml", ".msg", ".body", ".html"):
            try:
                messages.append(parse(path.read_bytes()))
            except MalformedMessageError:
                continue
    assert len(messages) > 200
    return messages


def _realistic() -> list[Inbound]:
    # bench/workloads.py makes the mail the benchmarks measure; it is no package.
    spec = importlib.util.spec_from_file_location("bench_workloads", _BENCH / "workloads.py")
    assert spec is not None and spec.loader is not None
    workloads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workloads)
    # 24: every turn of its eight sentences, with and without an HTML part
    return [parse(workloads.realistic(n, "success@acme.test", "Question")) for n in range(24)]


def test_the_same_classification_on_third_party_mail() -> None:
    for msg in _corpus():
        assert _classify(msg, RULES) == reference_classify(msg, RULES), msg.message_id


def test_the_same_classification_on_customer_mail() -> None:
    from support.labelled import labelled_set

    for msg in (parse(case.raw) for case in labelled_set()):
        assert _classify(msg, RULES) == reference_classify(msg, RULES), msg.message_id


def test_the_same_classification_and_spans_on_the_benchmark_mail() -> None:
    for msg in _realistic():
        assert _classify(msg, RULES) == reference_classify(msg, RULES), msg.message_id
        assert_same_finds(examined_text(msg).translate(_NORMALISE), RULES.rules)


def _example(sequence: Any, k: int) -> str:
    """A text the parsed ``sequence`` may match, taking the k-th way through alternatives."""
    out = []
    for op, av in sequence:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(av))
        elif name == "NOT_LITERAL":
            out.append("a" if av != ord("a") else "b")
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            out.append(_member(av, k))
        elif name == "BRANCH":
            out.append(_example(av[1][k % len(av[1])], k))
        elif name == "SUBPATTERN":
            out.append(_example(av[3], k))
        elif name == "ATOMIC_GROUP":
            out.append(_example(av, k))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, item = av
            out.append(_example(item, k) * (low if k % 2 else min(max(low, 1), high)))
    return "".join(out)  # anchors and lookarounds: nothing to add


def _member(items: Any, k: int) -> str:
    """A character of a parsed class, the k-th where it lists several; a guess if negated."""
    if str(items[0][0]) == "NEGATE":
        return "?" if k % 2 else "~"
    op, av = items[k % len(items)]
    if str(op) == "LITERAL":
        return chr(av)
    if str(op) == "RANGE":
        return chr(av[0])
    return {"CATEGORY_DIGIT": "7", "CATEGORY_SPACE": " ", "CATEGORY_WORD": "w"}.get(str(av), "-")


def rule_examples(rule: Rule) -> list[str]:
    """Texts made from each pattern's parse tree, every alternative once, that match it."""
    found = []
    for pattern in rule.patterns:
        tree = re._parser.parse(pattern.pattern, pattern.flags)  # type: ignore[attr-defined]
        ways = max([len(av[1]) for op, av in tree.data if str(op) == "BRANCH"] or [1])
        for k in range(max(ways, 2)):
            text = _example(tree, k)
            if pattern.search(text) or pattern.search(text := f"Hi,\n{text}\nthanks"):
                found.append(text)
    return found


# Texts a case-insensitive regex may still match: the other case, and letters re takes for
# ASCII ones though str.lower() or str.casefold() tell them apart.
CASE_TRAPS: list[Callable[[str], str]] = [
    str.upper,
    str.swapcase,
    lambda t: t.replace("s", "\u017f"),  # long s
    lambda t: t.replace("k", "\u212a").replace("K", "\u212a"),  # Kelvin sign
    lambda t: t.replace("i", "\u0130"),  # capital I with dot
    lambda t: t.replace("i", "\u0131").replace("I", "\u0131"),  # dotless i
    lambda t: t.upper().replace("I", "\u0130"),
    lambda t: t.replace("ss", "\u00df").replace("S", "\u1e9e"),  # sharp s, capital sharp s
    lambda t: t.replace("a", "\u00e4").replace("e", "\u00e9"),
]


def test_the_same_words_found_in_texts_made_from_the_rules() -> None:
    made = []
    for rule in RULES.rules:
        examples = rule_examples(rule)
        made += examples
        described = re.findall(r"'([^']+)'", rule.description)
        texts = [*examples, *described, " ".join(examples), " ".join(reversed(examples))]
        for text in texts:
            for variant in [text, *(trap(text) for trap in CASE_TRAPS)]:
                assert_same_finds(variant, (rule,))
    assert len(made) > 1000  # the examples do reach the patterns
    assert_same_finds(" ".join(made)[:MAX_CHARS], RULES.rules)


def test_every_pattern_gets_matching_examples() -> None:
    missed = [
        p.pattern
        for rule in RULES.rules
        for p in rule.patterns
        if not any(p.search(text) for text in rule_examples(Rule("x", "", "cs", 1, (p,))))
    ]
    assert len(missed) <= 10, missed


def test_case_insensitive_look_alikes_are_still_found(tmp_path: Path) -> None:
    # re matches these for ASCII letters; str.casefold() alone keeps dotless and dotted i apart.
    rules = load_rules(
        write(
            tmp_path,
            "threshold = 1\n[[rules]]\nname = 'x'\nkind = 'technical'\nweight = 1\n"
            "patterns = ['\\bskip file\\b', 'kelvin']\n",
        )
    )
    rule = rules["x"]
    for text in ("\u017fkip file", "SKIP F\u0130LE", "skip f\u0131le", "\u212aelv\u0131n"):
        assert rule.find(text, text, []) == text, text
        assert reference_find(rule, text, text, []) == text


def test_every_character_re_matches_for_an_ascii_letter_folds_like_it() -> None:
    # What the needles rely on, checked for all of Unicode: case-insensitive, re matches a
    # character for an ASCII letter only if _fold makes them alike; other characters
    # without case (by str.lower and str.upper) are matched only by themselves.
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    for letter in string.ascii_letters:
        for found in re.finditer(re.escape(letter), every, re.IGNORECASE):
            assert _fold(found.group()) == _fold(letter), (letter, found.group())
    uncased = (c for c in every if c.lower() == c == c.upper())
    assert not any(_sre.unicode_iscased(ord(c)) for c in uncased)


def test_a_rule_that_cannot_be_one_alternation_still_finds_the_earliest_match(
    tmp_path: Path,
) -> None:
    # Groups: a backreference would point elsewhere in an alternation.
    grouped = load_rules(
        write(
            tmp_path,
            "threshold = 1\n[[rules]]\nname = 'x'\nkind = 'technical'\nweight = 1\n"
            "patterns = ['(ab)\\1', 'later', 'c(?P<n>d)(?P=n)']\n",
        )
    )["x"]
    # Flags that differ: one regex could not have both.
    mixed = Rule(
        "y", "", "technical", 1, (re.compile("AB"), re.compile("zz", re.I), re.compile("ABC"))
    )
    assert grouped._alternation is None
    assert mixed._alternation is None
    assert grouped.find("cdd later abab", "cdd later abab", []) == "cdd"
    assert grouped.find("later abab", "later abab", []) == "later"
    assert grouped.find("xx ABAB", "xx ABAB", []) == "ABAB"
    assert mixed.find("ab ZZ ABC", "ab ZZ ABC", []) == "ZZ"  # "AB" is case-sensitive
    assert mixed.find("xABC zz", "xABC zz", []) == "AB"  # on a tie the earlier pattern
    for text in ("cdd later abab", "ABAB", "ab ZZ ABC", "zzABC", "none"):
        assert_same_finds(text, (grouped, mixed))


def test_a_rule_is_one_alternation_where_that_is_exact() -> None:
    assert all(rule._alternation is not None for rule in RULES.rules if len(rule.patterns) > 1)
    rule = RULES["stack-trace"]
    assert pickle.loads(pickle.dumps(rule)) == rule
    assert pickle.loads(pickle.dumps(rule))._alternation.pattern == rule._alternation.pattern


@pytest.mark.parametrize(
    ("patterns", "words"),
    [(("error", "error message"), "Error"), (("error message", "error"), "Error message")],
)
def test_on_a_tie_the_earlier_pattern_wins(patterns: tuple[str, ...], words: str) -> None:
    rule = Rule("x", "", "technical", 1, tuple(re.compile(p, re.I | re.M) for p in patterns))
    assert rule._alternation is not None
    assert rule.find("An Error message.", "An Error message.", []) == words
