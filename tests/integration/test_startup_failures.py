"""What only a corrected setting fixes stops a process at once, in one line, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from support.product import Product
from support.servers import RedisServer, free_ports

pytestmark = pytest.mark.integration


def run_briefly(product: Product, *args: str) -> subprocess.CompletedProcess[str]:
    """A long-running command that must stop by itself, promptly, on its own."""
    return subprocess.run([sys.executable, "-m", "csm_router.cli", *args], env=product.env,
                          cwd=product.workdir, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [("run",), ("worker",), ("web",)])
def test_a_broken_template_override_stops_each_process_in_one_line(
    product: Product, tmp_path: Path, command: tuple[str, ...]
) -> None:
    overrides = tmp_path / "templates"
    overrides.mkdir()
    (overrides / "forward_context.txt.j2").write_text("Account {{ account }}\n\n{% if why %}\n")
    product.env["ROUTER_TEMPLATES_DIR"] = str(overrides)
    done = run_briefly(product, *command)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()  # no traceback, no log around it
    assert line.startswith("csm-router: configuration error: ROUTER_TEMPLATES_DIR: "
                           f"{overrides / 'forward_context.txt.j2'} line 3")
    assert "Traceback" not in done.stdout + done.stderr


def test_a_folder_that_does_not_exist_stops_the_router_and_check_says_the_same(
    product: Product,
) -> None:
    product.env["ROUTER_IMAP_URL"] = product.mailbox.imap_url.replace("/INBOX", "/INBOX%2FNope")
    said = ("ROUTER_IMAP_URL names folder INBOX/Nope, which does not exist on "
            f"{product.mailbox.server.host}")
    done = run_briefly(product, "run")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == f"csm-router: {said}"
    assert "retrying" not in done.stderr and "Traceback" not in done.stderr
    check = product.cli("check", check=False)
    assert check.returncode == 2
    assert said in check.stdout


def test_a_password_the_imap_server_refuses_stops_the_router(product: Product) -> None:
    good = quote(product.mailbox.password, safe="")
    product.env["ROUTER_IMAP_URL"] = product.mailbox.imap_url.replace(f":{good}@", ":wrong@")
    done = run_briefly(product, "run")
    assert done.returncode == 2, done.stderr
    said = (f"the IMAP server refused the login for {product.alias}: check the user and "
            "password in ROUTER_IMAP_URL")
    assert done.stderr.splitlines()[-1] == f"csm-router: {said}"
    assert "Traceback" not in done.stderr and "wrong" not in done.stderr
    check = product.cli("check", check=False)
    assert check.returncode == 2 and said in check.stdout


def test_a_password_redis_refuses_stops_router_worker_and_web_with_exit_2(
    product: Product, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    try:
        with server.client() as client:
            client.config_set("requirepass", "right-password")
        product.env["ROUTER_REDIS_URL"] = f"redis://:wrong-password@{server.host}:{server.port}/0"
        for command in ("run", "worker", "web"):
            done = run_briefly(product, command)
            assert done.returncode == 2, done.stderr
            line = done.stderr.splitlines()[-1]
            assert line.startswith("csm-router: Redis refused the login")
            assert line.endswith("fix the password in ROUTER_REDIS_URL")
            assert "Traceback" not in done.stderr and "wrong-password" not in done.stderr
    finally:
        server.stop()


def test_a_template_failing_at_render_time_fails_that_send_in_one_line_not_a_loop(
    product: Product, tmp_path: Path
) -> None:
    overrides = tmp_path / "templates"
    overrides.mkdir()
    # Compiles (a filter in a branch is looked up only when the branch runs), then fails.
    (overrides / "forward_context.txt.j2").write_text(
        "Account {{ account }}\n{% if ref %}{{ ref | no_such_filter }}{% endif %}\n")
    product.env["ROUTER_TEMPLATES_DIR"] = str(overrides)
    product.write("Jane Doe <jane@globex.com>", "Dashboard export")
    product.cli("run", "--exit-when-idle")
    worker = product.cli("worker", "--burst")
    said = worker.stdout + worker.stderr
    assert "Traceback" not in said
    failed = [line for line in said.splitlines() if "failed for good" in line]
    assert len(failed) == 1, said  # one try, one line: not retried
    assert f"template {overrides / 'forward_context.txt.j2'} line 2 cannot be rendered" in failed[0]
    assert "no_such_filter" in failed[0]
    assert not [r for r in product.smtp.messages if "Dashboard export" in
                str(r.message["Subject"]) and r.rcpt_tos != ["cs-lead@acme.com"]]
    listed = product.cli("failed", "list")
    assert "cannot be rendered" in listed.stdout


def test_a_login_the_relay_refuses_stops_the_worker_and_check_says_so(
    product: Product,
) -> None:
    def refuse(*args: object) -> AuthResult:
        return AuthResult(success=False, handled=False)

    relay = Controller(Sink(), hostname="127.0.0.1", port=free_ports(1)[0],
                       authenticator=refuse, auth_require_tls=False)
    relay.start()
    try:
        product.env["ROUTER_SMTP_URL"] = f"smtp://mailer:wrong@127.0.0.1:{relay.port}"
        done = run_briefly(product, "worker")
        said = ("the SMTP relay refused the login for mailer: check the user and password "
                "in ROUTER_SMTP_URL")
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[-1] == f"csm-router: {said}"
        assert "Traceback" not in done.stderr and "wrong" not in done.stderr
        check = product.cli("check", check=False)
        assert check.returncode == 2
        assert "FAIL  smtp" in check.stdout and "ROUTER_SMTP_URL" in check.stdout
    finally:
        relay.stop()


class Sink:
    """Takes nothing: no mail gets past the login."""


def test_a_quarantine_folder_the_server_will_not_create_stops_the_router(
    product: Product,
) -> None:
    product.env["ROUTER_QUARANTINE_FOLDER"] = "Bad//Name"
    done = run_briefly(product, "run")
    assert done.returncode == 2, done.stderr
    line = done.stderr.splitlines()[-1]
    assert line.startswith("csm-router: ROUTER_QUARANTINE_FOLDER Bad//Name cannot be created on ")
