"""Redis losing its data: the marker every process watches, numbering that only rises,
the lead owed one notice, and whether Redis keeps its data at all."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
import redis
from starlette.testclient import TestClient

from csm_router.app.web import create_app
from csm_router.config import load_settings
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.runtime import Runtime
from csm_router.state.durability import EpochWatch, Loss, epoch_key, persistence_problem
from csm_router.state.processes import ProcessBeat
from csm_router.state.store import key, message_key, text


@pytest.fixture
def rt() -> Iterator[Runtime]:
    settings = load_settings(alias="Acme CS <success@acme.com>", pool="alice@acme.com",
                             away="", overflow_address="cs-lead@acme.com")
    yield Runtime.from_settings(settings, fakeredis.FakeRedis(server=fakeredis.FakeServer()))


def new_thread(rt: Runtime, n: int) -> int | None:
    raw = (f"From: c{n}@c{n}.com\r\nTo: success@acme.com\r\nSubject: Q{n}\r\n"
           f"Message-ID: <q{n}@c.com>\r\n\r\nHello\r\n").encode()
    msg = parse(raw)
    return rt.store.record(message_key(msg, raw), msg, decide(msg, rt.store.snapshot(msg, 1.0)),
                           1.0).ref


def lead_notices(rt: Runtime) -> list[str]:
    entries = [text(e) for e in rt.redis.zrange(key("outbox"), 0, -1)]
    return [e for e in entries if e.startswith("data-loss-")]


def test_numbering_starts_once_and_only_rises(rt: Runtime) -> None:
    first = rt.store.ensure_sequence()
    assert first["lost"] is False and first["next"] == 1001
    assert rt.store.ensure_sequence()["epoch"] == first["epoch"]  # idempotent
    assert new_thread(rt, 1) == 1001
    assert rt.store.ensure_sequence(500)["next"] == 1002  # a lower floor never lowers it
    assert rt.store.ensure_sequence(2000)["next"] == 2001
    assert lead_notices(rt) == []  # a first start is no loss


def test_a_redis_without_numbering_refuses_to_start_a_thread_at_one(rt: Runtime) -> None:
    rt.store.ensure_sequence()
    assert new_thread(rt, 1) == 1001
    rt.redis.flushall()
    with pytest.raises(redis.ResponseError, match="NOSEQ"):
        new_thread(rt, 2)
    assert rt.redis.get(key("seq")) is None


def test_after_a_loss_numbering_goes_on_above_the_floor_and_the_lead_is_owed_once(
    rt: Runtime,
) -> None:
    rt.store.ensure_sequence()
    watches = [EpochWatch(rt.redis, f"router {n}") for n in range(2)]
    assert all(w.intact() for w in watches)
    rt.redis.flushall()
    assert not any(w.intact() for w in watches)
    assert all(w.lost for w in watches)
    # Two routers find it at once; only the first numbers again and owes the notice.
    outs = [rt.store.ensure_sequence(1000 + 41, lost=True, by=f"router {n}") for n in range(2)]
    assert [o["lost"] for o in outs] == [True, False]
    assert outs[0]["epoch"] == outs[1]["epoch"]
    assert new_thread(rt, 3) == 1042
    assert len(lead_notices(rt)) == 1
    loss = Loss.read(rt.redis)
    assert loss is not None and loss.next_ref == 1042 and loss.by == "router 0"


def test_a_process_that_never_saw_the_old_marker_still_hears_of_the_loss(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    watch = EpochWatch(rt.redis, "worker")
    assert not watch.intact()  # nothing yet: a first start
    rt.store.ensure_sequence(1050, lost=True, by="router")
    assert watch.intact()
    assert "worker: Redis lost its data" in caplog.text


def test_healthz_fails_at_once_when_redis_lost_its_data(rt: Runtime) -> None:
    rt.store.ensure_sequence()
    client = TestClient(create_app(rt.settings, rt.redis), base_url="http://127.0.0.1")
    router = ProcessBeat(rt.redis, "router", "success@acme.com/INBOX", poll=30)
    router.imap = "connected"
    router.beat()
    assert client.get("/healthz").status_code == 200
    rt.redis.flushall()
    router.beat()  # the router is alive, and has not yet looked
    answer = client.get("/healthz")
    assert answer.status_code == 503
    assert "Redis lost its data" in answer.text
    rt.store.ensure_sequence(1010, lost=True, by="router")
    answer = client.get("/healthz")
    assert answer.status_code == 200, answer.text
    assert "references went on from CS-1011" in answer.text
    assert rt.redis.get(epoch_key()) is not None


class Configured(fakeredis.FakeRedis):
    """What CONFIG GET answers on a real server (fakeredis has no CONFIG)."""

    def __init__(self, answers: dict[str, str] | None) -> None:
        super().__init__()
        self.answers = answers

    def config_get(  # type: ignore[override]
        self, pattern: str = "*", *args: object, **kwargs: object
    ) -> dict[str, str]:
        if self.answers is None:
            raise redis.ResponseError("unknown command 'CONFIG'")
        return {pattern: self.answers[pattern]}


@pytest.mark.parametrize(("answers", "fatal", "said"), [
    ({"appendonly": "yes", "save": ""}, False, None),
    ({"appendonly": "no", "save": "3600 1"}, False, "only snapshots"),
    ({"appendonly": "no", "save": ""}, True, "keeps no data on disk"),
    (None, False, "cannot tell"),
])
def test_persistence_is_judged_from_config_get(
    answers: dict[str, str] | None, fatal: bool, said: str | None
) -> None:
    got_fatal, got = persistence_problem(Configured(answers))
    assert got_fatal is fatal
    assert (got is None) if said is None else (got is not None and said in got)
