"""Is a customer email a technical request for Support? Weighted, explainable regex rules.

The rules live in a TOML file (the default ships as ``support_rules.toml``; its header
explains the format). ``classify`` is pure: it reads what the customer wrote now (see
``examined_text``) and answers a :class:`Classification` that says which rules matched and on
what words, so the routing decision can explain itself in one line.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeAlias

from csm_router.core.message import Inbound
from csm_router.core.threads import SUBJECT_PREFIX

__all__ = [
    "MAX_CHARS",
    "Classification",
    "Match",
    "Rule",
    "RuleFileError",
    "RuleSet",
    "classify",
    "examined_text",
    "load_rules",
]

Kind: TypeAlias = Literal["technical", "cs"]

MAX_CHARS = 20_000  # a request states its problem early; the cap keeps classify cheap
DEFAULT_FILE = "support_rules.toml"
DEFAULT_SOURCE = f"{DEFAULT_FILE} (default)"
_KINDS: tuple[Kind, ...] = ("technical", "cs")
_FLAGS = re.IGNORECASE | re.MULTILINE
_TOP_KEYS = ("threshold", "extends", "disable", "rules")
_RULE_KEYS = ("name", "description", "kind", "weight", "patterns", "attachments")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
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


class RuleFileError(ValueError):
    """A rule file cannot be used; the message names the file, the rule and the problem."""

    def __init__(self, source: str, problem: str, rule: str | None = None) -> None:
        super().__init__(source, problem, rule)  # all in args so the error pickles
        self.source = source
        self.problem = " ".join(problem.split())  # always one line, whatever tomllib says
        self.rule = rule

    def __str__(self) -> str:
        where = f"{self.source}: rule {self.rule!r}" if self.rule else self.source
        return f"{where}: {self.problem}"


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


def classify(msg: Inbound, rules: RuleSet) -> Classification:
    """Score what the customer wrote now against ``rules``; each matching rule counts once."""
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


def load_rules(path: Path | None = None) -> RuleSet:
    """The rules in ``path``, or the shipped default for None; raise RuleFileError if bad."""
    if path is None:
        return _default_rules()
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RuleFileError(source, f"cannot read: {exc.strerror or exc}") from exc
    return _build(_parse_toml(data, source), source)


@cache
def _default_rules() -> RuleSet:
    # Cached: the shipped file never changes while the process runs.
    data = resources.files("csm_router.core").joinpath(DEFAULT_FILE).read_bytes()
    return _build(_parse_toml(data, DEFAULT_SOURCE), DEFAULT_SOURCE)


def _parse_toml(data: bytes, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RuleFileError(source, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RuleFileError(source, f"not valid TOML: {exc}") from exc


def _build(data: Mapping[str, Any], source: str) -> RuleSet:
    """Validate a parsed file and merge it into the default set when it extends it."""
    _no_unknown_keys(data, _TOP_KEYS, source, None, what="top-level key")
    extends = data.get("extends")
    if extends is not None and extends != "default":
        raise RuleFileError(source, f"'extends' must be \"default\", not {extends!r}")
    base = _default_rules() if extends == "default" else None
    threshold = data.get("threshold", base.threshold if base else None)
    if threshold is None:
        raise RuleFileError(source, "missing 'threshold' (an integer score)")
    if not _is_int(threshold):
        raise RuleFileError(source, f"'threshold' must be an integer, not {threshold!r}")

    entries = data.get("rules", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RuleFileError(source, "'rules' must be an array of tables ([[rules]])")
    merged: dict[str, Rule] = {}
    if base is not None:
        merged = {rule.name: rule for rule in base.rules}
        for name in _disabled(data.get("disable", []), merged, source):
            del merged[name]
    elif "disable" in data:
        raise RuleFileError(source, "'disable' only works with extends = \"default\"")

    own: set[str] = set()
    for index, entry in enumerate(entries, start=1):
        name = _rule_name(entry, index, source)
        if name in own:
            raise RuleFileError(source, "defined twice", name)
        own.add(name)
        merged[name] = _rule(entry, name, source, merged.get(name) if base else None)
    if not merged:
        raise RuleFileError(source, "no rules: add at least one [[rules]] table")
    return RuleSet(threshold=threshold, rules=tuple(merged.values()), source=source)


def _disabled(value: Any, known: Mapping[str, Rule], source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuleFileError(source, "'disable' must be a list of rule names")
    for name in value:
        if name not in known:
            raise RuleFileError(source, f"'disable' names unknown rule {name!r}")
    return list(dict.fromkeys(value))


def _rule_name(entry: Mapping[str, Any], index: int, source: str) -> str:
    name = entry.get("name")
    if name is None:
        raise RuleFileError(source, f"rule #{index} has no 'name'")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RuleFileError(
            source, f"rule #{index}: 'name' must be lower-case letters, digits, - or _: {name!r}"
        )
    return name


def _rule(entry: Mapping[str, Any], name: str, source: str, inherited: Rule | None) -> Rule:
    """Build one rule; keys missing from an override of a default rule keep its value."""
    _no_unknown_keys(entry, _RULE_KEYS, source, name, what="key")
    description = entry.get("description", inherited.description if inherited else "")
    if not isinstance(description, str):
        raise RuleFileError(source, "'description' must be a string", name)
    kind = entry.get("kind", inherited.kind if inherited else None)
    if kind not in _KINDS:
        problem = "missing 'kind'" if kind is None else f"unknown kind {kind!r}"
        raise RuleFileError(source, f'{problem} (use "technical" or "cs")', name)
    weight = entry.get("weight", inherited.weight if inherited else None)
    if weight is None:
        raise RuleFileError(source, "missing 'weight' (a whole number >= 0)", name)
    if not _is_int(weight) or weight < 0:
        raise RuleFileError(source, f"'weight' must be a whole number >= 0, not {weight!r}", name)
    if "patterns" in entry:
        patterns = tuple(
            _compile(p, source, name) for p in _strings(entry, "patterns", source, name)
        )
    else:
        patterns = inherited.patterns if inherited else ()
    if "attachments" in entry:
        globs = _strings(entry, "attachments", source, name)
        attachments = tuple(g.lower() for g in globs)
    else:
        attachments = inherited.attachments if inherited else ()
    if not patterns and not attachments:
        raise RuleFileError(source, "missing 'patterns' (a list of regexes)", name)
    return Rule(name, description, kind, weight, patterns, attachments)


def _strings(entry: Mapping[str, Any], key: str, source: str, name: str) -> list[str]:
    value = entry[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuleFileError(source, f"'{key}' must be a list of strings", name)
    if not value or not all(v.strip() for v in value):
        raise RuleFileError(source, f"'{key}' must not be empty or hold empty strings", name)
    return value


def _compile(pattern: str, source: str, name: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern, _FLAGS)
    except re.error as exc:
        raise RuleFileError(source, f"bad regex {pattern!r}: {exc}", name) from exc
    # A pattern that can match nothing at all would fire on every message.
    if compiled.match("") or any(m.end() == m.start() for m in compiled.finditer("a 1 .\n")):
        raise RuleFileError(source, f"regex {pattern!r} matches the empty string", name)
    return compiled


def _no_unknown_keys(
    table: Mapping[str, Any], allowed: tuple[str, ...], source: str, rule: str | None, what: str
) -> None:
    for key in table:
        if key not in allowed:
            raise RuleFileError(
                source, f"unknown {what} {key!r} (allowed: {', '.join(allowed)})", rule
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML true is no weight
