"""The two kinds of failure every adapter translates its library's exceptions into, the
backoff with which a process waits the transient kind out, and how to tell a server's
fault from a message's."""

import redis


class TransientError(Exception):
    """Worth retrying later: a server is down, busy, or said 4xx; `retry_after`, when
    the server said how long to wait (a throttled mailbox), in seconds."""

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after = retry_after


class PermanentError(Exception):
    """Retrying will not help: quarantine the message or dead-letter the job."""


class RefusedError(PermanentError):
    """A server refused what the configuration gives it (a login, a folder): waiting will
    not help, only a corrected setting will, so a process stops (exit code 2) and says
    which variable to fix."""


class LoginRefusedError(RefusedError):
    """A login was refused: a password, or a token that the identity provider would not
    grant or the mail server would not take. With OAuth, once a process has logged in, an
    administrator can mend it (a new secret, consent given again) without a restart, so
    the process waits for that instead of stopping."""


class UnsendableError(PermanentError):
    """A mail cannot go out because of its own content: rendering it failed, or the relay
    refused its text. Sending it again, or to someone else, fails the same way."""


# Redis error codes that say the server (not the data sent) is in trouble: a restart, a
# failover, memory, a busy script, a missing script cache, permissions; and our scripts'
# NOSEQ (Redis lost its data). Waited out.
_SERVER_CODES = frozenset({
    "LOADING", "READONLY", "OOM", "MASTERDOWN", "NOSCRIPT", "BUSY", "TRYAGAIN",
    "CLUSTERDOWN", "NOREPLICAS", "MISCONF", "NOAUTH", "WRONGPASS", "NOPERM", "EXECABORT",
    "UNBLOCKED", "MOVED", "ASK", "CROSSSLOT", "NOSEQ",
})

_SERVER_ERRORS = (
    redis.exceptions.BusyLoadingError, redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError, redis.exceptions.NoScriptError,
    redis.exceptions.MasterDownError, redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError, redis.exceptions.NoPermissionError,
    redis.exceptions.ExecAbortError, redis.exceptions.AskError, redis.exceptions.MovedError,
)


def server_fault(exc: redis.RedisError) -> bool:
    """Whether Redis failed for its own reasons (to be waited out) rather than because of
    the data a script was given (a cjson decode error, a type error: the message's fault).

    redis-py strips the code of the errors it knows (OOM, READONLY...) into `status_code`
    and subclasses; other codes (BUSY, MISCONF...) stay the first word of the text.
    """
    if isinstance(exc, redis.DataError):
        return False  # the data was refused before it was even sent
    if not isinstance(exc, redis.ResponseError):
        return True  # connection refused or reset, a timeout, a protocol error
    if isinstance(exc, _SERVER_ERRORS):
        return True
    code = getattr(exc, "status_code", None) or ""
    if code and code != "ERR":
        return True
    words = str(exc).split(None, 1)
    return bool(words) and words[0] in _SERVER_CODES


class Backoff:
    """Exponential reconnect delay: 1s, 2s, 4s ... capped."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first
