"""The deployment files: the Dockerfile, compose.yaml and the systemd units.

The structural checks always run; the checks that need `docker compose`, a Docker engine
or `systemd-analyze` are skipped, saying why, where those cannot run.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from configparser import ConfigParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dotenv import dotenv_values

from csm_router.config import Settings, check_names, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNITS = ROOT / "deploy" / "systemd"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
REDIS_CONF = ROOT / "deploy" / "redis.conf.example"
PROCFILE = ROOT / "Procfile"

APP_SERVICES = ("router", "worker", "web")
UNIT_FILES = ("csm-router-router@.service", "csm-router-worker@.service", "csm-router-web.service",
              "csm-router-lmtp.service")
INSTALLED = "/opt/csm-router/.venv/bin/csm-router"  # where deploy/README.md installs it
WEB_PORT = 8025
DEMO_PACKAGES = ("pymap", "fakeredis")  # the `demo` extra
# A value that python-dotenv and Compose must read alike: quoted, with `$` and `#` in it.
TRICKY_LINES = "ROUTER_WEB_USER=admin\nROUTER_WEB_PASSWORD='pa$s #1'\n"


# -- reading the files ----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"compose.yaml has no {name} service"
    found = services[name]
    assert isinstance(found, dict)
    return found


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either of Compose's two spellings."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_words(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in as_list(value)]


def seconds(duration: str | int) -> float:
    """A Compose duration (`2m`, `1m30s`) or a systemd time span (`120`, `2min`)."""
    text = str(duration).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"h": 3600, "min": 60, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|min|ms|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    return sum(float(n) * units[u] for n, u in parts)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, continuation lines joined, one list per stage."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments may also sit between the lines of one instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside an instruction"
    stages: list[list[Instruction]] = []
    for entry in logical:
        keyword, _, args = entry.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]  # the last one is the one in force


def unit(name: str) -> dict[str, dict[str, str]]:
    parser = ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string((UNITS / name).read_text())
    return {section: dict(parser[section]) for section in parser.sections()}


def sample_text() -> str:
    """The documented example configuration, as an admin would copy it to `.env`."""
    return ENV_EXAMPLE.read_text() + TRICKY_LINES


def sample_env(directory: Path) -> Path:
    env = directory / ".env"
    env.write_text(sample_text())
    return env


# -- compose.yaml -----------------------------------------------------------------------------


def test_compose_runs_redis_a_router_workers_and_web() -> None:
    assert {"redis", *APP_SERVICES} <= set(compose()["services"])


def test_compose_redis_has_the_settings_of_redis_conf_example() -> None:
    words = command_words(service("redis").get("command"))
    assert words and words[0] == "redis-server"
    options: dict[str, str] = {}
    for flag, value in zip(words[1::2], words[2::2], strict=True):
        assert flag.startswith("--"), words
        options[flag[2:]] = value
    conf = {}
    for line in REDIS_CONF.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            conf[key] = value.strip()
    # `csm-router check` warns about anything but these three.
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "always"
    assert conf["maxmemory-policy"] == "noeviction"
    assert {k: options.get(k) for k in conf} == conf


def test_compose_redis_keeps_its_data_in_a_named_volume_and_is_checked_with_ping() -> None:
    redis = service("redis")
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).partition(":")[2].startswith("7")
    named = set(compose().get("volumes") or {})
    mounts = [str(v).split(":") for v in as_list(redis.get("volumes"))]
    assert any(m[0] in named and m[1] == "/data" for m in mounts), mounts
    probe = " ".join(command_words(redis["healthcheck"]["test"]))
    assert "redis-cli" in probe
    assert "ping" in probe
    assert redis.get("restart") == "unless-stopped"


def test_compose_app_services_share_one_env_file_image_and_redis() -> None:
    env_files = {name: as_list(service(name).get("env_file")) for name in APP_SERVICES}
    assert env_files["router"] == [".env"]
    assert all(files == env_files["router"] for files in env_files.values()), env_files
    assert len({str(service(name).get("image")) for name in APP_SERVICES}) == 1
    for name in APP_SERVICES:
        svc = service(name)
        url = urlsplit(environment(svc)["ROUTER_REDIS_URL"])
        assert (url.scheme, url.hostname) == ("redis", "redis"), (name, url)
        depends = svc.get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form"
        assert depends["redis"]["condition"] == "service_healthy", name
        assert svc.get("restart") == "unless-stopped", name


def test_compose_sets_no_router_variable_the_product_does_not_know() -> None:
    for name in APP_SERVICES:
        check_names(list(environment(service(name))))  # raises ConfigError on a typo


def test_compose_runs_two_workers_each_under_its_own_stable_name() -> None:
    worker = service("worker")
    assert (worker.get("deploy") or {}).get("replicas") == 2
    words = [*command_words(worker.get("entrypoint")), *command_words(worker.get("command"))]
    script = shlex.split(words[-1]) if words[:2] == ["sh", "-c"] else words
    assert script[:3] in (["exec", "csm-router", "worker"], ["csm-router", "worker"]), words
    assert "--name" in script, words
    # The name is the container's hostname: one set here, or the host's, would be shared
    # by every replica, and a worker would take up jobs another one still has in hand.
    assert script[script.index("--name") + 1] == "$$HOSTNAME"
    assert "hostname" not in worker
    assert worker.get("network_mode") != "host"


def test_compose_gives_router_and_worker_as_long_to_stop_as_systemd_does() -> None:
    for name, unit_file in (("router", UNIT_FILES[0]), ("worker", UNIT_FILES[1])):
        grace = seconds(service(name).get("stop_grace_period", "10s"))
        assert grace >= seconds(unit(unit_file)["Service"]["TimeoutStopSec"]), name


def test_compose_web_listens_on_the_published_port_and_keeps_the_image_health_check() -> None:
    web = service("web")
    assert command_words(web.get("command")) == ["web"]
    assert "entrypoint" not in web
    assert environment(web)["ROUTER_WEB_ADDRESS"] == f"0.0.0.0:{WEB_PORT}"
    published = []
    for port in as_list(web.get("ports")):
        if isinstance(port, dict):
            published.append((str(port.get("host_ip")), str(port.get("published")),
                              str(port["target"])))
        else:
            address, host, container = str(port).rsplit(":", 2)
            published.append((address, host, container))
    # On the host's loopback only: never on every interface.
    assert published == [("127.0.0.1", str(WEB_PORT), str(WEB_PORT))], published
    assert f"{WEB_PORT}" in only(final_stage(), "EXPOSE").args.split()
    # No healthcheck of its own: web keeps the image's `csm-router health`.
    check = web.get("healthcheck")
    assert check is None or (not check.get("disable") and "test" not in check), check


def test_compose_router_and_worker_do_not_run_the_web_health_check_on_themselves() -> None:
    # The image's check asks 127.0.0.1:8025, where only a web container listens.
    for name in ("router", "worker"):
        check = service(name).get("healthcheck") or {}
        asks_web = "http://web:" in " ".join(command_words(check.get("test")))
        assert check.get("disable") is True or asks_web, name


def test_health_check_in_web_container_asks_healthz_on_the_published_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    web_module = pytest.importorskip("csm_router.app.web")
    health_url = getattr(web_module, "health_url", None)
    if health_url is None:
        pytest.skip("csm_router.app.web has no health_url yet")
    monkeypatch.chdir(tmp_path)  # no stray .env from the working directory
    env = {k: v for k, v in dotenv_values(stream=io.StringIO(sample_text())).items() if v}
    env.update(environment(service("web")))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert health_url(load_settings()) == f"http://127.0.0.1:{WEB_PORT}/healthz"


# -- the Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_builds_a_wheel_on_python_slim_and_runs_it_on_python_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert stage[0].args.split()[0] == "python:3.11-slim", stage[0]
    builder = " ".join(i.args for i in stages[0] if i.keyword == "RUN")
    assert re.search(r"pip wheel .*--no-deps", builder), builder
    # The templates reach the package through a symlink: the build checks they came along.
    assert "csm_router/mail/templates/" in builder
    assert "csm_router/state/lua/" in builder


def test_dockerfile_final_stage_installs_the_wheel_and_no_sources_or_build_tools() -> None:
    stage = final_stage()
    runs = [i.args for i in stage if i.keyword == "RUN"]
    installs = [r for r in runs if re.search(r"pip (--\S+ \S+ )*install", r)]
    assert len(installs) == 1, runs
    assert re.search(r"\S+\.whl\b", installs[0]), installs[0]
    assert "--no-cache-dir" in installs[0]
    assert "from=builder" in installs[0] or any(
        i.keyword == "COPY" and "--from=builder" in i.args for i in stage
    )
    for instruction in stage:
        if instruction.keyword in ("COPY", "ADD"):
            assert "--from=" in instruction.args, f"sources copied into the image: {instruction}"
    assert not any(re.search(r"apt-get install|gcc|build-essential", r) for r in runs), runs


def test_dockerfile_installs_the_wheel_without_the_demo_extra() -> None:
    (install,) = [i.args for i in final_stage()
                  if i.keyword == "RUN" and re.search(r"pip (--\S+ \S+ )*install", i.args)]
    # Any extra (`...whl[demo]`) or a package named beside the wheel would put the demo's
    # embedded servers into the production image.
    wheel_words = [w for w in install.split() if ".whl" in w]
    assert wheel_words and all(w.endswith(".whl") for w in wheel_words), install
    for package in DEMO_PACKAGES:
        assert package not in install, install


def test_dockerfile_runs_as_a_fixed_non_root_user() -> None:
    stage = final_stage()
    user = only(stage, "USER").args.split(":")[0]
    assert user not in ("", "root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    created = " ".join(i.args for i in stage if i.keyword == "RUN")
    assert f"--uid {user}" in created, "the uid of USER is created in the image"


def test_dockerfile_health_check_asks_csm_router_health() -> None:
    check = only(final_stage(), "HEALTHCHECK").args
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", check))
    assert {"interval", "timeout", "start-period"} <= set(options), check
    assert seconds(options["timeout"]) < seconds(options["interval"])
    assert json.loads(check.partition("CMD")[2]) == ["csm-router", "health"]


def test_dockerfile_runs_the_router_by_default_where_a_mounted_env_is_read() -> None:
    stage = final_stage()
    entry = json.loads(only(stage, "ENTRYPOINT").args)
    cmd = json.loads(only(stage, "CMD").args)
    procfile = dict(line.split(":", 1) for line in PROCFILE.read_text().splitlines() if line)
    assert [*entry, *cmd] == shlex.split(procfile["router"])
    # The app reads ./.env; the units' working directory is where admins already put it.
    workdir = only(stage, "WORKDIR").args
    assert workdir == unit(UNIT_FILES[0])["Service"]["WorkingDirectory"]
    assert f"{workdir}/.env" == unit(UNIT_FILES[0])["Service"]["EnvironmentFile"]


def test_dockerignore_keeps_secrets_and_caches_out_but_not_what_the_wheel_needs() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "keep it to plain exclusions"

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
            or path.startswith(p.rstrip("/") + "/")
            for p in patterns
        )

    for path in (".env", ".git", ".venv", "build", "bench/results", "src/csm_router.egg-info"):
        assert ignored(path), path
    for path in ("pyproject.toml", "README.md", "LICENSE", "src/csm_router/cli/main.py",
                 "src/csm_router/mail/templates", "templates/forward.txt.j2",
                 "src/csm_router/state/lua/record.lua"):
        assert not ignored(path), path


# -- systemd units ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit_file", "command"),
    [(UNIT_FILES[0], ["run"]), (UNIT_FILES[1], ["worker", "--name", "%H-%i"]),
     (UNIT_FILES[2], ["web"]), (UNIT_FILES[3], ["lmtp"])],
)
def test_unit_runs_its_process_from_the_install_with_the_shared_settings(
    unit_file: str, command: list[str]
) -> None:
    service_section = unit(unit_file)["Service"]
    assert shlex.split(service_section["ExecStart"]) == [INSTALLED, *command]
    reference = unit(UNIT_FILES[0])["Service"]
    shared = ("User", "WorkingDirectory", "EnvironmentFile", "Restart", "NoNewPrivileges",
              "ProtectSystem", "ProtectHome", "PrivateTmp")
    assert {k: service_section.get(k) for k in shared} == {k: reference[k] for k in shared}
    assert service_section["ProtectSystem"] == "strict"
    assert unit(unit_file)["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("unit_file", UNIT_FILES)
def test_systemd_analyze_verify_accepts_unit(unit_file: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    true = shutil.which("true")
    assert true is not None
    # verify checks that ExecStart exists: point it at a binary this machine has.
    text = (UNITS / unit_file).read_text()
    assert INSTALLED in text
    copy = tmp_path / unit_file
    copy.write_text(text.replace(INSTALLED, true))
    try:
        done = subprocess.run(
            [analyze, "verify", "--man=no", str(copy)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"systemd-analyze cannot run here: {exc}")
    said = done.stdout + done.stderr
    stem = unit_file.split("@")[0].removesuffix(".service")
    about_us = [line for line in said.splitlines() if stem in line or str(tmp_path) in line]
    if done.returncode != 0 and not about_us:
        pytest.skip(f"systemd-analyze cannot run here: {said.strip()[:300]}")
    assert about_us == []
    assert done.returncode == 0, said


# -- the tools, where they are ------------------------------------------------------------------


def compose_command() -> list[str]:
    """`docker compose` (the plugin) or `docker-compose`, whichever runs here."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for candidate in candidates:
        try:
            done = subprocess.run([*candidate, "version"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return candidate
    pytest.skip("neither `docker compose` (the Compose plugin) nor `docker-compose` runs here")


def compose_project(tmp_path: Path) -> Path:
    """compose.yaml beside a `.env` made from deploy/.env.example, as an admin sets it up."""
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    sample_env(tmp_path)
    return tmp_path


def test_compose_config_accepts_compose_yaml(tmp_path: Path) -> None:
    command = compose_command()
    project = compose_project(tmp_path)
    done = subprocess.run(
        [*command, "-f", str(project / "compose.yaml"), "config", "-q"],
        capture_output=True, text=True, timeout=120, cwd=project,
    )
    assert done.returncode == 0, done.stderr
    assert "WARN" not in done.stderr.upper(), done.stderr


def test_compose_reads_the_env_file_as_csm_router_does(tmp_path: Path) -> None:
    command = compose_command()
    project = compose_project(tmp_path)
    done = subprocess.run(
        [*command, "-f", str(project / "compose.yaml"), "config"],
        capture_output=True, text=True, timeout=120, cwd=project,
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    expected = {k: v for k, v in dotenv_values(project / ".env").items() if v is not None}
    for name in APP_SERVICES:
        # `config` writes a literal `$` as `$$`, so that its output reads back the same.
        got = {k: v.replace("$$", "$") for k, v in environment(resolved[name]).items()}
        want = {**expected, **environment(service(name))}
        assert got == want, name


def test_docker_builds_an_image_that_runs_as_non_root_with_templates(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client")
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no Docker engine answers: {exc}")
    if info.returncode != 0:
        pytest.skip("no Docker engine answers `docker info`")
    tag = f"csm-router:test-{uuid.uuid4().hex[:12]}"
    built = subprocess.run(
        [docker, "build", "-q", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=900
    )
    assert built.returncode == 0, built.stderr
    try:
        def run(*args: str) -> str:
            done = subprocess.run([docker, "run", "--rm", *args], capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        assert run("--entrypoint", "id", tag, "-u") == "10001"
        assert run(tag, "--version").startswith("csm-router ")
        count = run("--entrypoint", "python", tag, "-c",
                    "import importlib.resources as r; "
                    "print(len(list(r.files('csm_router').joinpath('templates').iterdir())))")
        assert int(count) == len(list((ROOT / "templates").iterdir()))
        carried = run("--entrypoint", "python", tag, "-c",
                      "import importlib.util as u; "
                      f"print([p for p in {DEMO_PACKAGES!r} if u.find_spec(p)])")
        assert carried == "[]"
        demo = subprocess.run([docker, "run", "--rm", tag, "demo"], capture_output=True,
                              text=True, timeout=120)
        assert demo.returncode == 1, demo.stderr
        assert "pip install 'csm-router[demo]'" in demo.stderr
        inspect = subprocess.run([docker, "image", "inspect", tag], capture_output=True,
                                 text=True, timeout=60)
        config = json.loads(inspect.stdout)[0]["Config"]
        assert config["Healthcheck"]["Test"] == ["CMD", "csm-router", "health"]
        assert "8025/tcp" in config["ExposedPorts"]
    finally:
        subprocess.run([docker, "image", "rm", "-f", tag], capture_output=True, timeout=120)


# -- .env.example and the Procfile, the honcho way -----------------------------------------


def uncommented_example() -> str:
    """The example with every documented `# ROUTER_X=...` line switched on."""
    return "\n".join(line.removeprefix("# ") if re.match(r"# ROUTER_\w+=", line) else line
                     for line in ENV_EXAMPLE.read_text().splitlines()) + "\n"


def test_env_example_quotes_every_value_with_a_space() -> None:
    for line in uncommented_example().splitlines():
        name, sep, value = line.partition("=")
        if not sep or not name.startswith("ROUTER_"):
            continue
        if " " in value:
            assert value[0] == value[-1] == '"' and len(value) > 1, line


def test_env_example_documents_every_setting() -> None:
    text = uncommented_example()
    missing = [name for name in Settings.model_fields
               if not re.search(rf"^ROUTER_{name.upper()}=", text, re.MULTILINE)]
    assert missing == []


def test_honcho_and_csm_router_read_the_env_example_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honcho = pytest.importorskip("honcho.environ")
    text = uncommented_example()
    theirs = honcho.parse(text)
    ours = {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v}
    assert theirs == ours
    assert ours["ROUTER_ALIAS"] == "Acme Customer Success <success@acme.com>"
    # What csm-router makes of it, reading .env itself (pydantic-settings, python-dotenv).
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("ROUTER_")]:
        monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(ENV_EXAMPLE.read_text())
    settings = load_settings()
    assert str(settings.alias) == "Acme Customer Success <success@acme.com>"
    assert [m.display for m in settings.pool][:2] == [
        "Alice Smith <alice@acme.com>", "Bob Jones <bob@acme.com>"]


def test_procfile_runs_router_web_and_workers_each_under_a_stable_name_of_its_own() -> None:
    procfile = dict(line.split(":", 1) for line in PROCFILE.read_text().splitlines() if line)
    assert sorted(procfile) == ["router", "web", "worker"]
    worker = shlex.split(procfile["worker"])
    assert worker[:3] == ["csm-router", "worker", "--name"]
    # honcho's process name (worker.1, worker.2) or Heroku's dyno: one per instance.
    assert "HONCHO_PROCESS_NAME" in worker[3] and "DYNO" in worker[3]
    names = {
        subprocess.run(["sh", "-c", f'echo "{worker[3]}"'], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "HONCHO_PROCESS_NAME": f"worker.{n}"},
                       check=True).stdout.strip()
        for n in (1, 2)
    }
    assert len(names) == 2
