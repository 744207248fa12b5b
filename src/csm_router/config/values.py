"""Configuration values and their parsers: addresses, the pool, server URLs (mail servers
and Redis Sentinel sets), durations."""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from dotenv import dotenv_values

# The value types live in the core, which imports no configuration; re-exported here.
from csm_router.core.hours import HoursError, Shift
from csm_router.core.people import Address as Address
from csm_router.core.people import PoolMember as PoolMember

ENV_PREFIX = "ROUTER_"


class ConfigError(Exception):
    """Configuration values are missing or wrong; the message names each variable, one a
    line, so an operator fixes them all in one go rather than one per start."""

    def __init__(self, variable: str, problem: str,
                 more: list[tuple[str, str]] | None = None) -> None:
        self.problems = [(variable, problem), *(more or [])]
        super().__init__("\n".join(f"{name}: {what}" for name, what in self.problems))
        self.variable = variable

    @classmethod
    def of(cls, problems: list[tuple[str, str]]) -> ConfigError:
        """One error for every (variable, problem) found; `problems` is not empty."""
        return cls(*problems[0], problems[1:])


@dataclass(frozen=True)
class ServerUrl:
    """A parsed imap(s):// or smtp(s):// URL. `str()` never shows the password."""

    scheme: str
    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    path: str = ""
    allow_plaintext: bool = False
    # OAuth 2.0 instead of the password: answers a current access token (SASL XOAUTH2).
    token: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    @property
    def tls(self) -> bool:
        """Implicit TLS (imaps://, smtps://); otherwise STARTTLS."""
        return self.scheme.endswith("s")

    @property
    def starttls_required(self) -> bool:
        """Whether a plain connection must upgrade with STARTTLS before the password goes.

        Always, unless the server is on this machine or ROUTER_ALLOW_PLAINTEXT says so: a
        man in the middle can strip STARTTLS from the server's answer and read the login.
        """
        return not self.tls and not self.allow_plaintext and not is_loopback(self.host)

    def plaintext_refused(self, protocol: str) -> str:
        """Why we will not log in to a server that offers no STARTTLS."""
        secret = "token" if self.token else "password"
        return (f"{protocol} server {self.host}:{self.port} offers no STARTTLS: refusing to "
                f"send the {secret} in the clear (set {ENV_PREFIX}ALLOW_PLAINTEXT=true to "
                f"allow, or use {self.scheme}s://)")

    def __str__(self) -> str:
        secret = ":***" if self.password else ""  # none with a token: it is no part of the URL
        user = f"{self.username}{secret}@" if self.username else ""
        path = f"/{self.path}" if self.path else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}{path}"


_DEFAULT_PORTS = {"imap": 143, "imaps": 993, "smtp": 587, "smtps": 465}


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: traffic that never leaves this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
_ADDR_RE = re.compile(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+\.[^@\s<>\"(),;:]+$|^[^@\s]+@localhost$")


def _quoted_part(text: str) -> str:
    """The display name between double quotes, if any (it may hold an "@")."""
    rest = text.partition('"')[2]
    return rest.partition('"')[0] if rest else ""


def parse_address(text: str) -> Address:
    """Parse `Name <addr>` or a bare address; raise ValueError when it is not one."""
    if text.replace(f'"{_quoted_part(text)}"', "").count("@") > 1:
        raise ValueError(f"{text.strip()!r} holds more than one address: separate them with "
                         "commas")
    name, addr = parseaddr(text.strip())
    addr = addr.strip().lower()
    if not addr or not _ADDR_RE.match(addr):
        raise ValueError(f"{text.strip()!r} is not an email address")
    return Address(addr, name.strip())


def split_list(text: str) -> list[str]:
    """Split on commas that are not inside quotes or angle brackets."""
    items: list[str] = []
    current: list[str] = []
    quoted = angle = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            if angle:  # an earlier "<" never closed: it would swallow the next entries
                raise ValueError(f"a '<' is not closed with '>' in {text.strip()!r}")
            angle = True
        elif ch == ">" and not quoted:
            if not angle:
                raise ValueError(f"a '>' has no '<' before it in {text.strip()!r}")
            angle = False
        if ch == "," and not quoted and not angle:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if angle:
        raise ValueError(f"a '<' is not closed with '>' in {text.strip()!r}")
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


_WEIGHT_RE = re.compile(r"\*\s*(\d+)\s*$")


def parse_pool(text: str) -> tuple[PoolMember, ...]:
    """Parse `Alice <alice@acme.com>*2, bob@acme.com` into pool members."""
    members: list[PoolMember] = []
    for item in split_list(text):
        weight = 1
        if match := _WEIGHT_RE.search(item):
            weight = int(match.group(1))
            item = item[: match.start()]
            if weight < 1:
                raise ValueError(f"weight of {item.strip()!r} must be at least 1")
        elif "*" in item:
            raise ValueError(f"{item.strip()!r}: a weight is a whole number, as in bob@acme.com*2")
        address = parse_address(item)
        if any(m.address == address.address for m in members):
            raise ValueError(f"{address.address} is listed twice")
        members.append(PoolMember(address.address, address.name, weight))
    if not members:
        raise ValueError("the pool is empty; list at least one CSM")
    return tuple(members)


def parse_server_url(text: str, schemes: tuple[str, ...]) -> ServerUrl:
    """Parse a mail server URL; raise ValueError naming what is wrong, never echoing secrets."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"scheme must be one of {', '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    return ServerUrl(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or _DEFAULT_PORTS[parts.scheme],
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        path=unquote(parts.path.lstrip("/")),
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and `check` output."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """`14d`, `36h`, `30m`, `90s` (or bare seconds) as seconds; ValueError says what is wrong."""
    match = _DURATION_RE.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{text.strip()!r} is not a duration like 14d, 36h, 30m or 90s")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def format_duration(seconds: float) -> str:
    """Seconds in the largest whole unit: 1209600 -> `14d`, 129600 -> `36h`, 90 -> `90s`."""
    whole = int(seconds)
    for unit in ("d", "h", "m"):
        if whole % _UNITS[unit] == 0:
            return f"{whole // _UNITS[unit]}{unit}"
    return f"{whole}s"


def parse_bind(value: str) -> tuple[str, int]:
    """`host:port` (`[::1]:8025` for IPv6) to listen on; ValueError says what is wrong."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:8025 or 0.0.0.0:8025")
    return host, int(port)


TLS_SENTINEL_SCHEME = "rediss+sentinel://"
# Either spelling (str.startswith takes the tuple): a Sentinel set, in the clear or TLS.
SENTINEL_SCHEME = ("redis+sentinel://", TLS_SENTINEL_SCHEME)
# What a TLS Sentinel URL may add after `?`: redis-py's own names, as for rediss://.
TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                         "ssl_check_hostname"})


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed Sentinel URL: the sentinels to ask, the master they watch, the database."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None
    tls: dict[str, str] | None = None  # None: in the clear; else the ssl_* options


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a redis+sentinel:// or rediss+sentinel:// URL; raise ValueError saying what
    is wrong."""
    url = url.strip()
    tls = url.startswith(TLS_SENTINEL_SCHEME)
    rest = url.removeprefix(TLS_SENTINEL_SCHEME if tls else SENTINEL_SCHEME[0])
    rest, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - (TLS_OPTIONS if tls else set()))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}" + (
            f" (TLS takes {', '.join(sorted(TLS_OPTIONS))})" if tls else
            " (options are for TLS: rediss+sentinel://)"))
    auth, _, rest = rest.rpartition("@")
    password = unquote(auth.partition(":")[2]) if auth else None
    netloc, _, path = rest.partition("/")
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{item.strip()!r} is not host:port (a sentinel, e.g. "
                             "h1:26379)")
        hosts.append((host.strip("[]"), int(port)))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("names no master: redis+sentinel://h1:26379,h2:26379/mymaster/0")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    return SentinelUrl(tuple(hosts), service, int(db or 0), password or None,
                       options if tls else None)


def parse_domains(text: str) -> frozenset[str]:
    """Account domains, comma-separated (`globex.com, @initech.com`)."""
    found = set()
    for item in split_list(text):
        domain = item.strip().lower().lstrip("@")
        if "@" in domain or "/" in domain or "." not in domain:
            raise ValueError(f"{item.strip()!r} is not an account domain (e.g. initech.com)")
        found.add(domain)
    return frozenset(found)


def dotenv_names() -> list[str]:
    path = Path(".env")
    if not path.is_file():
        return []
    return [str(k) for k in dotenv_values(path)]


def unknown_settings(names: list[str], known: set[str]) -> list[tuple[str, str]]:
    """Every ROUTER_* variable among `names` that is not in `known` (the settings' names
    without the prefix): a typo would be ignored in silence."""
    problems = []
    for name in dict.fromkeys(names):
        if not name.startswith(ENV_PREFIX) or name[len(ENV_PREFIX):] in known:
            continue
        close = difflib.get_close_matches(name[len(ENV_PREFIX):], sorted(known), n=1)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        problems.append((name, f"is not a setting{hint} (see deploy/.env.example)"))
    return problems


# Holiday dates are read for these many years around today: reports and SLA clocks look
# back, and a router runs across New Year.
HOLIDAY_YEARS = (-2, 2)


def with_holidays(hours: dict[str, Shift], today: date | None = None) -> dict[str, Shift]:
    """Each shift that names a holiday calendar, with the calendar's dates as days off."""
    year = (today or date.today()).year
    return {address: replace(shift, days_off=holiday_dates(
                shift.calendar, year + HOLIDAY_YEARS[0], year + HOLIDAY_YEARS[1]))
            if shift.calendar else shift for address, shift in hours.items()}


@functools.cache
def holiday_dates(calendar: str, first_year: int, last_year: int) -> frozenset[date]:
    """The public holidays of `calendar` (`DE`, `DE-BE`) from the `holidays` package."""
    import holidays

    country, _, region = calendar.partition("-")
    supported = holidays.list_supported_countries()
    if country not in supported:
        raise HoursError(f"holidays={calendar}: {country} is no country of the holidays "
                         "package (ISO 3166 codes: DE, FR, US, ...)")
    regions = {name.upper(): name for name in supported[country]}
    if region and region not in regions:
        raise HoursError(f"holidays={calendar}: {region} is no subdivision of {country} "
                         f"(it has {', '.join(sorted(regions)) or 'none'})")
    found = holidays.country_holidays(country, subdiv=regions.get(region) if region else None,
                                      years=range(first_year, last_year + 1))
    return frozenset(found)


def parse_languages(text: str) -> dict[str, frozenset[str]]:
    """`ROUTER_LANGUAGES`: `alice@acme.com=de,en; bob@acme.com=en` (ISO 639-1 codes)."""
    found: dict[str, frozenset[str]] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        address, sep, codes = entry.partition("=")
        address = address.strip().lower()
        languages = frozenset(c.strip().lower() for c in codes.split(",") if c.strip())
        if not sep or "@" not in address or not languages:
            raise ValueError(f"{entry!r} is not address=de,en")
        if unknown := sorted(languages - known_languages()):
            raise ValueError(f"{', '.join(unknown)} in {entry!r}: not ISO 639-1 language codes "
                             "the detector knows (de, en, es, fr, ...)")
        found[address] = languages
    return found


@functools.cache
def known_languages() -> frozenset[str]:
    """Every ISO 639-1 code the language detector (lingua) knows."""
    from lingua import Language

    return frozenset(lang.iso_code_639_1.name.lower() for lang in Language.all())


def language_name(code: str) -> str:
    """`de` -> `German` (the code itself if the detector knows no such language)."""
    from lingua import IsoCode639_1, Language

    try:
        return str(Language.from_iso_code_639_1(IsoCode639_1.from_str(code)).name.title())
    except ValueError:
        return code


def wants_token(url: ServerUrl) -> bool:
    """A URL naming a user and no password logs in with a token; one with a password keeps
    it (Gmail's IMAP with a token, a relay's API key for SMTP), one with neither needs no
    login (a relay on the host)."""
    return bool(url.username) and not url.password
