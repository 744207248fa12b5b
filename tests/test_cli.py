"""The command line as a shell sees it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def completion(shell: str) -> str:
    done = subprocess.run([sys.executable, "-m", "csm_router.cli", "--print-completion", shell],
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")
def test_bash_takes_the_completion_and_offers_every_command() -> None:
    script = completion("bash")
    done = subprocess.run(["bash", "-c", f"{script}\ncomplete -p csm-router"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("run", "worker", "check", "failed", "reassign", "signature"):
        assert command in script


def test_zsh_completion_is_offered_too() -> None:
    assert "#compdef csm-router" in completion("zsh")


def test_the_demo_runs_the_whole_story_on_embedded_servers(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "csm_router.cli", "demo"], cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = " ".join(done.stdout.split())  # rich wraps lines to the terminal's width
    for step in ("The pool now", "The lead's figures", "A forward as the CSM sees it",
                 "Why you: new thread, next in the round-robin"):
        assert step in shown
    # Three CSMs touched one account (a customer's moved thread): the digest's flag.
    assert re.search(r"CSMs per account: [a-z.]+ \(3\)", shown)
    assert "Traceback" not in done.stdout + done.stderr


def cli_alone(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command with no configuration at all: what it says before it needs any."""
    return subprocess.run([sys.executable, "-m", "csm_router.cli", *args], cwd=cwd,
                          env={k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")},
                          capture_output=True, text=True, timeout=60)


def test_a_bad_sweep_time_is_named_by_its_option(tmp_path: Path) -> None:
    done = cli_alone("sweep", "--at", "next monday", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "csm-router: --at 'next monday': use a date or time like 2026-12-01 or 2026-12-01T09:00"]


def test_a_usage_error_exits_1_and_a_configuration_error_2(tmp_path: Path) -> None:
    usage = cli_alone("worker", "--nme", "x", cwd=tmp_path)
    assert usage.returncode == 1
    assert "unrecognized arguments: --nme" in usage.stderr
    missing = cli_alone("worker", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        "csm-router: configuration error: 3 problems",
        "  ROUTER_ALIAS: is required but not set",
        "  ROUTER_POOL: is required but not set",
        "  ROUTER_SMTP_URL: is required but not set",
    ]
