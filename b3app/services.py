"""The B3 app's services factory (`[app] services` in schedules.toml): the market's Services, from brapi settings.

Settings read here, from the environment:
  BRAPI_API_KEY, BRAPI_BASE_URL   brapi when either is set, else the offline sample provider
  BRAPI_RATE_LIMIT                requests toward brapi as LIMIT/SECONDS, default "5/1" (5 per second);
                                  "off" to not pace (a plan with no limit). Not applied to the sample.
  BRAPI_HISTORY_RANGE             how much daily history a backfill asks brapi for (its `range`), default
                                  "3mo", which every plan serves; "1y", "2y", ... on plans that allow them.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from market.services import DEFAULT_HISTORY_RANGE, DEFAULT_RATE_LIMIT, Services, parse_history_range, parse_rate_limit
from runtime.core.settings import Settings, SettingsError


class BrapiSettings(BaseSettings):
    """Where quotes come from, and how fast brapi may be asked."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=True, env_ignore_empty=True, populate_by_name=True)

    api_key: str | None = Field(default=None, validation_alias="BRAPI_API_KEY")
    base_url: str | None = Field(default=None, validation_alias="BRAPI_BASE_URL")
    rate_limit: str = Field(default=DEFAULT_RATE_LIMIT, validation_alias="BRAPI_RATE_LIMIT")
    history_range: str = Field(default=DEFAULT_HISTORY_RANGE, validation_alias="BRAPI_HISTORY_RANGE")


def build_services(settings: Settings) -> Services:
    """The factory the runtime calls once per process with its Settings; SettingsError naming a bad BRAPI_* variable.

    An existing market store is opened at once: it migrates, and says when it holds bars of another
    source than the active provider's (kept apart, never analysed with them).
    """
    brapi = BrapiSettings()
    try:
        rate_limit = parse_rate_limit(brapi.rate_limit)
    except ValueError as exc:
        raise SettingsError("bad settings: BRAPI_RATE_LIMIT: %s" % exc) from exc  # the runtime's, so its CLI exits 2
    try:
        history_range = parse_history_range(brapi.history_range)
    except ValueError as exc:
        raise SettingsError("bad settings: BRAPI_HISTORY_RANGE: %s" % exc) from exc
    services = Services(
        settings.data_dir,
        brapi_api_key=brapi.api_key,
        brapi_base_url=brapi.base_url,
        rate_limit=rate_limit,
        history_range=history_range,
    )
    services.open_existing_store()
    return services
