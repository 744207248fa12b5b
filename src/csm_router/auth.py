"""Is a message really from who its From says? Read from Authentication-Results (RFC 8601)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from csm_router.message import Inbound

_RESULT = re.compile(r"\b(dmarc|dkim|spf|auth)\s*=\s*(\w+)((?:\s+[\w.-]+\s*=\s*[^\s;]+)*)", re.I)
_PROP = re.compile(r"([\w.-]+)\s*=\s*([^\s;]+)")
_COMMENT = re.compile(r"\([^()]*\)")


@dataclass(frozen=True)
class Verdict:
    verified: bool
    why: str


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


def verify_sender(msg: Inbound, trusted_authserv_id: str | None) -> Verdict:
    """Whether `msg.sender` is authenticated.

    With `trusted_authserv_id` set, only results that server wrote count, and no result
    means not verified. Without it, the topmost Authentication-Results (added last, by the
    server that delivered to the alias) is read if present; a message with none is taken
    at its word, as there is nothing to check it against.
    """
    headers = [_COMMENT.sub("", h) for h in msg.header_all("Authentication-Results")]
    if trusted_authserv_id:
        wanted = trusted_authserv_id.lower()
        headers = [h for h in headers if h.split(";", 1)[0].strip().lower() == wanted]
        if not headers:
            return Verdict(False, f"no Authentication-Results from {trusted_authserv_id}")
    elif not headers:
        return Verdict(True, "no Authentication-Results to check")
    else:
        headers = headers[:1]
    domain = msg.account
    for header in headers:
        for match in _RESULT.finditer(header.split(";", 1)[1] if ";" in header else ""):
            method, result = match.group(1).lower(), match.group(2).lower()
            props = {k.lower(): v for k, v in _PROP.findall(match.group(3))}
            if result == "pass" and _aligned(method, props, domain):
                return Verdict(True, f"{method}=pass for {domain}")
    return Verdict(False, f"no passing, aligned dmarc/dkim/spf/auth result for {domain}")
