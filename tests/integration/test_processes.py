"""Long-running and concurrent `csm-router` processes against real servers."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis as redis_lib

from csm_router.core.message import MalformedMessageError, parse
from csm_router.state.store import key, message_key
from support.product import ALICE, BOB, CAROL, Product, customer_mail
from support.servers import DovecotServer, grant_traverse

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


def start(product: Product, *args: str, log: str) -> subprocess.Popen[bytes]:
    out = open(product.workdir / log, "wb")  # noqa: SIM115  # closed with the process
    return subprocess.Popen([sys.executable, "-m", "csm_router.cli", *args], env=product.env,
                            cwd=product.workdir, stdout=out, stderr=out, start_new_session=True)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its children, as systemd kills a unit's cgroup."""
    subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)], check=False)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_idle_router_routes_at_once_and_reconnects_after_a_drop(
    product: Product, dovecot: DovecotServer
) -> None:
    # With a five-minute poll, only IDLE can route these within the waits below.
    product.env["ROUTER_POLL_SECONDS"] = "300"
    router = start(product, "run", log="router.log")
    worker = start(product, "worker", log="worker.log")
    try:
        product.write("Jane Doe <jane@globex.com>", "One")
        product.smtp.wait_for(1, timeout=30)
        product.write("Joe Roe <joe@initech.io>", "Two")
        product.smtp.wait_for(2, timeout=30)
        dovecot.kick(product.alias)
        product.write("Ann Poe <ann@hooli.com>", "Three")
        sent = product.smtp.wait_for(3, timeout=60)
    finally:
        codes = stop(router), stop(worker)
    assert [str(r.message["Subject"]) for r in sent] == [
        "[CS-1001] One", "[CS-1002] Two", "[CS-1003] Three"]
    assert codes[0] == 0
    router_log = (product.workdir / "router.log").read_text()
    assert "retrying in" in router_log  # the drop was seen and survived
    assert product.mailbox.password not in router_log


def test_two_routers_on_one_mailbox_route_each_message_once(product: Product) -> None:
    for n in range(20):
        product.write(f"C{n} <c{n}@c{n}.com>", f"Question {n:02d}")
    routers = [start(product, "run", "--exit-when-idle", log=f"router{i}.log") for i in (1, 2)]
    assert [r.wait(timeout=120) for r in routers] == [0, 0]
    product.cli("worker", "--burst")
    sent = product.smtp.messages
    assert len(sent) == 20
    assert Counter(r.rcpt_tos[0] for r in sent) == {ALICE: 10, BOB: 5, CAROL: 5}
    refs = sorted(str(r.message["Subject"]).split("]")[0] for r in sent)
    assert refs == [f"[CS-{n}" for n in range(1001, 1021)]


def test_every_message_from_the_corpus_is_accounted_for(product: Product) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"no corpus at {CORPUS}")
    files = sorted(CORPUS.glob("malformed/*/*.eml"))[::6] + sorted(
        CORPUS.glob("bounces/sisimai/*/*.eml"))[::6] + sorted(CORPUS.glob("replies/*/*.eml"))
    delivered = 0
    for path in files:
        try:
            product.deliver(path.read_bytes())
            delivered += 1
        except Exception:  # the MTA itself refuses some broken files: not ours to route
            continue
    assert delivered > 40
    product.route()  # `cli` asserts both processes exit 0: nothing crashed

    client = product.mailbox.imap_client()
    client.select_folder("INBOX", readonly=True)
    fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[]", "FLAGS"])
    assert len(fetched) == delivered  # nothing was deleted
    redis = redis_lib.Redis.from_url(product.env["ROUTER_REDIS_URL"])
    unaccounted = []
    for uid, item in fetched.items():
        raw = item[b"BODY[]"]
        try:
            msgkey = message_key(parse(raw), raw)
        except MalformedMessageError:
            msgkey = message_key(None, raw)
        recorded = redis.hget(key("msg", msgkey), "state")
        if recorded is None and b"$CsmQuarantined" not in item[b"FLAGS"]:
            unaccounted.append(uid)
    assert unaccounted == []
    quarantined = [k for k in redis.scan_iter(key("msg", "*"))
                   if redis.hget(k, "state") == b"quarantined"]
    client.select_folder("Quarantine", readonly=True)
    assert len(client.search("ALL")) == len(quarantined) > 0


# Dovecot's own list less IDLE: the router must notice and poll instead.
NO_IDLE = "imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UIDPLUS MOVE CHILDREN\n"


def test_router_polls_a_server_without_idle(
    product: Product, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("dovecot-no-idle")
    grant_traverse(root, up_to=tmp_path_factory.getbasetemp().parent)
    with DovecotServer(root, extra=NO_IDLE) as server:
        user = "success-poll@acme.com"
        product.env["ROUTER_IMAP_URL"] = server.imap_url(user)
        product.env["ROUTER_POLL_SECONDS"] = "1"
        router = start(product, "run", log="router.log")
        worker = start(product, "worker", log="worker.log")
        try:
            _, raw = customer_mail("Jane Doe <jane@globex.com>", "Polled", to=user)
            server.deliver(user, raw)
            (sent,) = product.smtp.wait_for(1, timeout=30)
        finally:
            stop(router), stop(worker)
    assert str(sent.message["Subject"]) == "[CS-1001] Polled"
    assert "with polling (no IDLE)" in (product.workdir / "router.log").read_text()


def test_relay_trouble_is_retried_until_the_forward_goes_out(product: Product) -> None:
    product.smtp.fail_next(451, "4.3.0 try again later", count=2)
    worker = start(product, "worker", log="worker.log")
    try:
        product.write("Jane Doe <jane@globex.com>", "Patience")
        product.cli("run", "--exit-when-idle")
        # The outbox offers it again after 5 s, then 15 s: the third try succeeds.
        (sent,) = product.smtp.wait_for(1, timeout=60)
    finally:
        stop(worker)
    assert str(sent.message["Subject"]) == "[CS-1001] Patience"


def test_killing_the_router_mid_stream_loses_and_doubles_nothing(product: Product) -> None:
    worker = start(product, "worker", log="worker.log")
    router = start(product, "run", log="router1.log")
    try:
        for n in range(15):
            product.write(f"C{n} <c{n}@c{n}.com>", f"Stream {n:02d}")
        product.smtp.wait_for(5, timeout=60)
        kill(router)
        for n in range(15, 30):  # mail keeps arriving while no router runs
            product.write(f"C{n} <c{n}@c{n}.com>", f"Stream {n:02d}")
        router = start(product, "run", log="router2.log")
        sent = product.smtp.wait_for(30, timeout=120)
    finally:
        stop(router)
        stop(worker)
    subjects = sorted(str(r.message["Subject"]).split("] ", 1)[1] for r in sent)
    assert subjects == [f"Stream {n:02d}" for n in range(30)]
    assert len(product.smtp.messages) == 30  # counted after both processes stopped
    assert "first run" not in (product.workdir / "router2.log").read_text()  # resumed


def test_a_killed_worker_s_job_in_hand_is_taken_up_at_restart(product: Product) -> None:
    product.smtp.hold()  # the relay takes the forward's DATA and sits on it
    worker = start(product, "worker", "--name", "host-1", log="worker1.log")
    product.write("Jane Doe <jane@globex.com>", "In hand")
    product.cli("run", "--exit-when-idle")
    product.smtp.wait_until_held(timeout=60)
    kill(worker)  # while the job is in hand
    product.smtp.release()  # the dead worker's DATA is answered 451 and not recorded
    worker = start(product, "worker", "--name", "host-1", log="worker2.log")
    try:
        # At restart under the same name, not after the heartbeat key expires.
        (sent,) = product.smtp.wait_for(1, timeout=30)
    finally:
        stop(worker)
    assert str(sent.message["Subject"]) == "[CS-1001] In hand"
    assert "taken up again" in (product.workdir / "worker2.log").read_text()


def on_a_terminal(product: Product, *args: str) -> str:
    """What `csm-router ARGS` writes to a terminal (a pseudo-terminal here)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "csm_router.cli", *args], env=product.env,
                            cwd=product.workdir, stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its side
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def test_tables_have_colour_on_a_terminal_and_none_in_a_pipe(product: Product) -> None:
    piped = product.cli("status").stdout
    assert "Alice Smith" in piped
    assert "\x1b[" not in piped  # a file, a ticket or grep gets plain text
    shown = on_a_terminal(product, "status")
    assert "Alice Smith" in shown
    assert "\x1b[" in shown
