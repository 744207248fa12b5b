"""Who the product knows: a mailbox, and a CSM in the pool."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formataddr


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
