"""docker-compose.yml (issue 12): checked as YAML always, and with ``docker compose config`` where the compose
plugin exists (it only parses and interpolates; no Docker engine is needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
RAY_NODES = ("ray-head", "ray-worker", "ray-worker-gpu")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # resolves the x-common-env / x-node anchors and `<<` merges
    assert isinstance(data, dict)
    return data


def test_compose_has_the_cluster_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "ray-head", "ray-worker", "ray-worker-gpu", "api"} <= set(services)
    assert "--head" in services["ray-head"]["command"]
    for name in ("ray-worker", "ray-worker-gpu"):
        assert "--address=ray-head:6379" in services[name]["command"]
    assert services["api"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert services["api"]["environment"]["PLASTICITY_DATABASE_URL"].startswith("postgresql+psycopg://")
    for name, service in services.items():
        for dep in service.get("depends_on", {}) or {}:
            assert dep in services, (name, dep)
    named = {v.split(":", 1)[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(("/", "."))}
    named.discard("${PLASTICITY_EMNIST_HOST_DIR")
    assert named <= set(compose.get("volumes") or {}), named


def test_every_node_reads_the_same_checkpoint_store(compose: dict[str, Any]) -> None:
    """The checkpoint folder is on the data volume, mounted at the same path on every Ray node and the API."""
    services = compose["services"]
    for name in (*RAY_NODES, "api"):
        env = services[name]["environment"]
        assert env["PLASTICITY_CHECKPOINT_DIR"] == "/data/checkpoints", name
        assert "data:/data" in services[name]["volumes"], name
        assert str(env["PLASTICITY_MAX_ATTEMPTS"]).endswith("3}") or int(env["PLASTICITY_MAX_ATTEMPTS"]) >= 1


def _compose_plugin() -> str | None:
    """Why ``docker compose`` cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return f"the docker compose plugin is absent ({(probe.stderr or probe.stdout).strip().splitlines()[:1]})"
    return None


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    reason = _compose_plugin()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "RAY_AUTH_TOKEN": "test-secret", "DOCKER_CONFIG": str(tmp_path)}
    for profile in ([], ["--profile", "gpu"]):
        proc = subprocess.run(["docker", "compose", "-f", str(COMPOSE), *profile, "config", "--quiet"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
    # the required shared secret is enforced
    env.pop("RAY_AUTH_TOKEN")
    proc = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "RAY_AUTH_TOKEN" in proc.stderr
