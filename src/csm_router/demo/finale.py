"""The demo's end: the lead's status page as text, the weekly digest's preview, and what
to try next."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from rich.panel import Panel

from csm_router.demo.page import StatusPage, page_text
from csm_router.demo.stage import WIDTH, Demo, lead_day

PAGE_LINES = 22  # of the status page's text; the rest is in the browser
NEXT = (
    "Next: run it on your own mailbox.",
    "  1. cp deploy/.env.example .env; set the IMAP, SMTP and Redis URLs, the alias",
    "     and the pool in it.",
    "  2. csm-router check: it logs in to each server and says what is wrong.",
    "  3. Run the Procfile's processes (router, worker, web), e.g. with honcho, or",
    "     deploy/systemd's units.",
    "  4. Each CSM pastes `csm-router signature their@address` into their mail.",
    "  `csm-router demo --keep-running` keeps this status page open to look around.",
)


def finale(demo: Demo, *, keep_running: bool = False, preview_folder: Path | None = None) -> None:
    """Steps 11 and 12, the next steps, and with `keep_running` the page until Enter."""
    out = demo.out
    with StatusPage(demo) as page:
        out.print("\n[bold]11. The lead's status page[/] (`csm-router web`), as text:")
        lines = page_text(page.fetch())
        shown = lines[:PAGE_LINES]
        if len(lines) > PAGE_LINES:
            shown.append(f"... and {len(lines) - PAGE_LINES} more lines")
        out.print(Panel("\n".join(shown), title=page.url, width=min(WIDTH, out.width)))
        out.print("Its banners are right: the demo's router runs only during the steps, "
                  "and the in-memory Redis keeps nothing on disk.")

        year, week, _ = lead_day(demo).isocalendar()
        label = f"{year}-W{week:02d}"
        out.print("\n[bold]12. The weekly digest[/] the lead gets on Monday morning, for "
                  f"this week so far (`csm-router digest --preview --week {label}`):")
        for path in digest_preview(demo, label, preview_folder):
            out.print(f"  {path}")

        out.print()
        for line in NEXT:
            out.print(line, highlight=False)
        if keep_running:
            out.print(f"\nThe status page is at {page.url} (no password: loopback only). "
                      "Press Enter or Ctrl-C to stop.")
            with contextlib.suppress(KeyboardInterrupt, EOFError):
                input()


def digest_preview(demo: Demo, week: str, folder: Path | None) -> list[Path]:
    """The digest of `week`, written to files as the worker would send it."""
    from csm_router.lead import digest

    folder = folder or Path(tempfile.mkdtemp(prefix="csm-router-demo-"))
    return digest.write_preview(demo.store, week, folder)
