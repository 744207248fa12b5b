"""Is a customer email a technical request for Support? Weighted, explainable regex rules.

The rules live in a TOML file (``rulefile`` reads and checks it; the default ships as
``support_rules.toml``, whose header explains the format). ``classify`` is pure: it reads
what the customer wrote now (see ``examined_text``) and answers a :class:`Classification`
that says which rules matched and on what words, so the routing decision can explain
itself in one line.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from csm_router.core.message import Inbound
from csm_router.core.threads import SUBJECT_PREFIX

__all__ = [
    "MAX_CHARS",
    "Classification",
    "Match",
    "Rule",
    "RuleSet",
    "classify",
    "examined_text",
]

Kind: TypeAlias = Literal["technical", "cs"]

MAX_CHARS = 20_000  # a request states its problem early; the cap keeps classify cheap
# Where the rules came from when nobody named a file: the one shipped (rulefile.DEFAULT_FILE).
DEFAULT_SOURCE = "support_rules.toml (default)"
_EXPLAIN_CHARS = 60
# A reply's subject repeats the earlier mail's ("Re: 500 error on export") and says nothing
# about what the customer writes now. A forward brings new content for us (an alert, a
# colleague's error report), so it is read whole: by subject prefix (threads.SUBJECT_PREFIX),
# or by the banner that ends the fresh text (quotes.split_reply cuts the body right after it).
_FORWARD_BANNER = re.compile(
    r"(?:-{2,}\s*(?:forwarded message|weitergeleitete nachricht|message transf[ée]r[ée]"
    r"|mensaje reenviado|mensagem encaminhada|doorgestuurd bericht|messaggio inoltrato)\s*-{2,}"
    r"|begin forwarded message:|anfang der weitergeleiteten nachricht:"
    r"|d[ée]but du message r[ée]exp[ée]di[ée]\s*:)\s*\Z",
    re.I,
)
# One-for-one replacements, so a match's span in the normalised text is its span in the
# original: patterns then need only the ASCII apostrophe and a plain space.
_NORMALISE = str.maketrans(
    {
        "\u2019": "'",  # right single quotation mark, what most mail clients type
        "\u2018": "'",
        "\u02bc": "'",
        "\u00b4": "'",
        "\u201c": '"',  # typographic double quotes around quoted error messages
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u00a0": " ",  # no-break spaces from HTML mail
        "\u202f": " ",
        "\u2007": " ",
    }
)


@dataclass(frozen=True)
class Rule:
    """One named signal: case-insensitive regexes and/or attachment name globs."""

    name: str
    description: str
    kind: Kind
    weight: int
    patterns: tuple[re.Pattern[str], ...] = ()
    attachments: tuple[str, ...] = ()

    @property
    def signed_weight(self) -> int:
        """What a match adds to the score: technical rules add, cs rules subtract."""
        return self.weight if self.kind == "technical" else -self.weight

    def find(self, text: str, original: str, filenames: Iterable[str]) -> str | None:
        """The earliest words of ``original`` this rule matches, else a matching filename."""
        first: re.Match[str] | None = None
        for pattern in self.patterns:
            found = pattern.search(text)
            if found is not None and (first is None or found.start() < first.start()):
                first = found
        if first is not None:
            return original[first.start() : first.end()]
        for filename in filenames:
            if any(fnmatch.fnmatchcase(filename.lower(), glob) for glob in self.attachments):
                return filename
        return None


@dataclass(frozen=True)
class RuleSet:
    """The rules in order and the score from which a message counts as technical."""

    threshold: int
    rules: tuple[Rule, ...]
    source: str = DEFAULT_SOURCE

    def __getitem__(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Rule names in evaluation order."""
        return tuple(rule.name for rule in self.rules)


@dataclass(frozen=True)
class Match:
    """A rule that matched and the words it matched, as the customer wrote them."""

    rule: str
    kind: str
    weight: int
    text: str

    def describe(self) -> str:
        """``rule 'words'`` on one line, long matches shortened."""
        words = " ".join(self.text.split())
        if len(words) > _EXPLAIN_CHARS:
            words = words[: _EXPLAIN_CHARS - 1].rstrip() + "…"
        return f"{self.rule} {words!r}"


@dataclass(frozen=True)
class Classification:
    """The verdict, its score against the threshold, and every rule that matched."""

    technical: bool
    score: int
    matches: tuple[Match, ...]
    threshold: int

    def explain(self) -> str:
        """One line: verdict, score and the matched words, technical first then cs."""
        verdict, relation = ("technical", ">=") if self.technical else ("cs", "<")
        head = f"{verdict} (score {self.score} {relation} {self.threshold})"
        if not self.matches:
            return f"{head}: no rule matched"
        technical = ", ".join(m.describe() for m in self.matches if m.kind == "technical")
        cs = ", ".join(m.describe() for m in self.matches if m.kind != "technical")
        parts = [technical or "no technical signal"] + ([f"cs: {cs}"] if cs else [])
        return f"{head}: {'; '.join(parts)}"


# The last message classified, by identity: the router asks twice of one message (the
# technical rule, then the hint for a forward), and reads it once.
_last: tuple[Inbound, RuleSet, Classification] | None = None


def classify(msg: Inbound, rules: RuleSet) -> Classification:
    """Score what the customer wrote now against ``rules``; each matching rule counts once."""
    global _last
    last = _last
    if last is not None and last[0] is msg and last[1] is rules:
        return last[2]
    found = _classify(msg, rules)
    _last = (msg, rules, found)
    return found


def _classify(msg: Inbound, rules: RuleSet) -> Classification:
    original = examined_text(msg)
    text = original.translate(_NORMALISE)
    filenames = [a.filename for a in msg.attachments if a.filename]
    matches: list[Match] = []
    score = 0
    for rule in rules.rules:
        found = rule.find(text, original, filenames)
        if found is not None:
            matches.append(Match(rule.name, rule.kind, rule.weight, found))
            score += rule.signed_weight
    return Classification(score >= rules.threshold, score, tuple(matches), rules.threshold)


def examined_text(msg: Inbound) -> str:
    """What ``classify`` reads, at most MAX_CHARS: the subject and the fresh text.

    A reply's subject is left out, a forward is read whole, quoted earlier mail never.
    """
    # Quoted earlier mail is not read: a reply must not count last month's error again.
    prefix = SUBJECT_PREFIX.match(msg.subject)
    forwarded = bool(prefix and prefix["forward"]) or bool(
        _FORWARD_BANNER.search(msg.fresh_text[-200:])
    )
    body = msg.text if forwarded else msg.fresh_text
    subject = "" if prefix and prefix["reply"] else msg.subject
    return f"{subject}\n{body}"[:MAX_CHARS]
