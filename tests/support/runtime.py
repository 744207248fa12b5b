"""A worker's runtime on an in-memory Redis, for unit tests of what workers do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import fakeredis

from csm_router.config import load_settings
from csm_router.runtime import Runtime
from csm_router.sends import jobs


@contextlib.contextmanager
def worker_runtime(smtp_url: str, pool: str) -> Iterator[Runtime]:
    """Settings for the alias success@acme.com with `pool`, jobs pointed at it meanwhile."""
    settings = load_settings(
        alias="Acme Customer Success <success@acme.com>", pool=pool, smtp_url=smtp_url,
        away="", max_open_per_csm=0, overflow_address="cs-lead@acme.com",
    )
    runtime = Runtime.from_settings(settings, fakeredis.FakeRedis())
    runtime.store.ensure_sequence()  # as the router does before recording anything
    jobs.configure(runtime)
    try:
        yield runtime
    finally:
        jobs.configure(None)
