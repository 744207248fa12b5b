"""Is a message really from who its From says? Read from Authentication-Results (RFC 8601)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from csm_router.message import Inbound

# One token per match, each a disjoint run, so a scan is linear on any input: an escaped
# pair, a parenthesis or quote (comments nest, so they are counted, not matched), a
# separator, whitespace, or a run of anything else.
_TOKEN = re.compile(r'\\.?|[()";=]|\s+|[^\s()";=\\]+', re.S)
_METHODS = ("dmarc", "dkim", "spf", "auth")  # in the order a pass is reported
_SEMI, _EQ = ";", "="
_CFWS_OR_SEPARATOR = frozenset("();=")


@dataclass(frozen=True)
class Verdict:
    verified: bool
    why: str


@dataclass(frozen=True)
class _Result:
    method: str
    result: str
    props: dict[str, str]


def _tokens(header: str) -> Iterator[tuple[str, str, bool]]:
    """``(kind, text, spaced)``: kind is "word", ";" or "="; spaced if CFWS came before it.

    Comments (which nest) are dropped and quoted strings become (part of) words; an
    unterminated comment or quote runs to the end, as a lenient reader should.
    """
    depth, quoted = 0, False
    word: str | None = None  # the word being built; "" after an empty quoted string
    word_spaced = spaced = False
    for match in _TOKEN.finditer(header):
        tok = match[0]
        if quoted:
            if tok == '"':
                quoted = False
            else:
                word = (word or "") + (tok[1:] if tok[0] == "\\" else tok)
        elif depth:
            depth += 1 if tok == "(" else -1 if tok == ")" else 0
        elif tok == '"' or not (tok in _CFWS_OR_SEPARATOR or tok.isspace()):
            if word is None:
                word, word_spaced = "", spaced
            if tok == '"':
                quoted = True
            else:
                word += tok
        else:
            if word is not None:
                yield "word", word, word_spaced
                word, spaced = None, False
            if tok in (_SEMI, _EQ):
                yield tok, tok, spaced
                spaced = False
            else:  # whitespace, a comment, or a stray ")": all CFWS
                depth = 1 if tok == "(" else 0
                spaced = True
    if word is not None:
        yield "word", word, word_spaced


def _parse(header: str) -> tuple[str, Iterator[_Result]]:
    """The authserv-id (lower-case) and, lazily, the results of one header."""
    tokens = _tokens(header)
    authserv_id = ""
    for kind, text, _ in tokens:
        if kind == _SEMI:
            break
        if kind == "word" and not authserv_id:
            authserv_id = text.lower()  # a word after it is a version (RFC 8601 section 2.2)
    return authserv_id, _results(tokens)


def _results(tokens: Iterator[tuple[str, str, bool]]) -> Iterator[_Result]:
    """One ``method=result`` with its ``ptype.property=value`` pairs per resinfo."""
    pairs: list[tuple[str, str]] = []
    key: str | None = None
    value: str | None = None
    after_eq = False
    for kind, text, spaced in itertools.chain(tokens, [(_SEMI, _SEMI, False)]):
        if kind == _SEMI:
            if key is not None and value is not None:
                pairs.append((key, value))
            if pairs:
                (method, result), props = pairs[0], {k.lower(): v for k, v in pairs[1:]}
                yield _Result(method.lower().partition("/")[0], result.lower(), props)
            pairs, key, value, after_eq = [], None, None, False
        elif value is not None and not spaced:
            value += text  # "=" inside a value: an SRS address, base64
        elif kind == _EQ:
            after_eq = key is not None and value is None
        elif after_eq:
            value, after_eq = text, False
        else:  # a word starts the next pair; a key that got no value is dropped
            if key is not None and value is not None:
                pairs.append((key, value))
            key, value = text, None


def _domain(value: str) -> str:
    return value.strip().strip("<>").rpartition("@")[2].lower()


def _aligned(method: str, props: dict[str, str], domain: str) -> bool:
    """The passing check is about the From domain (or a parent of it), not some other one."""
    if method == "dmarc":
        checked = props.get("header.from", domain)
    elif method == "dkim":
        checked = props.get("header.d") or _domain(props.get("header.i", ""))
    elif method == "auth":  # authenticated submission (RFC 8601 section 2.7.4)
        checked = _domain(props.get("smtp.auth", "") or props.get("smtp.mailfrom", ""))
    else:
        checked = _domain(props.get("smtp.mailfrom", ""))
    checked = checked.lower()
    return bool(checked) and (domain == checked or domain.endswith("." + checked))


def _counted(msg: Inbound, trusted_authserv_id: str | None) -> Iterator[_Result] | None:
    """Results of the one header that counts (RFC 8601 section 5: lower ones may be forged)."""
    headers = msg.header_all("Authentication-Results")
    if not trusted_authserv_id:
        return _parse(headers[0])[1] if headers else None
    wanted = trusted_authserv_id.strip().lower()
    for header in headers:
        authserv_id, results = _parse(header)
        if authserv_id == wanted:
            return results
    return None


def verify_sender(msg: Inbound, trusted_authserv_id: str | None) -> Verdict:
    """Whether `msg.sender` is authenticated by the one Authentication-Results that counts.

    With `trusted_authserv_id` set, that is the topmost header written by that server;
    without it, the topmost header (added last, by the server that delivered to the alias).
    No such header means not verified. A pass must be aligned with the From domain, and a
    `dmarc=fail` refuses whatever else passed: it states the From is not authenticated.
    """
    results = _counted(msg, trusted_authserv_id)
    if results is None:
        if trusted_authserv_id:
            return Verdict(False, f"no Authentication-Results from {trusted_authserv_id}")
        return Verdict(
            False,
            "no Authentication-Results header: "
            "set ROUTER_TRUSTED_AUTHSERV_ID to your server's authserv-id",
        )
    domain = msg.account
    passed: dict[str, str] = {}
    for res in results:
        if res.method == "dmarc" and res.result == "fail":
            return Verdict(False, f"dmarc=fail for {res.props.get('header.from', domain)}")
        if res.result == "pass" and _aligned(res.method, res.props, domain):
            passed.setdefault(res.method, f"{res.method}=pass for {domain}")
    for method in _METHODS:  # the strongest proof is the one reported
        if method in passed:
            return Verdict(True, passed[method])
    return Verdict(False, f"no passing, aligned dmarc/dkim/spf/auth result for {domain}")


def reply_token(secret: str, csm: str, ref: int) -> str:
    """The part of a CSM's reply address for thread `ref` that only csm-router can make.

    Per CSM and thread: a customer sees it in the CSM's reply (the alias is copied) and
    could replay it, but only in their own thread, never to steer anyone else's.
    """
    digest = hmac.new(secret.encode(), f"{csm.lower()}\0{ref}".encode(), hashlib.sha256)
    return base64.b32encode(digest.digest()).decode().lower()[:20]


def reply_address(alias: str, secret: str, csm: str, ref: int) -> str:
    """`success+r-<token>@acme.com`: the alias, sub-addressed for this CSM and thread."""
    local, _, domain = alias.partition("@")
    return f"{local}+r-{reply_token(secret, csm, ref)}@{domain}"


def proven_by_reply_address(msg: Inbound, alias: str, secret: str, ref: int) -> bool:
    """Whether `msg` (from a CSM) copies the reply address only that CSM got for `ref`."""
    wanted = reply_address(alias, secret, msg.sender, ref).lower()
    return any(hmac.compare_digest(a, wanted) for a in (*msg.to, *msg.cc))
