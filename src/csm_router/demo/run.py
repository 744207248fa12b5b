"""`csm-router demo`: the real router and worker on embedded servers, with a story to watch."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from csm_router.demo.figures import figures
from csm_router.demo.finale import finale
from csm_router.demo.imap import EmbeddedImap
from csm_router.demo.relay import RecordingSmtp
from csm_router.demo.stage import ALIAS, PASSWORD, WIDTH, Demo
from csm_router.demo.story import story

INTRO = (
    "csm-router demo. An embedded IMAP server holds the pooled mailbox success@acme.com, "
    "an embedded SMTP relay records everything the worker sends, and Redis is in memory. "
    "The router and the worker are the real ones; nothing leaves this machine."
)


def intro(out: Console) -> None:
    out.print(Panel(INTRO, title="csm-router", width=min(WIDTH, out.width)))


def run_demo(*, keep_running: bool = False) -> int:
    """Tell the story on the terminal; answers the exit code."""
    tell(Console(highlight=False), keep_running=keep_running)
    return 0


def tell(out: Console, *, keep_running: bool = False, preview_folder: Path | None = None) -> Demo:
    """The whole story, told on `out`; answers the demo, its servers stopped."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # fakeredis has no CONFIG GET: the warning about Redis's persistence says nothing here.
    # Each quarantined message is a row of its step's table, with the reason. Both are
    # quietened for the story only (it also runs inside other programs' processes).
    quiet = [logging.getLogger(f"csm_router.{name}") for name in ("durability", "router")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        intro(out)
        with EmbeddedImap(ALIAS, PASSWORD) as imap, RecordingSmtp() as smtp:
            demo = Demo(imap, smtp, out)
            story(demo)
            figures(demo)
            finale(demo, keep_running=keep_running, preview_folder=preview_folder)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return demo
