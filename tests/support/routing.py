"""Mail to the alias, decided and recorded in-process as the router does (no IMAP)."""

from __future__ import annotations

from csm_router.core.classify import RuleSet
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.state.store import Outcome, Store, message_key


class Mail:
    """Writes mail to the alias and records each decision; each message is numbered."""

    def __init__(self, store: Store, support_rules: RuleSet | None = None) -> None:
        self.store, self.n, self.support_rules = store, 0, support_rules

    def __call__(self, sender: str, at: float, *, subject: str = "", reply_to: str = "",
                 headers: str = "", body: str = "Hello", language: str | None = None
                 ) -> Outcome:
        """A message from `sender` at `at`: a new matter (a subject of its own) unless it
        names a subject or the message it replies to; in `language` as if detected so."""
        self.n += 1
        threading = f"In-Reply-To: {reply_to}\r\n" if reply_to else ""
        raw = (f"{headers}From: {sender}\r\nTo: success@acme.com\r\n"
               f"Subject: {subject or f'Question {self.n}'}\r\n"
               f"Message-ID: <m{self.n}@example.com>\r\n{threading}\r\n{body}\r\n").encode()
        msg = parse(raw)
        decision = decide(msg, self.store.snapshot(msg, at, support_rules=self.support_rules,
                                                   language=language))
        return self.store.record(message_key(msg, raw), msg, decision, at, raw=raw,
                                 language=language)
