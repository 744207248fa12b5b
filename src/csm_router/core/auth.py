"""Is a message really from who its From says? Read from Authentication-Results (RFC 8601)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

from csm_router.core.message import Inbound
from csm_router.core.threads import format_ref

# One token per match, each a disjoint run, so a scan is linear on any input: an escaped
# pair, a parenthesis or quote (comments nest, so they are counted, not matched), a
# separator, whitespace, or a run of anything else.
_TOKEN = re.compile(r'\\.?|[()";=]|\s+|[^\s()";=\\]+', re.S)
_FOLD = re.compile(r"\r?\n|\r")
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


class _UnreadableError(ValueError):
    """The header breaks RFC 8601's grammar: an unclosed comment or quoted string."""


def _tokens(header: str) -> Iterator[tuple[str, str, bool]]:
    """``(kind, text, spaced)``: kind is "word", ";" or "="; spaced if CFWS came before it.

    Comments (which nest) are dropped and quoted strings become (part of) words, as RFC 5322
    reads them. An unclosed comment or quoted string, or a stray ")", raises
    `_UnreadableError`: read leniently, it would hide the rest of the header, and a sender
    controls some of what the server copies into it.
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
            if tok == ")":
                raise _UnreadableError("a \")\" that closes no comment")
            if word is not None:
                yield "word", word, word_spaced
                word, spaced = None, False
            if tok in (_SEMI, _EQ):
                yield tok, tok, spaced
                spaced = False
            else:  # whitespace or a comment: CFWS
                depth = 1 if tok == "(" else 0
                spaced = True
    if depth or quoted:
        raise _UnreadableError("an unclosed comment" if depth else "an unclosed quoted string")
    if word is not None:
        yield "word", word, word_spaced


def authserv_id(header: str) -> str:
    """Who wrote one undecoded Authentication-Results value: its authserv-id, lower-case
    ("" if it cannot be read)."""
    try:
        for kind, text, _ in _tokens(header):
            if kind != "word":
                return ""
            return text.lower()  # a word after it is a version (RFC 8601 section 2.2)
    except _UnreadableError:
        return ""
    return ""


def _results(header: str) -> list[_Result]:
    """One ``method=result`` with its ``ptype.property=value`` pairs per resinfo.

    Raises `_UnreadableError` when the header breaks the grammar anywhere.
    """
    tokens = _tokens(header)
    for kind, _, _ in tokens:  # skip the authserv-id and version
        if kind == _SEMI:
            break
    found: list[_Result] = []
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
                found.append(_Result(method.lower().partition("/")[0], result.lower(), props))
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
    return found


def raw_headers(raw: bytes, name: str) -> list[str]:
    """Every ``name`` header of `raw`, unfolded but never RFC 2047-decoded, topmost first.

    Decoding first would let encoded words a sender wrote (an envelope sender the server
    copies into its results) turn into separators, comments and results of their own.
    """
    try:
        head = BytesHeaderParser(policy=compat32).parsebytes(raw, headersonly=True)
    except Exception:  # hostile input: no header can be read, so none proves anything
        return []
    return [_FOLD.sub("", str(v)) for k, v in head.raw_items() if k.lower() == name.lower()]


def _counted(msg: Inbound, trusted_authserv_id: str) -> str | None:
    """The one header that counts: the topmost written by the pinned server (RFC 8601
    section 5: any lower one may have been written by the sender)."""
    wanted = trusted_authserv_id.strip().lower()
    for header in raw_headers(msg.raw, "Authentication-Results"):
        if authserv_id(header) == wanted:
            return header
    return None


def _submitter_mismatch(results: list[_Result], sender: str) -> str | None:
    """Who submitted the mail, where the server recorded it and it is not the sender."""
    local = sender.rpartition("@")[0]
    for res in results:
        who = res.props.get("smtp.auth")
        if who is not None and who.strip().strip("<>").lower() not in (sender, local):
            return f"submitted by {who} (smtp.auth), not by {sender}"
    return None


def _proof(results: list[_Result], sender: str) -> str | None:
    """The DMARC-aligned pass (or authenticated submission as the sender), if any."""
    domain = sender.rpartition("@")[2]
    local = sender.rpartition("@")[0]
    for res in results:
        if res.result != "pass":
            continue
        if res.method == "dmarc" and res.props.get("header.from", "").lower() == domain:
            return f"dmarc=pass for {domain}"
        who = res.props.get("smtp.auth", "").strip().strip("<>").lower()
        if res.method == "auth" and who and who in (sender, local):
            return f"auth=pass as {who}"
    return None


def verify_sender(msg: Inbound, trusted_authserv_id: str | None) -> Verdict:
    """Whether `msg.sender` is proven by the pinned server's Authentication-Results.

    Only the topmost header written by `trusted_authserv_id` counts; without one configured
    no header proves anything, since anyone can write one. Proof is a DMARC pass for the
    From domain or `auth=pass` as the sender (SPF or DKIM alone prove only a domain, which
    every mailbox there shares); any `dmarc=fail` refuses, and so does an `smtp.auth=`
    naming someone other than the sender.
    """
    if not trusted_authserv_id:
        return Verdict(False, "ROUTER_TRUSTED_AUTHSERV_ID is not set, so no "
                              "Authentication-Results proves anything")
    header = _counted(msg, trusted_authserv_id)
    if header is None:
        return Verdict(False, f"no Authentication-Results from {trusted_authserv_id}")
    try:
        results = _results(header)
    except _UnreadableError as exc:
        return Verdict(False, f"unreadable Authentication-Results from "
                              f"{trusted_authserv_id}: {exc}")
    sender, domain = msg.sender, msg.account
    for res in results:
        if res.method == "dmarc" and res.result == "fail":
            return Verdict(False, f"dmarc=fail for {res.props.get('header.from', domain)}")
    mismatch = _submitter_mismatch(results, sender)
    if mismatch is not None:
        return Verdict(False, mismatch)
    proof = _proof(results, sender)
    if proof is not None:
        return Verdict(True, proof)
    return Verdict(False, f"no dmarc=pass for {domain} (nor auth=pass as {sender}) "
                          f"from {trusted_authserv_id}")


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


def verify_reply_address(msg: Inbound, alias: str, secret: str, ref: int | None) -> Verdict:
    """Whether a CSM's `msg` copies the reply address made for them and thread `ref`."""
    if ref is None:
        return Verdict(False, f"no known thread, so no reply address proves {msg.sender}")
    if proven_by_reply_address(msg, alias, secret, ref):
        return Verdict(True, f"copies {msg.sender}'s reply address for {format_ref(ref)}")
    return Verdict(False, f"does not copy {msg.sender}'s reply address for {format_ref(ref)} "
                          "(with ROUTER_REPLY_SECRET set, nothing else proves a CSM)")


def steering_note(trusted_authserv_id: str | None, reply_secret: bool) -> str:
    """What proves that a CSM or Support really sent a mail, in one line."""
    if trusted_authserv_id:
        csm = ("CSM mail steers only by copying the CSM's own reply address for the thread "
               "(ROUTER_REPLY_SECRET); Support mail" if reply_secret
               else "CSM and Support mail")
        return (f"{csm} steers only with dmarc=pass (or auth=pass as the sender) in "
                f"{trusted_authserv_id}'s topmost Authentication-Results")
    if reply_secret:
        return ("CSM mail steers only by copying the CSM's own reply address for the thread "
                "(ROUTER_REPLY_SECRET); Support mail steers nothing: "
                "ROUTER_TRUSTED_AUTHSERV_ID is not set")
    return ("neither ROUTER_TRUSTED_AUTHSERV_ID nor ROUTER_REPLY_SECRET is set: mail from "
            "CSMs and Support steers nothing (no commands, answers or ownership changes)")


def authserv_note(header: str | None, trusted_authserv_id: str | None,
                  reply_secret: bool) -> tuple[bool, str]:
    """Whether the latest mail's topmost Authentication-Results (undecoded) fits the
    settings, and what to say about it."""
    if header is None:
        return False, ("the latest mail in the alias has no Authentication-Results: "
                       "CSM and Support mail will steer nothing" +
                       (" unless proven by ROUTER_REPLY_SECRET" if reply_secret else ""))
    seen = authserv_id(header) or "an unreadable authserv-id"
    said = f"the latest mail's topmost Authentication-Results is from {seen}"
    wanted = (trusted_authserv_id or "").strip().lower()
    if wanted and seen == wanted:
        return True, said
    if wanted:
        return False, f"{said}, not ROUTER_TRUSTED_AUTHSERV_ID={trusted_authserv_id}"
    return False, f"{said}: set ROUTER_TRUSTED_AUTHSERV_ID={seen} if that is your server"
