"""docker-compose.yml: valid, and consistent with dagster.yaml, the Dockerfile, Settings and the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from rtml_core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
BROKER_SERVICES = {"nats", "ingest", "features", "archive"}  # profile "broker" (docs/broker.md)
SERVICES = {"postgres", "redis", "dagster-webserver", "dagster-daemon", "sidecar", "api"} | BROKER_SERVICES
RTML_SERVICES = SERVICES - {"postgres", "redis", "nats"}
READ_BY_DAGSTER_YAML = {"RTML_DAGSTER_PG_URL"}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _dagster_yaml_env_names(node) -> set[str]:
    """Every ``{env: NAME}`` in dagster.yaml (Dagster's way of reading a value from the environment)."""
    if isinstance(node, dict):
        names = {node["env"]} if set(node) == {"env"} else set()
        return names.union(*(_dagster_yaml_env_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_dagster_yaml_env_names(v) for v in node))
    return set()


def _defaults(text: str) -> str:
    """Compose interpolation with each ``${VAR:-default}`` at its default (``${VAR:?..}`` -> 'x')."""
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "x", text)


def test_services_and_environment_match_settings_and_dagster_yaml():
    compose = _compose()
    services = compose["services"]
    assert set(services) == SERVICES
    settings_vars = {f"RTML_{name.upper()}" for name in Settings.model_fields}
    dagster_env = _dagster_yaml_env_names(yaml.safe_load((REPO / "dagster.yaml").read_text()))
    assert dagster_env == READ_BY_DAGSTER_YAML
    for name in RTML_SERVICES:
        env = services[name]["environment"]
        unknown = {k for k in env if k.startswith("RTML_")} - settings_vars - READ_BY_DAGSTER_YAML
        assert not unknown, f"{name} sets variables rtml does not read: {unknown}"
        assert dagster_env <= set(env), f"{name} lacks what dagster.yaml reads"
        assert env["DAGSTER_HOME"] == "/opt/dagster/home"
        assert set(services[name]["depends_on"]) == {"postgres", "redis"} | ({"nats"} & BROKER_SERVICES
                                                                           if name in BROKER_SERVICES else set())
    for name in BROKER_SERVICES:  # the broker layout is an option: nothing of it starts without the profile
        assert services[name]["profiles"] == ["broker"]
        if name != "nats":
            assert services[name]["environment"]["RTML_BROKER_URL"] == "nats://nats:4222"
    env = services["api"]["environment"]
    offline = sa.make_url(_defaults(env["RTML_OFFLINE_URL"]))
    dagster_pg = sa.make_url(_defaults(env["RTML_DAGSTER_PG_URL"]))
    assert (offline.drivername, offline.host) == (
        "postgresql+psycopg",
        "postgres",
    )  # rtml's offline store driver
    assert (dagster_pg.drivername, dagster_pg.host) == (
        "postgresql+psycopg2",
        "postgres",
    )  # dagster-postgres
    assert offline.database == services["postgres"]["environment"]["POSTGRES_DB"]
    init = next(v for v in services["postgres"]["volumes"] if "initdb" in v).split(":")[0]
    assert f"CREATE DATABASE {dagster_pg.database};" in (REPO / init).read_text()
    assert env["RTML_ONLINE_URL"].startswith("redis://redis:")
    assert (
        services["sidecar"]["environment"]["RTML_STREAM_DAGSTER_URL"]
        == "http://dagster-webserver:3000"
    )


def test_dockerfile_installs_what_the_commands_use():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY dagster.yaml workspace.yaml /opt/dagster/home/" in dockerfile
    assert "DAGSTER_HOME=/opt/dagster/home" in dockerfile
    for package in ("rtml_core", "rtml_assets", "rtml_stream", "api", "rtml_cli", "data"):
        assert f"COPY {package} {package}" in dockerfile
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "rtml_assets.definitions"


def test_service_commands_parse_with_rtml_cli():
    from rtml_cli.serve import serve
    from rtml_stream.command import stream

    services = _compose()["services"]
    sidecar = [_defaults(part) for part in services["sidecar"]["command"]]
    assert sidecar[:3] == ["python", "-m", "rtml_stream"]
    context = stream.make_context("stream", sidecar[3:])
    assert context.params["exchange"] == "kraken" and context.params["symbols"] == "BTC-USD,ETH-USD"
    api = [_defaults(part) for part in services["api"]["command"]]
    assert api[:2] == ["rtml", "serve"]
    context = serve.make_context("serve", api[2:])
    assert (context.params["host"], context.params["port"], context.params["workers"]) == (
        "0.0.0.0",
        8000,
        2,
    )
    for name, port in (("sidecar", 9108), ("api", 8000)):
        mapping = _defaults(services[name]["ports"][0])
        assert mapping == f"{port}:{port}"
    # the Dagster UI can materialize champion_model: loopback only unless RTML_DAGSTER_BIND says otherwise
    assert _defaults(services["dagster-webserver"]["ports"][0]) == "127.0.0.1:3000:3000"


def test_compose_variables_are_documented():
    used = set(re.findall(r"\$\{(RTML_[A-Z_]+)", COMPOSE.read_text()))
    docs = (REPO / "docs" / "operations.md").read_text()
    assert used and not {v for v in used if v not in docs}


def _compose_cli() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(
            check=False, args=["docker", "compose", "version"], capture_output=True
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file(tmp_path):
    cli = _compose_cli()
    if cli is None:
        message = "neither `docker compose` nor `docker-compose` is installed (scripts/install-test-tools.sh)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI=true: a missing tool is a failure, never a skip")
        pytest.skip(message)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTML_")}
    ok = subprocess.run(
        check=False,
        args=[*cli, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "RTML_API_KEYS": "k1"},
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert set(resolved["services"]) == SERVICES
    assert resolved["services"]["api"]["environment"]["RTML_API_KEYS"] == "k1"
    missing = subprocess.run(
        check=False,
        args=[*cli, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert missing.returncode != 0 and "RTML_API_KEYS" in missing.stderr
