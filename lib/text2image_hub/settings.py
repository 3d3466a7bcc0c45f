"""Deploy-time settings, read once from the environment in ``__main__`` and passed down.

AppAPI's variables keep their names (``APP_ID``, ``APP_SECRET``, ``NEXTCLOUD_URL``, …); ours start with ``T2I_``.
Environment defaults for the admin settings (``T2I_BACKEND``, ``T2I_REMOTE_API_KEY``, …) are collected into
``config_defaults`` and used until an admin saves a value (see ``admin.py``).

``load_settings`` builds them from the mapping it is given and nothing else: pydantic-settings' own sources (the
process environment, ``.env`` files) are switched off, so a test or a stray exported variable cannot leak in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from . import app_version
from .backends.catalog import check_speedups
from .errors import ConfigurationError

ComputeDevice = Literal["CPU", "CUDA", "ROCM"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False, populate_by_name=True)

    app_id: str = Field("text2image_hub", validation_alias="APP_ID")
    app_secret: SecretStr | None = Field(None, validation_alias="APP_SECRET")
    app_version: str = Field(default_factory=app_version, validation_alias="APP_VERSION")
    app_host: str = Field("127.0.0.1", validation_alias="APP_HOST")
    app_port: int = Field(9033, validation_alias="APP_PORT")
    nextcloud_url: str | None = Field(None, validation_alias="NEXTCLOUD_URL")
    persistent_storage: Path = Field(Path("data"), validation_alias="APP_PERSISTENT_STORAGE")
    compute_device: ComputeDevice = Field("CPU", validation_alias="COMPUTE_DEVICE")

    model_path: Path | None = Field(None, validation_alias="T2I_MODEL_PATH")
    poll_interval: float = Field(5.0, gt=0, le=3600, validation_alias="T2I_POLL_INTERVAL")
    local_speedups: str = Field("", validation_alias="T2I_LOCAL_SPEEDUPS")
    image_ttl: int = Field(3600, ge=60, validation_alias="T2I_IMAGE_TTL")
    log_level: LogLevel = Field("INFO", validation_alias="T2I_LOG_LEVEL")
    nextcloud_timeout: float = Field(30.0, gt=0, validation_alias="T2I_NEXTCLOUD_TIMEOUT")

    config_defaults: Mapping[str, str] = Field(default_factory=dict)
    """Environment defaults of the admin settings, by field id (``T2I_<FIELD>``)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # only what load_settings passes: never os.environ or a .env file

    @field_validator("compute_device", "log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("local_speedups")
    @classmethod
    def _known_speedups(cls, value: str) -> str:
        try:
            check_speedups(value.split(","))
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("model_path", "nextcloud_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def app_secret_value(self) -> str:
        """The app secret in clear ("" when unset): for signing and checking AppAPI requests only, never for logs."""
        return self.app_secret.get_secret_value() if self.app_secret is not None else ""

    @property
    def proxy_path(self) -> str:
        """Where Nextcloud serves this app's routes (AppAPI's proxy), below ``NEXTCLOUD_URL``."""
        return f"/index.php/apps/app_api/proxy/{self.app_id}"

    @property
    def standalone(self) -> bool:
        """No Nextcloud: settings from the environment, no task worker, /v1 protected by API keys only."""
        return self.nextcloud_url is None

    @property
    def automatic_backend(self) -> Literal["local", "remote"]:
        """What ``backend=auto`` means here: the local pipeline on a GPU or with a model folder, else remote."""
        return "local" if self.torch_device == "cuda" or self.model_path is not None else "remote"

    @property
    def torch_device(self) -> str:
        return "cuda" if self.compute_device in ("CUDA", "ROCM") else "cpu"

    @property
    def speedups(self) -> frozenset[str]:
        return check_speedups(self.local_speedups.split(","))  # checked at start-up already: this cannot raise


def load_settings(environ: Mapping[str, str] | None = None, field_ids: tuple[str, ...] = ()) -> Settings:
    """Build the settings from ``environ`` (default ``os.environ``), with ``T2I_<FIELD>`` defaults for ``field_ids``.

    An invalid value raises ``SettingsError`` with one line naming the variable.
    """
    env = dict(os.environ if environ is None else environ)
    upper_env = {key.upper(): value for key, value in env.items()}
    defaults = {field: upper_env[f"T2I_{field.upper()}"] for field in field_ids if f"T2I_{field.upper()}" in upper_env}
    names = {
        field.validation_alias for field in Settings.model_fields.values() if isinstance(field.validation_alias, str)
    }
    values: dict[str, object] = {key: value for key, value in upper_env.items() if key in names}
    try:
        return Settings.model_validate({**values, "config_defaults": defaults})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        raise SettingsError(f"Invalid environment variable {name}: {first['msg']}") from None


class SettingsError(ValueError):
    """A deploy-time setting is invalid; the message is one line naming the variable."""
