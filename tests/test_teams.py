"""Several teams in one deployment: settings per team over the shared ones, keys, scripts
and queues in each team's own namespace, and threads that never cross."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from csm_router.config import ConfigError, load_settings
from csm_router.config.teams import in_team, use_team
from csm_router.lead import report
from csm_router.runtime import Runtime
from csm_router.state.keys import key
from support.routing import Mail

SHARED = {
    "ROUTER_TEAMS": "eu,us",
    "ROUTER_ALIAS": "EU Success <success-eu@acme.com>",
    "ROUTER_POOL": "alice@acme.com, bob@acme.com",
    "ROUTER_US_ALIAS": "US Success <success-us@acme.com>",
    "ROUTER_US_POOL": "carol@acme.com, dan@acme.com",
    "ROUTER_US_MAX_OPEN_PER_CSM": "3",
}


@pytest.fixture
def env(bare_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name, value in SHARED.items():
        bare_env.setenv(name, value)
    return bare_env


def test_a_team_takes_its_own_settings_and_the_shared_ones_for_the_rest(
        env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_FIRST_RESPONSE_MINUTES", "45")
    with in_team("eu"):
        eu = load_settings()
    with in_team("us"):
        us = load_settings()
    assert eu.alias.address == "success-eu@acme.com" and eu.max_open_per_csm == 0
    assert us.alias.address == "success-us@acme.com" and us.max_open_per_csm == 3
    assert [m.address for m in us.pool] == ["carol@acme.com", "dan@acme.com"]
    assert eu.first_response_minutes == us.first_response_minutes == 45
    assert eu.teams == us.teams == ("eu", "us")


def test_a_bad_team_value_is_named_by_its_own_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_US_MAX_OPEN_PER_CSM", "lots")
    with in_team("us"), pytest.raises(ConfigError, match="ROUTER_US_MAX_OPEN_PER_CSM"):
        load_settings()
    with in_team("eu"):
        assert load_settings().max_open_per_csm == 0  # the other team is fine


def test_per_team_names_are_settings_only_for_named_teams(env: pytest.MonkeyPatch) -> None:
    env.setenv("ROUTER_APAC_POOL", "erin@acme.com")
    with in_team("eu"), pytest.raises(ConfigError, match="ROUTER_APAC_POOL"):
        load_settings()


@pytest.mark.parametrize(("teams", "said"), [
    ("eu,EU", "names a team twice"),
    ("eu,north-america", "is not a team name"),
    ("eu,premium", "premium: a team of that name would make another setting's name mean"),
])
def test_team_names_that_cannot_be_are_refused(env: pytest.MonkeyPatch, teams: str,
                                               said: str) -> None:
    env.setenv("ROUTER_TEAMS", teams)
    with pytest.raises(ConfigError, match="ROUTER_TEAMS") as caught:
        load_settings()
    assert said in str(caught.value)


def test_each_team_keeps_its_keys_scripts_and_queues_apart(env: pytest.MonkeyPatch) -> None:
    redis = fakeredis.FakeRedis()
    outcomes = {}
    for team in ("eu", "us"):
        with in_team(team):
            assert key("thread", 1001) == f"csm:{{{team}}}:thread:1001"
            rt = Runtime.from_settings(load_settings(), redis)
            rt.store.ensure_sequence()
            # The same customer's same message reaches both aliases: a thread in each.
            outcomes[team] = Mail(rt.store)("Jane <jane@globex.com>", 1_800_000_000.0)
            assert rt.outbox.offer() == 1
            assert [q.name for q in rt.queues.values()] == [f"{team}-deliver", f"{team}-support"]
    assert outcomes["eu"].ref == outcomes["us"].ref == 1001
    assert outcomes["eu"].owner == "alice@acme.com" and outcomes["us"].owner == "carol@acme.com"
    names = {k.decode() for k in redis.keys("csm:*")}
    outside = {n for n in names if not n.startswith(("csm:{eu}:", "csm:{us}:"))}
    assert outside == set(), outside  # nothing of a team's outside its namespace
    assert redis.llen("rq:queue:eu-deliver") == redis.llen("rq:queue:us-deliver") == 1
    with in_team("us"):
        assert redis.hget(key("thread", 1001), "owner") == b"carol@acme.com"


def test_the_report_names_its_team_in_json_and_on_every_csv_row(
    env: pytest.MonkeyPatch,
) -> None:
    redis = fakeredis.FakeRedis()
    day = datetime.fromtimestamp(1_800_000_000.0, UTC).date()
    with in_team("us"):
        rt = Runtime.from_settings(load_settings(), redis)
        rt.store.ensure_sequence()
        Mail(rt.store)("Jane <jane@globex.com>", 1_800_000_000.0)
        figures = report.build(rt.store, day, day + timedelta(days=1))
    assert figures.as_dict()["team"] == "us"
    header, *rows = figures.csv().splitlines()
    assert header.endswith(",team") and rows and all(r.endswith(",us") for r in rows)


def test_every_thread_of_a_teams_process_serves_that_team() -> None:
    seen: list[str] = []
    use_team("us")
    try:
        # The worker's heartbeat, pump and epoch watch run in threads of their own.
        thread = threading.Thread(target=lambda: seen.append(key("epoch")))
        thread.start()
        thread.join()
        with in_team("eu"):  # a web request of another team, in the same process
            seen.append(key("epoch"))
        seen.append(key("epoch"))
    finally:
        use_team("")
    assert seen == ["csm:{us}:epoch", "csm:{eu}:epoch", "csm:{us}:epoch"]
    assert key("epoch") == "csm:epoch"
