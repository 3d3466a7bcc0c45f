"""The admin settings: the declarative form in Nextcloud and the validated runtime configuration read per task.

Every setting has one name everywhere: the form's field id, the ``RuntimeConfig`` attribute and the environment
default ``T2I_<FIELD ID IN CAPITALS>``. A value the admin saved wins over the environment; a field never saved (no
row in ``appconfig_ex``) or saved empty falls back to the environment default, then to the built-in default.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from nc_py_api.ex_app.ui.settings import SettingsField, SettingsFieldType, SettingsForm
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigurationError, InvalidRequestError
from .i18n import LANGUAGE_NAMES
from .imaging import ImageSize
from .policy import PromptPolicy, compile_terms

FORM_ID = "admin_settings"  # must not contain "<appid>_": the settings page strips it and saves silently fail
SENSITIVE_FIELDS = ("remote_api_key", "api_keys")
_CIPHERTEXT = re.compile(r"^[0-9a-f]{64}\|[0-9a-f]{32}\|[0-9a-f]{128}\|\d+$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

BackendChoice = Literal["auto", "local", "remote", "local_then_remote"]
AutomaticBackend = Literal["local", "remote"]
PresetChoice = Literal["ionos", "openai", "custom"]


class RuntimeConfig(BaseModel):
    """The admin's choices, validated. Built per task / request by ``config_from_values``.

    ``backend`` is never ``auto`` once read: ``config_from_values`` puts the machine's choice in its place.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    backend: BackendChoice = "auto"
    remote_preset: PresetChoice = "ionos"
    remote_base_url: str = ""
    remote_api_key: SecretStr = SecretStr("")
    remote_model: str = ""
    remote_images_per_minute: int = Field(0, ge=0, le=100_000)
    remote_burst: int = Field(0, ge=0, le=100_000)
    remote_deadline: float = Field(0.0, ge=0, le=3600)
    local_model: str = ""
    default_size: ImageSize | None = None
    default_steps: int = Field(0, ge=0, le=200)
    prompt_length_policy: Literal["reject", "truncate"] = "reject"
    watermark: bool = True
    include_prompt_in_metadata: bool = False
    local_wait_limit: float = Field(30.0, ge=0, le=3600)
    api_keys: SecretStr = SecretStr("")
    api_rate_limit: int = Field(0, ge=0, le=100_000)
    styles: bool = True
    blocked_terms: str = Field("", max_length=20_000)
    blocked_message: str = Field("", max_length=500)
    language: str = ""

    @field_validator("remote_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("default_size", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            return None if isinstance(value, str) else value
        try:
            return ImageSize.parse(value)
        except InvalidRequestError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("watermark", "include_prompt_in_metadata", "styles", mode="before")
    @classmethod
    def _flag(cls, value: object) -> object:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        return value

    @field_validator("remote_api_key", "api_keys", mode="before")
    @classmethod
    def _not_ciphertext(cls, value: object) -> object:
        if isinstance(value, str) and _CIPHERTEXT.match(value.strip()):
            raise ValueError("is stored encrypted by an older setup: enter it again in the admin settings")
        return value.strip() if isinstance(value, str) else value

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        value = value.strip()
        if value and value not in LANGUAGE_NAMES:
            raise ValueError(f"must be empty (automatic) or one of {', '.join(LANGUAGE_NAMES)}")
        return value

    @field_validator("blocked_terms")
    @classmethod
    def _terms(cls, value: str) -> str:
        compile_terms(value)  # a ValueError names the bad regular expression
        return value

    def prompt_policy(self) -> PromptPolicy:
        return PromptPolicy.from_settings(self.blocked_terms, self.blocked_message)

    def api_key_list(self) -> tuple[str, ...]:
        return tuple(key.strip() for key in self.api_keys.get_secret_value().split(",") if key.strip())


FIELD_IDS: tuple[str, ...] = tuple(RuntimeConfig.model_fields)


def config_from_values(
    saved: Mapping[str, str], defaults: Mapping[str, str], *, automatic: AutomaticBackend = "remote"
) -> RuntimeConfig:
    """Validate saved values over environment defaults; an invalid value is a ``ConfigurationError`` naming it.

    ``backend=auto`` (the default) becomes ``automatic``: what the deployment can run (``Settings.automatic_backend``:
    the local pipeline on a GPU or with a model folder, else the remote service).
    """
    # An empty value means "not set": the sensitive keys are created empty on enable, the form's empty choices
    # ("the model's default", …) mean the default too, and so does an environment variable set to "".
    merged = {
        key: value
        for values in (defaults, saved)
        for key, value in values.items()
        if key in RuntimeConfig.model_fields and value != ""
    }
    config = _validated(merged)
    return config.model_copy(update={"backend": automatic}) if config.backend == "auto" else config


def _validated(values: Mapping[str, str]) -> RuntimeConfig:
    try:
        return RuntimeConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "unknown"
        raise ConfigurationError(
            f"Invalid admin setting '{field}': {first['msg']}. Fix it in Administration → Artificial intelligence "
            f"→ Text2Image Hub (or the environment variable T2I_{field.upper()}).",
            field=field,
        ) from None


def settings_form(
    local_model_ids: tuple[str, ...],
    sizes: tuple[str, ...],
    environment: Mapping[str, str] | None = None,
    status: str = "",
) -> SettingsForm:
    """The admin form shown in Administration → Artificial intelligence.

    Its defaults are what applies until the admin saves a value: the environment defaults (``T2I_…``) over the
    built-in ones (secrets never shown). ``status`` says what is in force now and what is missing.
    """
    defaults = form_defaults(environment or {})
    return SettingsForm(
        id=FORM_ID,
        section_type="admin",
        section_id="ai",
        title="Text2Image Hub",
        description=(
            'Where images are generated for the Assistant\'s "Generate image" and Files\' "New → Generate image". '
            "Changes apply to the next image; no restart needed." + (f"\n\nStatus: {status}" if status else "")
        ),
        fields=[
            SettingsField(
                id="backend",
                title="Image generator",
                type=SettingsFieldType.SELECT,
                default=defaults["backend"],
                options={
                    "Automatic: this server's GPU if it has one, else the remote service": "auto",
                    "On this server (local GPU or CPU)": "local",
                    "Remote service (IONOS AI Model Hub, OpenAI, …)": "remote",
                    "On this server, falling back to the remote service": "local_then_remote",
                },
                description=(
                    "On this server, prompts never leave it. The fallback is used when the local model is missing, "
                    "busy too long, or fails."
                ),
            ),
            SettingsField(
                id="remote_preset",
                title="Remote service",
                type=SettingsFieldType.SELECT,
                default=defaults["remote_preset"],
                options={
                    "IONOS AI Model Hub (EU, FLUX.1-schnell)": "ionos",
                    "OpenAI": "openai",
                    "Other OpenAI-compatible service": "custom",
                },
            ),
            SettingsField(
                id="remote_base_url",
                title="Remote service URL",
                type=SettingsFieldType.URL,
                default=defaults["remote_base_url"],
                placeholder="https://openai.inference.de-txl.ionos.com/v1",
                description="Leave empty to use the preset's URL. Must end with /v1 for most services.",
            ),
            SettingsField(
                id="remote_api_key",
                title="Remote service token",
                type=SettingsFieldType.PASSWORD,
                default=defaults["remote_api_key"],
                sensitive=True,
                description="The IONOS AI Model Hub token (IONOS DCD → AI Model Hub → API Tokens) or API key.",
            ),
            SettingsField(
                id="remote_model",
                title="Remote model",
                type=SettingsFieldType.TEXT,
                default=defaults["remote_model"],
                placeholder="black-forest-labs/FLUX.1-schnell",
                description="Leave empty for the preset's model.",
            ),
            SettingsField(
                id="remote_images_per_minute",
                title="Remote limit: images per minute",
                type=SettingsFieldType.NUMBER,
                default=defaults["remote_images_per_minute"],
                description="Your contract's limit; 0 uses the preset's (IONOS: 10 per minute, bursts of 20).",
            ),
            SettingsField(
                id="remote_burst",
                title="Remote limit: burst",
                type=SettingsFieldType.NUMBER,
                default=defaults["remote_burst"],
                description="Images allowed at once before the per-minute limit applies; 0 uses the preset's.",
            ),
            SettingsField(
                id="remote_deadline",
                title="Remote limit: seconds per request",
                type=SettingsFieldType.NUMBER,
                default=defaults["remote_deadline"],
                description="How long one request may take, answer included, before it is given up; 0 uses the "
                "preset's (IONOS: 30 s).",
            ),
            SettingsField(
                id="local_model",
                title="Local model",
                type=SettingsFieldType.SELECT,
                default=defaults["local_model"],
                options={"Default for this server's hardware": "", **{model: model for model in local_model_ids}},
                description="Models whose weights this server has or downloads on installation.",
            ),
            SettingsField(
                id="default_size",
                title="Default image size",
                type=SettingsFieldType.SELECT,
                default=defaults["default_size"],
                options={"The model's default": "", **{size: size for size in sizes}},
            ),
            SettingsField(
                id="default_steps",
                title="Default steps (local models)",
                type=SettingsFieldType.NUMBER,
                default=defaults["default_steps"],
                description="0 uses the model's default (FLUX.1-schnell: 4, SDXL-Turbo: 1–4, SDXL: 30).",
            ),
            SettingsField(
                id="prompt_length_policy",
                title="Prompts longer than the model accepts",
                type=SettingsFieldType.SELECT,
                default=defaults["prompt_length_policy"],
                options={"Fail with a message naming the limit": "reject", "Shorten them to the limit": "truncate"},
            ),
            SettingsField(
                id="watermark",
                title='Visible "AI-generated" mark',
                type=SettingsFieldType.CHECKBOX,
                default=defaults["watermark"],
                label="Add the mark when the task asks for it (Nextcloud's default)",
                description="PNG metadata always says the image is AI-generated.",
            ),
            SettingsField(
                id="include_prompt_in_metadata",
                title="Prompt in image metadata",
                type=SettingsFieldType.CHECKBOX,
                default=defaults["include_prompt_in_metadata"],
                label="Store the prompt inside each PNG",
            ),
            SettingsField(
                id="local_wait_limit",
                title="Fallback wait (seconds)",
                type=SettingsFieldType.NUMBER,
                default=defaults["local_wait_limit"],
                description="With the fallback: how long a task waits for a busy local GPU before going remote.",
            ),
            SettingsField(
                id="styles",
                title="Styles",
                type=SettingsFieldType.CHECKBOX,
                default=defaults["styles"],
                label="Offer styles (photograph, watercolour, pixel art, …) in the Assistant and on /v1",
                description="A style adds a few words to the prompt; they count against the remote prompt limit.",
            ),
            SettingsField(
                id="blocked_terms",
                title="Blocked terms",
                type=SettingsFieldType.TEXT,
                default=defaults["blocked_terms"],
                placeholder="term one; term two; re:regular expression",
                description="Prompts containing one of these words are refused before anything is generated or "
                "sent anywhere. Separate terms with ';'. Whole words, any case; 're:' starts a regular expression.",
            ),
            SettingsField(
                id="blocked_message",
                title="Message for a refused prompt",
                type=SettingsFieldType.TEXT,
                default=defaults["blocked_message"],
                placeholder="This request is not allowed on this server.",
                description="What the user reads; empty: the default, in the user's language.",
            ),
            SettingsField(
                id="language",
                title="Language of the provider's texts",
                type=SettingsFieldType.SELECT,
                default=defaults["language"],
                options={
                    "Automatic: the language Nextcloud used when the app was enabled": "",
                    **{name: code for code, name in LANGUAGE_NAMES.items()},
                },
                description="Used for the provider's name and options in the Assistant, and for the messages of "
                "users whose language is not known. Each user's own messages are in their language.",
            ),
            SettingsField(
                id="api_keys",
                title="API keys for /v1",
                type=SettingsFieldType.PASSWORD,
                default=defaults["api_keys"],
                sensitive=True,
                description="Comma-separated bearer keys for the OpenAI-compatible API (other apps, scripts).",
            ),
            SettingsField(
                id="api_rate_limit",
                title="API limit per user or key (requests per minute)",
                type=SettingsFieldType.NUMBER,
                default=defaults["api_rate_limit"],
                description="0 means no limit beyond the backend's own.",
            ),
        ],
    )


FormValue = bool | int | float | str


def form_defaults(environment: Mapping[str, str]) -> dict[str, FormValue]:
    """Each field's form default: its environment default when valid, else the built-in one; secrets always empty."""
    defaults: dict[str, FormValue] = {}
    for name, field in RuntimeConfig.model_fields.items():
        value: object = field.default
        if name in environment and name not in SENSITIVE_FIELDS:
            with contextlib.suppress(ValidationError):
                value = getattr(RuntimeConfig.model_validate({name: environment[name]}), name)
        if isinstance(value, ImageSize):
            value = str(value)
        defaults[name] = value if isinstance(value, FormValue) else ""  # a secret, or no size: "the default"
    return defaults


class ConfigReader:
    """Reads the runtime config per task / request: saved values (from Nextcloud) over environment defaults."""

    def __init__(
        self,
        fetch: Callable[[tuple[str, ...]], Awaitable[dict[str, str]]] | None,
        defaults: Mapping[str, str],
        *,
        automatic: AutomaticBackend = "remote",
    ) -> None:
        self._fetch = fetch
        self._defaults = dict(defaults)
        self._automatic: AutomaticBackend = automatic

    async def load(self) -> RuntimeConfig:
        saved = await self._fetch(FIELD_IDS) if self._fetch is not None else {}
        return config_from_values(saved, self._defaults, automatic=self._automatic)
