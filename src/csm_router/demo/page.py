"""The lead's status page in the demo: `csm-router web`'s application served on loopback,
and read back as lines of text for the terminal."""

from __future__ import annotations

import socket
import threading
import urllib.request
from html.parser import HTMLParser
from types import TracebackType

import uvicorn

from csm_router.app.web import create_app
from csm_router.demo.stage import Demo


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
