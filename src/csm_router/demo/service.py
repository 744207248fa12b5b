"""What the demo's embedded servers share: loopback, and a start and stop around `with`."""

from __future__ import annotations

from types import TracebackType
from typing import Self

LOCALHOST = "127.0.0.1"


class Service:
    """A server started and stopped around a `with` block."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
