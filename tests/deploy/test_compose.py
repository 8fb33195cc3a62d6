"""deploy/docker-compose.yml against the Compose specification's JSON schema, and the rules it must keep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from tests.deploy.schemas import REPO, check_schema

from canaryd.settings import Settings

COMPOSE = REPO / "deploy" / "docker-compose.yml"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_file_follows_the_compose_specification() -> None:
    result = check_schema("compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_refuses_a_broken_compose_file(tmp_path: Path) -> None:
    """The check can fail: an unknown depends_on condition and a misspelt key are refused."""
    text = COMPOSE.read_text()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("service_completed_successfully", "service_done", 1))
    assert check_schema("compose-spec", broken).returncode != 0
    broken.write_text(text.replace("healthcheck:", "health_check:", 1))
    assert check_schema("compose-spec", broken).returncode != 0


def test_postgres_readiness_is_checked_over_tcp() -> None:
    test = compose()["services"]["postgres"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"] and "-h" in test, test


def test_api_is_published_on_loopback_only() -> None:
    services = compose()["services"]
    published = {name: svc["ports"] for name, svc in services.items() if "ports" in svc}
    assert set(published) == {"api"}
    assert all(str(port).startswith("127.0.0.1:") for port in published["api"]), published


def test_migrate_runs_to_completion_before_api_and_workers() -> None:
    services = compose()["services"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["command"] == ["migrate"]


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def test_the_example_bootstrap_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env copied without changes does not start canaryd with a guessable admin token."""
    token = env_example()["CANARYD_BOOTSTRAP_TOKEN"]
    monkeypatch.setenv("CANARYD_BOOTSTRAP_TOKEN", token)
    with pytest.raises(ValidationError, match="at least 24") as refused:
        Settings()
    assert token not in str(refused.value)
