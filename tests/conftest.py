"""Fixtures starting real servers for the integration tests (see tests/support/servers.py)."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from csm_router.demo.relay import RecordingSmtp
from support.servers import (
    DovecotServer,
    Mailbox,
    MissingServerBinary,
    RedisServer,
    grant_traverse,
)

_mailbox_numbers = itertools.count(1)


def _fail_missing(exc: MissingServerBinary) -> NoReturn:
    # Fail rather than skip: a missing server must not look like a green run.
    raise pytest.fail.Exception(str(exc), pytrace=False) from None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session."""
    try:
        with RedisServer(tmp_path_factory.mktemp("redis")) as server:
            yield server
    except MissingServerBinary as exc:
        _fail_missing(exc)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session redis-server, flushed before the test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    """A Dovecot IMAP + LMTP server for the whole session; any user logs in with .password."""
    root = tmp_path_factory.mktemp("dovecot")
    basetemp = tmp_path_factory.getbasetemp()
    # Under pytest-xdist each worker's basetemp is a folder of the run's (<basetemp>/gw0).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        basetemp = basetemp.parent
    # pytest-of-<user> is 0700 too; pytest itself resets it to 0700 at the next session start.
    up_to = basetemp.parent if basetemp.parent.name.startswith("pytest-of-") else basetemp
    grant_traverse(root, up_to=up_to)
    try:
        with DovecotServer(root) as server:
            yield server
    except MissingServerBinary as exc:
        _fail_missing(exc)


@pytest.fixture
def mailbox(dovecot: DovecotServer) -> Iterator[Mailbox]:
    """A fresh, empty mailbox (success-<n>@acme.com) of its own for each test."""
    box = Mailbox(dovecot, f"success-{next(_mailbox_numbers)}@acme.com")
    yield box
    box.close()


@pytest.fixture
def smtp() -> Iterator[RecordingSmtp]:
    """A recording SMTP relay for this test."""
    with RecordingSmtp() as recorder:
        yield recorder


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """A test that sets logging up as a process does (the demo, `main`) changes the root
    logger's level and handlers; later tests in the same process would then capture
    nothing."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No ROUTER_* variable set and no .env (the working directory is empty): a test sets
    exactly the settings it means."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("ROUTER_"):
            monkeypatch.delenv(name)
    return monkeypatch
