"""The `product` fixture: the real `csm-router` commands pointed at this test's servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from csm_router.demo.relay import RecordingSmtp
from support.product import AUTHSERV, POOL, Product
from support.servers import Mailbox


@pytest.fixture
def product(
    mailbox: Mailbox, smtp: RecordingSmtp, redis_url: str, tmp_path: Path
) -> Iterator[Product]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(
        ROUTER_IMAP_URL=mailbox.imap_url,
        ROUTER_SMTP_URL=smtp.url,
        ROUTER_REDIS_URL=redis_url,
        ROUTER_ALIAS=f"Acme Customer Success <{mailbox.user}>",
        ROUTER_POOL=POOL,
        ROUTER_POLL_SECONDS="1",
        ROUTER_OVERFLOW_ADDRESS="cs-lead@acme.com",
        ROUTER_TRUSTED_AUTHSERV_ID=AUTHSERV,  # as production should run
    )
    product = Product(mailbox, smtp, env, tmp_path)
    yield product
    print("\n".join(product.logs))  # pytest shows it for a failing test
