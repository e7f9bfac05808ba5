"""Where b3-jobs runs, read once from the environment into one frozen object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.core.errors import B3JobsError


class SettingsError(B3JobsError):
    """An environment variable holds a value b3-jobs cannot use."""


class Settings(BaseModel):
    """The environment says where things run; the manifest says what runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str | None = None
    data_dir: Path = Path("./var")
    bus_url: str | None = None
    manifest: Path = Path("./schedules.toml")
    host: str = "127.0.0.1"
    port: int = Field(default=3101, ge=0, le=65535)
    token: str | None = None
    namespace: str = Field(default="b3jobs", pattern=r"^[A-Za-z0-9_]+$")
    lease_s: float = Field(default=15.0, ge=1, le=3600)
    services: str = Field(default="market.services:build_services", pattern=r"^[\w.]+:\w+$")
    brapi_api_key: str | None = None
    brapi_base_url: str | None = None

    @property
    def backend(self) -> str:
        return "redis" if self.redis_url else "sqlite"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / ("%s.sqlite3" % self.namespace)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        env = os.environ if environ is None else environ
        names = {
            "REDIS_URL": "redis_url",
            "B3JOBS_DATA_DIR": "data_dir",
            "BUS_URL": "bus_url",
            "B3JOBS_MANIFEST": "manifest",
            "B3JOBS_HOST": "host",
            "B3JOBS_PORT": "port",
            "B3JOBS_TOKEN": "token",
            "B3JOBS_NAMESPACE": "namespace",
            "B3JOBS_SERVICES": "services",
            "B3JOBS_LEASE_S": "lease_s",
            "BRAPI_API_KEY": "brapi_api_key",
            "BRAPI_BASE_URL": "brapi_base_url",
        }
        values: dict[str, object] = {field: env[var] for var, field in names.items() if env.get(var)}
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            by_field = {field: var for var, field in names.items()}
            problems = [
                "%s: %s, got %r" % (by_field.get(str(e["loc"][0]), e["loc"][0]), e["msg"], e.get("input"))
                for e in exc.errors()
            ]
            raise SettingsError("bad settings: " + "; ".join(problems)) from exc


def bus_url(settings: Settings) -> str:
    """Where events go: BUS_URL, else REDIS_URL, else memory:// (events stay inside this process)."""
    return settings.bus_url or settings.redis_url or "memory://"
