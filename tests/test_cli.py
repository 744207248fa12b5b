"""The command line as a shell sees it."""

from __future__ import annotations

import shutil
import subprocess
import sys

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
