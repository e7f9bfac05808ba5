"""Settings: read from the environment by pydantic-settings, keyword arguments on top, errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime.core.settings import Settings, SettingsError


def test_the_variables_are_read_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    monkeypatch.setenv("B3JOBS_PORT", "8080")
    monkeypatch.setenv("B3JOBS_LEASE_S", "30")
    monkeypatch.setenv("B3JOBS_TOKEN", "")
    settings = Settings.from_env()
    assert (settings.redis_url, settings.backend) == ("redis://example:6379/2", "redis")
    assert (settings.port, settings.lease_s) == (8080, 30.0)
    assert settings.token is None and settings.services is None
    # Keyword arguments, by field name, win over the environment
    assert Settings(port=9, redis_url=None).backend == "sqlite"


def test_a_given_environment_is_the_only_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    settings = Settings.from_env({"B3JOBS_DATA_DIR": "/srv/b3", "B3JOBS_NAMESPACE": "staging"})
    assert settings.redis_url is None
    assert settings.sqlite_path == Path("/srv/b3/staging.sqlite3")


def test_every_bad_variable_is_named_with_what_was_found_and_expected() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"B3JOBS_PORT": "70000", "B3JOBS_NAMESPACE": "has-dash"}, lease_s=0)
    text = str(caught.value)
    assert "B3JOBS_PORT: Input should be less than or equal to 65535, got '70000'" in text
    assert "B3JOBS_NAMESPACE: String should match pattern '^[A-Za-z0-9_]+$', got 'has-dash'" in text
    assert "B3JOBS_LEASE_S: Input should be greater than or equal to 1, got 0" in text
    with pytest.raises(ValidationError):
        Settings(services="not a reference")
    with pytest.raises(ValidationError):
        Settings(brapi_api_key="the B3 app reads its own settings")  # type: ignore[call-arg]
