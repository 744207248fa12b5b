"""The demo's end: the lead's status page as text, the weekly digest's preview, and what
to try next."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType

import uvicorn
from rich.panel import Panel

from csm_router.app.web import create_app
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


class StatusPage:
    """`csm-router web`'s application on the demo's Redis, on a free loopback port.

    The socket listens before the server thread starts, so a request made at once waits
    in the backlog instead of racing the start-up.
    """

    def __init__(self, demo: Demo) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        app = create_app(demo.settings, demo.rt.redis, clock=demo.now)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="demo-status-page", daemon=True)

    def __enter__(self) -> StatusPage:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def fetch(self, path: str = "") -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return str(answer.read().decode("utf-8"))


class _PageText(HTMLParser):
    """A page as lines of text: a table row on one line, its cells separated by `|`."""

    BLOCKS = frozenset({"h1", "h2", "h3", "p", "li", "tr", "header", "div", "caption"})
    SKIPPED = frozenset({"head", "script", "style", "title"})

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.line: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIPPED:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.flush()
        elif tag in ("td", "th") and "".join(self.line).strip():
            self.line.append(" | ")
        else:
            self.line.append(" ")  # `<b>3</b> of 3`, `Alice<span>alice@...`: two words

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.flush()
        else:
            self.line.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.line.append(" ".join(data.split()) if data.strip() else " ")

    def flush(self) -> None:
        line = " ".join("".join(self.line).split())
        self.line = []
        if line:
            self.lines.append(line)


def page_text(html: str) -> list[str]:
    parser = _PageText()
    parser.feed(html)
    parser.close()
    parser.flush()
    return parser.lines


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
