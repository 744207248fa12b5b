"""The rule file: read a TOML file of classifier rules and check every entry.

The default ships as ``support_rules.toml`` beside this module (its header explains the
format). A file may extend the default, disable some of its rules or override them. Every
problem raises :class:`RuleFileError` naming the file, the rule and what is wrong.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from csm_router.core.classify import DEFAULT_SOURCE, Kind, Rule, RuleSet

__all__ = ["DEFAULT_FILE", "RuleFileError", "load_rules"]

DEFAULT_FILE = "support_rules.toml"
_KINDS: tuple[Kind, ...] = ("technical", "cs")
_FLAGS = re.IGNORECASE | re.MULTILINE
_TOP_KEYS = ("threshold", "extends", "disable", "rules")
_RULE_KEYS = ("name", "description", "kind", "weight", "patterns", "attachments")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


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
