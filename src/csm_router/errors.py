"""The two kinds of failure every adapter translates its library's exceptions into."""


class TransientError(Exception):
    """Worth retrying later: a server is down, busy, or said 4xx."""


class PermanentError(Exception):
    """Retrying will not help: quarantine the message or dead-letter the job."""
