"""What remote image services accept, and one admin configuration of one: the remote counterpart of ``catalog.py``.

``RemotePreset`` says what a service accepts (sizes, prompt length, images per request, whether a seed may be sent)
and its published limits; ``RemoteAccount`` is one admin configuration of it (URL, token, model, limits) and says
as a ``ModelInfo`` what a request to it may ask for. No HTTP here: the admin form, the registry and the status line
use it without the client.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from pydantic import SecretStr

from ..errors import ConfigurationError
from ..imaging import ImageSize
from ..ratelimit import RateLimiter
from . import ModelInfo

UNLIMITED_CONCURRENCY = 8
"""Images in flight at once for a service without a client-side limit (OpenAI's)."""
CLOCK_SKEW_SECONDS = 0.1
"""How much later than our limiter the service may count a request (network, its queue): the limiter keeps this much
of the image rate in reserve. 0.1 s is 1/60 image at IONOS's 10 images/min: free in throughput."""


def _sizes(*texts: str) -> tuple[ImageSize, ...]:
    return tuple(ImageSize.parse(text) for text in texts)


_COMMON_SIZES = _sizes("1024x1024", "768x768", "512x512", "1024x768", "768x1024", "1280x720", "720x1280")


@dataclass(frozen=True)
class RemotePreset:
    """What one kind of remote service accepts and allows; the admin picks one and may override URL/model/limits."""

    id: str
    provider: str  # shown to users: "The <provider> image service refused this server's access…"
    base_url: str
    model: str
    sizes: tuple[ImageSize, ...]
    default_size: ImageSize
    max_prompt_length: int | None
    max_images_per_request: int
    images_per_minute: float | None
    burst: int | None
    requests_per_second: float | None
    accepts_seed: bool = False  # send "seed" only where the service is known to accept it
    idempotent: bool = False  # whether a generation that may have reached it can be sent again: none is known to be
    response_format: str | None = None  # sent only when set; None: send nothing, accept b64_json and url
    seconds_per_image: float = 5.0  # typical service time, for the provider's expected runtime
    license: str = ""


# IONOS AI Model Hub, FLUX.1-schnell. Verified from IONOS's documentation: the base URL, the model id, "size" in
# the request (their example uses 1024x1024), answers in data[].b64_json, 10 images/min with bursts of 20 per
# contract, prompts up to 256 characters, 401 with an IONOS-shaped body for a bad token, 429 when over the limit;
# from our notes (DESIGN.md §5): n > 1 is rejected, 5 requests/s. ASSUMED (not documented by IONOS): the size list
# below (FLUX.1-schnell renders any multiple of 32 up to ~1.5 MP; these are the usual square / 4:3 / 16:9 sizes),
# and that "seed" and "response_format" may be unknown to the service, so neither is sent.
IONOS = RemotePreset(
    id="ionos",
    provider="IONOS",
    base_url="https://openai.inference.de-txl.ionos.com/v1",
    model="black-forest-labs/FLUX.1-schnell",
    sizes=_COMMON_SIZES,
    default_size=ImageSize(1024, 1024),
    max_prompt_length=256,
    max_images_per_request=1,
    images_per_minute=10,
    burst=20,
    requests_per_second=5,
    accepts_seed=False,
    response_format=None,
    seconds_per_image=6.0,
    license="apache-2.0",
)

# OpenAI. The GPT image models answer 1024x1024, 1536x1024 and 1024x1536, take prompts up to 32,000 characters and
# n from 1 to 10, and always answer base64 (they reject "response_format", so it is not sent). OpenAI's reference
# lists gpt-image-1 and dall-e-3 as shut down / retired in 2026, hence gpt-image-1.5 by default (the admin may pick
# another model; its limits then are the admin's). No client-side image limit: OpenAI's limits depend on the
# account's tier, and its 429s carry Retry-After, which we honour.
OPENAI = RemotePreset(
    id="openai",
    provider="OpenAI",
    base_url="https://api.openai.com/v1",
    model="gpt-image-1.5",
    sizes=_sizes("1024x1024", "1536x1024", "1024x1536"),
    default_size=ImageSize(1024, 1024),
    max_prompt_length=32_000,
    max_images_per_request=10,
    images_per_minute=None,
    burst=None,
    requests_per_second=None,
    accepts_seed=False,
    response_format=None,
    seconds_per_image=20.0,
)

# Any other OpenAI-compatible server: URL, model and limits come from the admin; one image per request always works.
CUSTOM = RemotePreset(
    id="custom",
    provider="image service",
    base_url="",
    model="",
    sizes=_COMMON_SIZES,
    default_size=ImageSize(1024, 1024),
    max_prompt_length=None,
    max_images_per_request=1,
    images_per_minute=None,
    burst=None,
    requests_per_second=None,
    accepts_seed=False,
    response_format=None,
    seconds_per_image=10.0,
)

PRESETS: tuple[RemotePreset, ...] = (IONOS, OPENAI, CUSTOM)


def default_deadline(source: RemotePreset) -> float:
    """A few times the service's usual time per image, and never under 30 s (IONOS: 30 s, OpenAI: 100 s)."""
    return max(30.0, 5 * source.seconds_per_image)


def preset(preset_id: str) -> RemotePreset:
    """The preset called ``preset_id`` (``ionos``, ``openai``, ``custom``); else a ``ConfigurationError``."""
    for candidate in PRESETS:
        if candidate.id == preset_id:
            return candidate
    raise ConfigurationError(
        f"Unknown remote service preset {preset_id[:40]!r}: choose one of {', '.join(p.id for p in PRESETS)}.",
        field="remote_preset",
    )


@dataclass(frozen=True)
class RemoteLimits:
    """Client-side limits for one account; None means "no limit"."""

    images_per_minute: float | None
    burst: int | None
    requests_per_second: float | None
    max_prompt_length: int | None
    max_images_per_request: int

    def new_limiter(self) -> RateLimiter:
        """A fresh rate limiter enforcing these limits (one per account: see ``registry.RemoteBackendPool``)."""
        return RateLimiter(
            images_per_minute=self.images_per_minute,
            burst=self.burst,
            requests_per_second=self.requests_per_second,
            skew=CLOCK_SKEW_SECONDS,
        )

    @classmethod
    def of(cls, source: RemotePreset) -> RemoteLimits:
        return cls(
            images_per_minute=source.images_per_minute,
            burst=source.burst,
            requests_per_second=source.requests_per_second,
            max_prompt_length=source.max_prompt_length,
            max_images_per_request=source.max_images_per_request,
        )


@dataclass(frozen=True)
class RemoteAccount:
    """One configured remote service: built by the config code from the admin settings (``from_preset``)."""

    preset: RemotePreset
    base_url: str
    api_key: SecretStr
    model: str
    limits: RemoteLimits
    deadline: float = 60.0
    """Seconds one request may take, answer included (``remote_deadline``; default: ``default_deadline``)."""

    @classmethod
    def from_preset(
        cls,
        source: RemotePreset,
        api_key: SecretStr | str,
        *,
        base_url: str = "",
        model: str = "",
        images_per_minute: float | None = None,
        burst: int | None = None,
        deadline: float | None = None,
    ) -> RemoteAccount:
        """The preset with the admin's overrides (empty / None / 0: the preset's value); checks what is required."""
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        url = (base_url.strip() or source.base_url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"The remote service URL is {'missing' if not url else 'not an http(s) URL'}: set remote_base_url.",
                field="remote_base_url",
            )
        chosen_model = model.strip() or source.model
        if not chosen_model:
            raise ConfigurationError("The remote model is missing: set remote_model.", field="remote_model")
        if not key.get_secret_value() and source.id != "custom":
            raise ConfigurationError(
                f"The {source.provider} token is missing: set remote_api_key.", field="remote_api_key"
            )
        defaults = RemoteLimits.of(source)
        rate = images_per_minute or defaults.images_per_minute
        limits = replace(defaults, images_per_minute=rate, burst=burst or defaults.burst or (1 if rate else None))
        chosen_deadline = deadline or default_deadline(source)
        return cls(
            preset=source, base_url=url, api_key=key, model=chosen_model, limits=limits, deadline=chosen_deadline
        )

    def model_info(self) -> ModelInfo:
        """What the service accepts, as ``resolve`` checks it: no steps, guidance or negative prompt; a seed only
        where the preset is known to take one."""
        sizes = self.preset.sizes
        default_size = self.preset.default_size
        rate = self.limits.images_per_minute
        return ModelInfo(
            id=self.model,
            backend="remote",
            sizes=sizes,
            default_size=default_size,
            steps=None,
            default_guidance=None,
            supports_negative_prompt=False,
            seconds_per_image=max(self.preset.seconds_per_image, 60.0 / rate if rate else 0.0),
            max_guidance=0.0,
            accepts_seed=self.preset.accepts_seed,
            max_prompt_length=self.limits.max_prompt_length,
            concurrency=self.limits.burst or UNLIMITED_CONCURRENCY,
            license=self.preset.license if self.model == self.preset.model else "",
        )

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the account's shared limits: base URL, model and the token's SHA-256 (never the token)."""
        digest = hashlib.sha256(self.api_key.get_secret_value().encode()).hexdigest()
        return (self.base_url, self.model, digest)
