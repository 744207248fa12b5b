"""`csm-router web` for several teams (ROUTER_TEAMS): each team's status page under
`/<team>/`, and `/healthz` and `/metrics` for them all (each sample labelled by team)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from html import escape

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from csm_router.app.web import PAGE_HEADERS, create_app, web_password
from csm_router.app.webguard import Gate, HostCheck, LoginThrottle, allowed_hosts
from csm_router.config import Settings
from csm_router.config.teams import in_team
from csm_router.lead.health import Health
from csm_router.lead.metrics import RedisCollector


class TeamScope:
    """Serves a request of one team's application in that team (its keys, its settings)."""

    def __init__(self, team: str, app: ASGIApp) -> None:
        self.team, self.app = team, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with in_team(self.team):
            await self.app(scope, receive, send)


class TeamsCollector(Collector):
    """Every team's figures in one exposition, each sample labelled `team`."""

    def __init__(self, collectors: dict[str, Collector]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for team, collector in self.collectors.items():
            with in_team(team):
                families = list(collector.collect())
            for family in families:
                into = merged.setdefault(family.name, Metric(
                    family.name, family.documentation, family.type, family.unit))
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "team": team}, sample.value,
                                    sample.timestamp, sample.exemplar)
        return merged.values()


def create_teams_app(shared: Settings, teams: dict[str, tuple[Settings, Redis]],
                     clock: Callable[[], float] = time.time) -> Starlette:
    """One application for every team: `/<team>/` is that team's status page."""
    throttle = LoginThrottle()
    apps = {}
    for team, (settings, redis) in teams.items():
        with in_team(team):
            apps[team] = create_app(settings, redis, clock, throttle)
    site = _Teams(shared, teams, clock, throttle)
    routes: list[BaseRoute] = [Route("/healthz", site.healthz), Route("/metrics", site.metrics),
                               Route("/", site.index)]
    routes += [Mount(f"/{team}", app=TeamScope(team, app)) for team, app in apps.items()]
    return Starlette(routes=routes,
                     middleware=[Middleware(HostCheck, allowed=allowed_hosts(shared))])


class _Teams:
    """What the shared addresses answer: every team's health and figures, and the list."""

    def __init__(self, shared: Settings, teams: dict[str, tuple[Settings, Redis]],
                 clock: Callable[[], float], throttle: LoginThrottle) -> None:
        self.shared, self.teams, self.clock = shared, teams, clock
        self.password = web_password(shared)
        self.gate = Gate(shared.web_user, self.password, throttle)
        self.healths = {}
        for team, (settings, redis) in teams.items():
            with in_team(team):
                self.healths[team] = Health(redis, zone=settings.report_zone)
        self.registries = {}
        for detailed in (False, True):
            self.registries[detailed] = CollectorRegistry(auto_describe=False)
            self.registries[detailed].register(TeamsCollector({
                team: RedisCollector(redis, settings, detailed=detailed)
                for team, (settings, redis) in teams.items()}))

    def healthz(self, request: Request) -> Response:
        detailed = self.gate.check(request)
        if isinstance(detailed, Response):
            return detailed
        healthy, lines = True, []
        for team, health in self.healths.items():
            with in_team(team):
                health.look()
                fine, said = health.report(self.clock(), detailed=detailed)
            healthy = healthy and fine
            lines += [f"{team}: {line}" for line in said]
        return PlainTextResponse(("ok\n" if healthy else "unhealthy\n") + "".join(
            f"- {line}\n" for line in lines), status_code=200 if healthy else 503)

    def metrics(self, request: Request) -> Response:
        detailed = self.gate.check(request)
        if isinstance(detailed, Response):
            return detailed
        try:
            body = generate_latest(self.registries[detailed])
        except Exception as exc:  # a team's Redis down: said as an error Prometheus records
            return PlainTextResponse(f"metrics unavailable: {type(exc).__name__}\n",
                                     status_code=503)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def index(self, request: Request) -> Response:
        allowed = True if self.password is None else self.gate.check(request)
        if isinstance(allowed, Response) or not allowed:
            return allowed if isinstance(allowed, Response) else self.gate.refused()
        rows = []
        for team, (settings, _) in self.teams.items():
            with in_team(team):
                verdict = self.healths[team].verdict(self.clock(), detailed=True)
            state = "healthy" if verdict.healthy else "unhealthy"
            rows.append(f'<li><a href="{escape(team)}/">{escape(team)}</a> &middot; '
                        f"{escape(settings.alias.address)} &middot; {state}</li>")
        response = HTMLResponse("<!doctype html><title>csm-router</title><h1>Teams</h1>"
                                f"<ul>{''.join(rows)}</ul>")
        response.headers.update(PAGE_HEADERS)
        return response
