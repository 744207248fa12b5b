"""Settings from the environment and `.env`, validated once at start-up and passed down."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from email.utils import formataddr, parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from csm_router.connect import SENTINEL_SCHEME, parse_sentinel_url
from csm_router.hours import HoursError, Schedule, Shift, parse_hours

ENV_PREFIX = "ROUTER_"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Address:
    """A mailbox: optional display name and a lower-cased addr-spec."""

    address: str
    name: str = ""

    def __str__(self) -> str:
        return formataddr((self.name, self.address)) if self.name else self.address

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True)
class PoolMember:
    """One CSM in the pool with their round-robin weight."""

    address: str
    name: str = ""
    weight: int = 1

    @property
    def display(self) -> str:
        return str(Address(self.address, self.name))


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
        return (f"{protocol} server {self.host}:{self.port} offers no STARTTLS: refusing to "
                f"send the password in the clear (set {ENV_PREFIX}ALLOW_PLAINTEXT=true to "
                f"allow, or use {self.scheme}s://)")

    def __str__(self) -> str:
        user = f"{self.username}:***@" if self.username else ""
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


class Settings(BaseSettings):
    """Everything an admin can set; see `deploy/.env.example` for the documented list."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    # Before the URLs: their validator reads it.
    allow_plaintext: bool = False
    imap_url: Annotated[ServerUrl | None, NoDecode] = None
    smtp_url: Annotated[ServerUrl | None, NoDecode] = None
    redis_url: str = "redis://localhost:6379/0"
    alias: Annotated[Address, NoDecode]
    pool: Annotated[tuple[PoolMember, ...], NoDecode]
    max_open_per_csm: int = Field(default=0, ge=0)
    away: Annotated[frozenset[str], NoDecode] = frozenset()
    support_address: Annotated[Address | None, NoDecode] = None
    onboarding_days: int = Field(default=90, ge=0)
    first_response_minutes: int = Field(default=60, ge=1)
    overflow_address: Annotated[Address | None, NoDecode] = None
    poll_seconds: float = Field(default=30, gt=0)
    trusted_authserv_id: str | None = None
    # Proves CSMs' replies where the mail server writes no Authentication-Results.
    reply_secret: SecretStr | None = None
    support_rules: Path | None = None
    support_handler: str = "csm_router.support:mail_support"
    remind_minutes: int | None = Field(default=None, ge=1)
    quarantine_folder: str = "Quarantine"
    max_message_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    # Days, fractions allowed (a soak compresses a month into minutes).
    retention_days: float = Field(default=400, gt=0)
    # An answered thread with no new mail for this long closes by itself (seconds).
    close_after: Annotated[int, NoDecode] = 14 * 86400
    # Seconds between a failed send's attempts, e.g. "5,15,30" (empty: outbox.RETRY_DELAYS).
    retry_delays: str = ""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    templates_dir: Path | None = None
    web_address: str = "127.0.0.1:8025"
    web_user: str = "admin"
    web_password: SecretStr | None = None
    digest_address: Annotated[Address | None, NoDecode] = None
    hours: Annotated[dict[str, Shift], NoDecode] = Field(default_factory=dict)
    premium: Annotated[frozenset[str], NoDecode] = frozenset()
    premium_pool: Annotated[tuple[str, ...], NoDecode] = ()
    premium_first_response_minutes: int | None = Field(default=None, ge=1)

    @field_validator("hours", mode="before")
    @classmethod
    def _hours(cls, value: Any) -> dict[str, Shift]:
        if isinstance(value, dict):
            return value
        try:
            return parse_hours(str(value))
        except HoursError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("close_after", mode="before")
    @classmethod
    def _close_after(cls, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return parse_duration(str(value))

    @field_validator("premium", mode="before")
    @classmethod
    def _premium(cls, value: Any) -> frozenset[str]:
        if isinstance(value, frozenset | set | list | tuple):
            return frozenset(str(v).lower() for v in value)
        found = set()
        for item in split_list(str(value)):
            domain = item.strip().lower().lstrip("@")
            if "@" in domain or "/" in domain or "." not in domain:
                raise ValueError(f"{item.strip()!r} is not an account domain (e.g. initech.com)")
            found.add(domain)
        return frozenset(found)

    @field_validator("premium_pool", mode="before")
    @classmethod
    def _premium_pool(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, tuple | list):
            return tuple(str(v).lower() for v in value)
        return tuple(parse_address(item).address for item in split_list(str(value)))

    @property
    def lead(self) -> Address | None:
        """Who gets the digest: ROUTER_DIGEST_ADDRESS, else ROUTER_OVERFLOW_ADDRESS."""
        return self.digest_address or self.overflow_address

    @property
    def report_zone(self) -> ZoneInfo:
        """Whose days the figures count in: the lead's ROUTER_HOURS time zone, else UTC."""
        shift = self.hours.get(self.lead.address) if self.lead else None
        return shift.zone if shift else ZoneInfo("UTC")

    @property
    def schedule(self) -> Schedule:
        """The pool's working hours (everyone always on shift without ROUTER_HOURS)."""
        return Schedule(self.hours, tuple(m.address for m in self.pool))

    @property
    def retention_seconds(self) -> int:
        """ROUTER_RETENTION_DAYS in whole seconds (what Redis expiries take)."""
        return max(1, round(self.retention_days * 86400))

    def kept(self, seconds: float) -> int:
        """`seconds`, but never past the retention: nothing in Redis outlives it."""
        return max(1, min(int(seconds), self.retention_seconds))

    def first_response_seconds(self, account: str = "") -> float:
        """The first-response target for a thread of `account`, in working seconds."""
        minutes = self.first_response_minutes
        if account in self.premium and self.premium_first_response_minutes is not None:
            minutes = self.premium_first_response_minutes
        return minutes * 60.0

    @property
    def web_bind(self) -> tuple[str, int]:
        """`ROUTER_WEB_ADDRESS` as the host and port to listen on."""
        return parse_bind(self.web_address)

    @field_validator("web_address")
    @classmethod
    def _web_address(cls, value: str) -> str:
        parse_bind(value)
        return value

    @field_validator("imap_url", "smtp_url", mode="before")
    @classmethod
    def _server(cls, value: Any, info: ValidationInfo) -> ServerUrl | None:
        if value is None or isinstance(value, ServerUrl) or not str(value).strip():
            return value or None
        allow = bool(info.data.get("allow_plaintext"))
        if info.field_name == "smtp_url":
            return replace(parse_server_url(str(value), ("smtp", "smtps")), allow_plaintext=allow)
        url = parse_server_url(str(value), ("imap", "imaps"))
        return replace(url, path=url.path or "INBOX", allow_plaintext=allow)

    @field_validator("templates_dir")
    @classmethod
    def _templates_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a folder")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> str:
        level = str(value).strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("remind_minutes")
    @classmethod
    def _remind(cls, value: int | None, info: ValidationInfo) -> int | None:
        target = info.data.get("first_response_minutes")
        if value is not None and target is not None and value >= target:
            raise ValueError(f"must be shorter than ROUTER_FIRST_RESPONSE_MINUTES ({target})")
        return value

    @field_validator("reply_secret", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        if value is None or isinstance(value, SecretStr):
            return value
        text = str(value).strip()
        if not text:
            return None
        if len(text) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 16`)")
        return text

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis(cls, value: Any) -> str:
        text = str(value).strip()
        if text.startswith(SENTINEL_SCHEME):
            parse_sentinel_url(text)
        elif not re.match(r"^(redis|rediss|unix)://", text):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        return text

    @field_validator("alias", "support_address", "overflow_address", "digest_address",
                     mode="before")
    @classmethod
    def _address(cls, value: Any) -> Address | None:
        if value is None or isinstance(value, Address):
            return value
        if not str(value).strip():
            return None
        return parse_address(str(value))

    @field_validator("support_rules", mode="after")
    @classmethod
    def _rules_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("support_handler", mode="after")
    @classmethod
    def _handler(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.]+:[\w]+", value):
            raise ValueError("must look like package.module:function")
        return value

    @field_validator("pool", mode="before")
    @classmethod
    def _pool(cls, value: Any) -> tuple[PoolMember, ...]:
        return value if isinstance(value, tuple) else parse_pool(str(value))

    @field_validator("away", mode="before")
    @classmethod
    def _away(cls, value: Any) -> frozenset[str]:
        if isinstance(value, frozenset | set | list | tuple):
            return frozenset(str(v).lower() for v in value)
        return frozenset(parse_address(item).address for item in split_list(str(value)))

    @property
    def remind_before_seconds(self) -> float:
        """How long before the first-response target the owner is reminded."""
        if self.remind_minutes is not None:
            return self.remind_minutes * 60.0
        return self.first_response_minutes * 60 / 4

    def member(self, address: str) -> PoolMember | None:
        """The pool member with this address, if any."""
        address = address.lower()
        return next((m for m in self.pool if m.address == address), None)

    def required_imap(self) -> ServerUrl:
        if self.imap_url is None:
            raise ConfigError("ROUTER_IMAP_URL", "is not set")
        return self.imap_url

    def required_smtp(self) -> ServerUrl:
        if self.smtp_url is None:
            raise ConfigError("ROUTER_SMTP_URL", "is not set")
        return self.smtp_url


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning validation errors into one ConfigError naming the variable."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        variable = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else "configuration"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but not set"
        raise ConfigError(variable, message) from None
    members = {m.address for m in settings.pool}
    for variable, named in (("ROUTER_AWAY", settings.away),
                            ("ROUTER_PREMIUM_POOL", set(settings.premium_pool))):
        if unknown := set(named) - members:
            raise ConfigError(variable, f"{', '.join(sorted(unknown))} not in ROUTER_POOL")
    # The lead may give their hours too: the digest goes out in their time zone.
    leads = {a.address for a in (settings.overflow_address,) if a is not None}
    if unknown := set(settings.hours) - members - leads:
        raise ConfigError("ROUTER_HOURS", f"{', '.join(sorted(unknown))} not in ROUTER_POOL")
    if settings.premium_pool and not settings.premium:
        raise ConfigError("ROUTER_PREMIUM_POOL", "is set but ROUTER_PREMIUM names no account")
    check_names([*os.environ, *_dotenv_names()])
    return settings


def _dotenv_names() -> list[str]:
    path = Path(".env")
    if not path.is_file():
        return []
    return [str(k) for k in dotenv_values(path)]


def check_names(names: list[str]) -> None:
    """Refuse a ROUTER_* variable that is no setting: a typo would be ignored in silence."""
    known = {name.upper() for name in Settings.model_fields}
    for name in names:
        if not name.startswith(ENV_PREFIX) or name[len(ENV_PREFIX):] in known:
            continue
        close = difflib.get_close_matches(name[len(ENV_PREFIX):], sorted(known), n=1)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        raise ConfigError(name, f"is not a setting{hint} (see deploy/.env.example)")
