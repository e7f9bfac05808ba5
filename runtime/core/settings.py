"""Where b3-jobs runs, read once from the environment into one frozen object (pydantic-settings)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runtime.core.errors import B3JobsError
from runtime.core.manifest import REF


class SettingsError(B3JobsError):
    """An environment variable holds a value b3-jobs cannot use."""


def _settings_error(exc: ValidationError, settings: type[BaseSettings]) -> SettingsError:
    """Every problem of `exc`, each naming its environment variable, what was found and what was expected."""
    env = {name: field.validation_alias for name, field in settings.model_fields.items()}
    env.update({alias: alias for alias in env.values() if isinstance(alias, str)})
    problems = [
        "%s: %s, got %r" % (env.get(str(e["loc"][0]), e["loc"][0]) if e["loc"] else "settings", e["msg"], e["input"])
        for e in exc.errors()
    ]
    return SettingsError("bad settings: " + "; ".join(problems))


class Settings(BaseSettings):
    """The environment says where things run; the manifest says what runs.

    `Settings()` reads the variables named below (empty means unset); keyword arguments, by field
    name, win over them. `Settings.from_env()` is the same with a SettingsError naming the variable.
    """

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", case_sensitive=True, env_ignore_empty=True, populate_by_name=True
    )

    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    data_dir: Path = Field(default=Path("./var"), validation_alias="B3JOBS_DATA_DIR")
    bus_url: str | None = Field(default=None, validation_alias="BUS_URL")
    manifest: Path = Field(default=Path("./schedules.toml"), validation_alias="B3JOBS_MANIFEST")
    host: str = Field(default="127.0.0.1", validation_alias="B3JOBS_HOST")
    port: int = Field(default=3101, ge=0, le=65535, validation_alias="B3JOBS_PORT")
    token: str | None = Field(default=None, validation_alias="B3JOBS_TOKEN")
    # Host names (`name` or `name:port`) the web process answers to besides loopback at its own port:
    # the names a proxy or browser uses for it. Checked without a token, and with one once set.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(default=(), validation_alias="B3JOBS_ALLOWED_HOSTS")
    max_connections: int = Field(default=10_000, ge=1, validation_alias="B3JOBS_MAX_CONNECTIONS")
    namespace: str = Field(default="b3jobs", pattern=r"^[A-Za-z0-9_]+$", validation_alias="B3JOBS_NAMESPACE")
    lease_s: float = Field(default=15.0, ge=1, le=3600, validation_alias="B3JOBS_LEASE_S")
    # Unset: the manifest's `[app] services` builds ctx.services.
    services: str | None = Field(default=None, pattern=REF, validation_alias="B3JOBS_SERVICES")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        """`B3JOBS_ALLOWED_HOSTS=jobs.example.com,10.0.0.5:3101`: comma-separated, case ignored."""
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            return tuple(str(v).strip().lower() for v in value if str(v).strip())
        return value

    @property
    def backend(self) -> str:
        return "redis" if self.redis_url else "sqlite"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / ("%s.sqlite3" % self.namespace)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The process environment's settings (or only `environ`'s), `overrides` on top; SettingsError if bad."""
        values: dict[str, Any] = {}
        if environ is not None:
            # Every variable given, so the process environment fills none of them.
            for name, field in cls.model_fields.items():
                values[name] = environ.get(str(field.validation_alias)) or field.default
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise _settings_error(exc, cls) from exc


def bus_url(settings: Settings) -> str:
    """Where events go: BUS_URL, else REDIS_URL, else memory:// (events stay inside this process)."""
    return settings.bus_url or settings.redis_url or "memory://"
