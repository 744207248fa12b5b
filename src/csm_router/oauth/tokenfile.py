"""The token file of a delegated login: the refresh token `csm-router login` obtained.

Microsoft rotates a refresh token at every use, so every renewal writes the file again;
a process killed mid-write must leave the old file or the new one, never half of either
(written beside it, synced, then renamed over it). Routers and workers on one host share
the file: a renewal holds a lock on it from reading to writing, so two processes never
spend the same refresh token.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from csm_router.errors import RefusedError


class TokenFile:
    """A JSON file, mode 0600, read and rewritten under an exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        """The stored login; RefusedError if there is none (run `csm-router login`)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RefusedError(f"no delegated login in {self.path} (ROUTER_OAUTH_TOKEN_FILE):"
                               " run `csm-router login` first") from None
        except (OSError, ValueError) as exc:
            raise RefusedError(f"ROUTER_OAUTH_TOKEN_FILE {self.path} cannot be read "
                               f"({type(exc).__name__}): run `csm-router login` again") from None
        if not isinstance(data, dict):
            raise RefusedError(f"ROUTER_OAUTH_TOKEN_FILE {self.path} is not a login written "
                               "by `csm-router login`")
        return data

    def write(self, data: dict[str, Any]) -> None:
        """Replace the file at once: the old one or the new one survives a crash."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        with contextlib.suppress(OSError):  # the rename reaches the disk too
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    @contextlib.contextmanager
    def locked(self) -> Iterator[TokenFile]:
        """Hold the login for a renewal: read, renew, write, with no one else between."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # closing releases the lock
