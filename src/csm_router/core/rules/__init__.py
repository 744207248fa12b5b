"""The routing policy: an ordered table of small rules; the first that answers wins."""

from __future__ import annotations

from typing import Protocol

from csm_router.core.decision import Decision, Snapshot
from csm_router.core.message import Inbound
from csm_router.core.rules import (
    affinity,
    automatic,
    from_pool_csm,
    from_support,
    impersonation,
    known_thread,
    onboarding_owner,
    round_robin,
    technical,
)


class Rule(Protocol):
    """A rule module: a NAME and a pure `check` that answers a decision or None."""

    NAME: str

    def check(self, msg: Inbound, snap: Snapshot) -> Decision | None: ...


POLICY: tuple[Rule, ...] = (
    # Auto-replies come first: a CSM's out-of-office copied to the alias is not an answer.
    automatic,
    impersonation,  # claims to be a CSM or Support without proof: quarantined
    from_support,
    from_pool_csm,
    known_thread,  # an existing thread stays with its owner, technical or not
    onboarding_owner,  # onboarding includes set-up questions: the owner keeps them too
    technical,
    affinity,  # a new thread from an account someone served lately: back to them
    round_robin,  # always answers (a CSM, or held for overflow): keep last
)
