"""Secrets at start-up: the bootstrap token must be long enough, and every secret can come from a file
(CANARYD_*_FILE, as Docker/Compose secrets and systemd credentials provide them). No refusal echoes a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from canaryd.settings import MIN_BOOTSTRAP_TOKEN_LENGTH, Settings

GOOD_TOKEN = "k3Yq" * 6  # 24 characters
SHORT_TOKEN = "short-Secret-Token-23-ch"[:23]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CANARYD_"):
            monkeypatch.delenv(name)


def test_a_token_of_24_characters_is_accepted() -> None:
    assert MIN_BOOTSTRAP_TOKEN_LENGTH == 24
    assert Settings(bootstrap_token=GOOD_TOKEN).bootstrap_token == GOOD_TOKEN


@pytest.mark.parametrize("token", ["change-me", SHORT_TOKEN])
def test_a_short_token_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("CANARYD_BOOTSTRAP_TOKEN", token)
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert f"CANARYD_BOOTSTRAP_TOKEN is {len(token)} characters long" in message and "at least 24" in message
    assert token not in message


def test_an_empty_token_means_no_bootstrap_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANARYD_BOOTSTRAP_TOKEN", "")
    assert Settings().bootstrap_token is None


def test_secrets_are_read_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {
        "BOOTSTRAP_TOKEN": GOOD_TOKEN,
        "DATABASE_URL": "postgresql+asyncpg://canaryd:pa%24s@db.internal:5432/canaryd",
        "REDIS_URL": "redis://:secret@redis.internal:6379/0",
    }
    for name, value in values.items():
        path = tmp_path / name.lower()
        path.write_text(value + "\n")  # as `echo` and most secret stores write them
        monkeypatch.setenv(f"CANARYD_{name}_FILE", str(path))
    settings = Settings()
    assert settings.bootstrap_token == values["BOOTSTRAP_TOKEN"]
    assert settings.database_url == values["DATABASE_URL"]
    assert settings.redis_url == values["REDIS_URL"]
    assert not settings.embedded


def test_a_short_token_from_a_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("change-me\n")
    monkeypatch.setenv("CANARYD_BOOTSTRAP_TOKEN_FILE", str(tmp_path / "token"))
    with pytest.raises(ValidationError, match="at least 24"):
        Settings()


def test_a_variable_and_its_file_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "url").write_text("redis://elsewhere:6379/0\n")
    monkeypatch.setenv("CANARYD_REDIS_URL", "redis://here:6379/0")
    monkeypatch.setenv("CANARYD_REDIS_URL_FILE", str(tmp_path / "url"))
    with pytest.raises(ValidationError, match="set CANARYD_REDIS_URL or CANARYD_REDIS_URL_FILE, not both"):
        Settings()


@pytest.mark.parametrize(("content", "reason"), [(None, "cannot read it"), ("\n", "is empty")])
def test_a_missing_or_empty_secret_file_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "database_url"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("CANARYD_DATABASE_URL_FILE", str(path))
    with pytest.raises(ValidationError, match=f"CANARYD_DATABASE_URL_FILE={path}.*{reason}"):
        Settings()


def test_canaryd_refuses_to_start_with_the_example_token(tmp_path: Path) -> None:
    """At start, as an operator sees it: a non-zero exit and the reason, not the token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    env |= {
        "CANARYD_BOOTSTRAP_TOKEN": "change-me",
        "CANARYD_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/c.db",
    }
    canaryd = Path(sys.executable).with_name("canaryd")
    result = subprocess.run(
        [str(canaryd), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "CANARYD_BOOTSTRAP_TOKEN is 9 characters long; it must have at least 24" in " ".join(
        result.stderr.split()
    )
    assert "change-me" not in result.stderr
