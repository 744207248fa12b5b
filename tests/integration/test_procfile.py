"""The Procfile run by honcho from a copy of deploy/.env.example, as the README says."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis as redis_lib

from csm_router.demo.relay import RecordingSmtp
from csm_router.state.processes import processes
from support.product import customer_mail
from support.servers import Mailbox, RedisServer, free_ports, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "s3cret pass"  # a space, in a quoted .env value


def edited_example(values: dict[str, str]) -> str:
    """deploy/.env.example with `values` set, each written as the example says: quoted."""
    text = (ROOT / "deploy" / ".env.example").read_text()
    for name, value in values.items():
        line = f'{name}="{value}"'
        text, found = re.subn(rf"^(# )?{name}=.*$", line, text, flags=re.MULTILINE)
        if not found:
            text += f"{line}\n"
    return text


@pytest.fixture
def redis_with_password(tmp_path: Path) -> tuple[RedisServer, str]:
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    with server.client() as client:
        client.config_set("requirepass", "redis-pw")
    yield server, f"redis://:redis-pw@{server.host}:{server.port}/0"  # type: ignore[misc]
    server.stop()


def test_honcho_runs_the_procfile_from_the_example_env_with_names_and_spaces_intact(
    mailbox: Mailbox, smtp: RecordingSmtp, redis_with_password: tuple[RedisServer, str],
    tmp_path: Path,
) -> None:
    _, redis_url = redis_with_password
    (web_port,) = free_ports(1)
    app = tmp_path / "app"
    app.mkdir()
    (app / ".env").write_text(edited_example({
        "ROUTER_IMAP_URL": mailbox.imap_url,
        "ROUTER_SMTP_URL": smtp.url,
        "ROUTER_REDIS_URL": redis_url,
        "ROUTER_ALIAS": f"Acme Customer Success <{mailbox.user}>",
        "ROUTER_POOL": "Alice Smith <alice@acme.com>*2, Bob Jones <bob@acme.com>",
        "ROUTER_WEB_ADDRESS": f"127.0.0.1:{web_port}",
        "ROUTER_WEB_PASSWORD": PASSWORD,
        # Spaces and a ';' in one value; the lead's zone only, so routing is unaffected.
        "ROUTER_HOURS": "cs-lead@acme.com=Europe/Berlin 09-17 Mon-Fri",
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the Procfile runs csm-router
    log = (tmp_path / "honcho.log").open("wb")
    honcho = subprocess.Popen(
        [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), "-d", str(app),
         "-e", str(app / ".env"), "-c", "worker=2"],
        cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _, raw = customer_mail("Dana Lee <dana@globex.com>", "Exporting the dashboard",
                               to=mailbox.user)
        mailbox.deliver(raw)
        (forward,) = smtp.wait_for(1, timeout=30)
        client = redis_lib.Redis.from_url(redis_url)
        wait_until(lambda: len([p for p in processes(client) if p.role == "worker"]) == 2,
                   "two workers reporting", timeout=30)
        names = sorted(p.name for p in processes(client) if p.role == "worker")
        metrics = scrape(web_port)
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        honcho.wait(timeout=30)
        log.close()
    said = (tmp_path / "honcho.log").read_text()
    header = f'From: "Dana Lee via Acme Customer Success" <{mailbox.user}>\r\n'
    assert header.encode() in forward.data, said
    assert forward.rcpt_tos == ["alice@acme.com"]
    assert forward.message["To"].addresses[0].display_name == "Alice Smith"
    # Stable and distinct: honcho's worker.1 and worker.2, on this host.
    assert names[0] != names[1] and names[0].endswith("worker.1"), names
    assert names[1].endswith("worker.2")
    for name in names:
        assert f'name="{name}"' in metrics
    assert "Traceback" not in said and "redis-pw" not in said


def scrape(port: int) -> str:
    """/metrics as a logged-in Prometheus sees it: processes by name."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    wait_until(lambda: _answers(port), "web answering", timeout=30)
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
            return True
    except urllib.error.HTTPError:
        return True  # unhealthy, but serving
    except OSError:
        return False
