# One image for every csm-router process; the command picks which:
#   docker run IMAGE            the router (`csm-router run`)
#   docker run IMAGE worker     an RQ worker
#   docker run IMAGE web        /metrics, /healthz and the status page on port 8025
#   docker run IMAGE status     any other command of the CLI
# Configuration comes from the environment (`--env-file .env`), or from a `.env` mounted
# at /etc/csm-router/.env, the working directory. compose.yaml runs the whole set.
#
# Needs BuildKit (the run stage mounts the wheel with `RUN --mount`): the default builder of
# Docker 23 and later and of `docker compose`; with an older engine build with
# `DOCKER_BUILDKIT=1 docker build .` or `docker buildx build .`.

# -- build: the project's wheel, from the sources -----------------------------------------
FROM python:3.11-slim AS builder
WORKDIR /src
COPY . .
# templates/ lives at the top of the repository and reaches the package through the
# src/csm_router/mail/templates symlink; make sure the wheel really carries it, and the Lua
# scripts, rather than find out from the first mail a worker renders.
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels . \
 && python -c "import pathlib, zipfile; \
wheel, = pathlib.Path('/wheels').glob('csm_router-*.whl'); \
shipped = set(zipfile.ZipFile(wheel).namelist()); \
wanted = {'csm_router/mail/templates/' + p.name for p in pathlib.Path('templates').iterdir()} \
  | {'csm_router/state/lua/' + p.name for p in pathlib.Path('src/csm_router/state/lua').glob('*.lua')}; \
missing = sorted(wanted - shipped); \
assert wanted and not missing, f'not in {wheel.name}: {missing}'"

# -- run: that wheel and its dependencies, nothing else ------------------------------------
# The wheel goes in without extras: the demo's embedded servers (the `demo` extra) stay out.
FROM python:3.11-slim
LABEL org.opencontainers.image.title="csm-router" \
      org.opencontainers.image.description="Routes a pooled Customer Success inbox to the right CSM's own mailbox." \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed uid/gid, so a mounted .env or templates folder can be made readable to it.
RUN groupadd --system --gid 10001 csm-router \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin csm-router

# The same path as a host install (deploy/README.md). The wheel is mounted from the build
# stage for this one step, so it leaves no layer behind; the venv gets no pip of its own.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/csm-router/.venv \
 && pip --python /opt/csm-router/.venv/bin/python install \
      --no-cache-dir --disable-pip-version-check /wheels/csm_router-*.whl
ENV PATH=/opt/csm-router/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1

# csm-router reads ./.env: mount one here, or pass the variables in the environment.
WORKDIR /etc/csm-router
USER 10001:10001
EXPOSE 8025

# Asks the web process in this container (ROUTER_WEB_ADDRESS, 0.0.0.0 asked on 127.0.0.1):
# meaningful for `web` only. compose.yaml switches it off for the router and the workers.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["csm-router", "health"]

ENTRYPOINT ["csm-router"]
CMD ["run"]
