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
from functools import cached_property
from re import _constants as _op  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]
from typing import Any, Literal, TypeAlias

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


# What a text must hold for a pattern to match in it: from each set, one of its strings,
# as ``_fold`` spells it. No sets: nothing is known, the pattern is always searched.
_Needles: TypeAlias = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Rule:
    """One named signal: case-insensitive regexes and/or attachment name globs."""

    name: str
    description: str
    kind: Kind
    weight: int
    patterns: tuple[re.Pattern[str], ...] = ()
    attachments: tuple[str, ...] = ()

    # Derived from `patterns` on first use, then kept: loading rules stays as quick as it was.
    @cached_property
    def _alternation(self) -> re.Pattern[str] | None:
        return _combined(self.patterns)

    @cached_property
    def _needles(self) -> tuple[_Needles, ...]:
        return tuple(map(_needles_of, self.patterns))

    @property
    def signed_weight(self) -> int:
        """What a match adds to the score: technical rules add, cs rules subtract."""
        return self.weight if self.kind == "technical" else -self.weight

    def find(
        self, text: str, original: str, filenames: Iterable[str], folded: str | None = None
    ) -> str | None:
        """The earliest words of ``original`` this rule matches, else a matching filename.

        ``folded`` is ``_fold(text)``, passed in when several rules read one text.
        """
        folded = _fold(text) if folded is None else folded
        # A pattern whose needles the text lacks cannot match: skip its scan of the text.
        candidates = [
            pattern
            for pattern, needles in zip(self.patterns, self._needles, strict=True)
            if _holds(folded, needles)
        ]
        first: re.Match[str] | None = None
        if 2 * len(candidates) > len(self.patterns) and self._alternation is not None:
            first = self._alternation.search(text)  # one scan beats many
        else:
            for pattern in candidates:
                found = pattern.search(text)
                # On a tie the earlier pattern wins, as in the alternation.
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
    folded = _fold(text)
    filenames = [a.filename for a in msg.attachments if a.filename]
    matches: list[Match] = []
    score = 0
    for rule in rules.rules:
        found = rule.find(text, original, filenames, folded)
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


# --- searching fast: one regex per rule, and no scan for a pattern that cannot match -------


def _combined(patterns: tuple[re.Pattern[str], ...]) -> re.Pattern[str] | None:
    """``(?:p1)|(?:p2)|...``, or None where it would not find what the patterns find.

    At each position an alternation tries its branches in order, so it finds the earliest
    match, the first pattern's on a tie: what ``Rule.find`` takes from separate searches.
    Groups would be renumbered (a backreference would change meaning), differing flags
    cannot be shared, and a global inline flag like ``(?x)`` does not compile inside.
    """
    flags = {pattern.flags for pattern in patterns}
    if len(patterns) < 2 or len(flags) != 1 or any(pattern.groups for pattern in patterns):
        return None
    try:
        return re.compile("|".join(f"(?:{p.pattern})" for p in patterns), flags.pop())
    except re.error:
        return None


def _fold(text: str) -> str:
    """``text`` casefolded, and the dotless i and the dotted capital I as a plain 'i'.

    Case-insensitive, re matches both for 'i' (and the long s for 's', the Kelvin sign
    for 'k'): folded, each such pair is alike, so a needle found missing really is.
    """
    # "İ".casefold() is "i" + U+0307 COMBINING DOT ABOVE; dropping every U+0307 can only
    # make more needles found, never fewer.
    return text.casefold().replace("\u0131", "i").replace("\u0307", "")


def _holds(folded: str, needles: _Needles) -> bool:
    """Whether ``folded`` holds one string of each set in ``needles``."""
    # Runs for every pattern and message: a plain loop and map() are faster than generators.
    for anyof in needles:  # noqa: SIM110
        if not any(map(folded.__contains__, anyof)):
            return False
    return True


class _Unknown(Exception):
    """A regex construct the needle analysis does not reason about."""


# Zero-width, or one character of a class: no fixed text to require.
_NO_TEXT = {_op.NOT_LITERAL, _op.IN, _op.ANY, _op.AT, _op.CATEGORY, _op.ASSERT, _op.ASSERT_NOT}
_REPEATS = {_op.MAX_REPEAT, _op.MIN_REPEAT, _op.POSSESSIVE_REPEAT}


def _needles_of(pattern: re.Pattern[str]) -> _Needles:
    """What a text must hold for ``pattern`` to match in it (see ``_Needles``)."""
    try:
        tree = _parser.parse(pattern.pattern, pattern.flags)
        found = _required(tree, bool(tree.state.flags & re.IGNORECASE))
    except (_Unknown, re.error, RecursionError):
        return ()
    # Most selective first: a text lacking it is ruled out after one look.
    return tuple(tuple(sorted(anyof)) for anyof in sorted(found, key=_selectivity, reverse=True))


def _required(sequence: Any, ignorecase: bool) -> list[frozenset[str]]:
    """For a parsed sequence, sets of strings a match holds one of each of (folded).

    A sequence's match is its parts' matches end to end: what a part requires, the whole
    does, and consecutive literal characters are one required string.
    """
    required: list[frozenset[str]] = []
    run: list[str] = []
    for op, av in sequence:
        if op is _op.LITERAL and _literal_folds_safely(chr(av), ignorecase):
            run.append(chr(av))
            continue
        if run:
            required.append(frozenset({_fold("".join(run))}))
            run = []
        if op is _op.LITERAL or op in _NO_TEXT:
            continue
        if op is _op.SUBPATTERN:
            _, add, remove, inner = av
            required += _required(inner, (ignorecase or bool(add & re.I)) and not remove & re.I)
        elif op is _op.ATOMIC_GROUP:
            required += _required(av, ignorecase)
        elif op in _REPEATS:
            low, _, inner = av
            required += _required(inner, ignorecase) if low >= 1 else []
        elif op is _op.BRANCH:
            # One branch matches: require one of the branches' best strings, if all have some.
            best = [_required(branch, ignorecase) for branch in av[1]]
            if all(best):
                required.append(frozenset().union(*(max(b, key=_selectivity) for b in best)))
        else:
            raise _Unknown(op)  # backreferences, conditionals, anything newer
    if run:
        required.append(frozenset({_fold("".join(run))}))
    return required


def _selectivity(anyof: frozenset[str]) -> tuple[int, int]:
    # The longer its shortest string, the fewer texts hold one; then the fewer strings.
    return min(map(len, anyof)), -len(anyof)


def _literal_folds_safely(char: str, ignorecase: bool) -> bool:
    """Whether every character re matches for ``char`` folds (``_fold``) as ``char`` does.

    Case-insensitive, that holds for the ASCII letters (checked for all of Unicode in the
    tests); of other cased letters re may match some that fold otherwise: not used.
    Uncased, a character matches only itself.
    """
    return not ignorecase or char.isascii() or char.lower() == char == char.upper()
