"""The two kinds of failure every adapter translates its library's exceptions into, and the
backoff with which a process waits the transient kind out."""


class TransientError(Exception):
    """Worth retrying later: a server is down, busy, or said 4xx."""


class PermanentError(Exception):
    """Retrying will not help: quarantine the message or dead-letter the job."""


class Backoff:
    """Exponential reconnect delay: 1s, 2s, 4s ... capped."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first
