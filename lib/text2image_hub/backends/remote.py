"""The remote backend: an OpenAI-compatible ``/images/generations`` client with presets (IONOS, OpenAI, custom).

``RemotePreset`` says what a service accepts (sizes, prompt length, images per request, whether a seed may be sent)
and its published limits; ``RemoteAccount`` is one admin configuration of it (URL, token, model, limits).
``RemoteBackend`` turns a ``ResolvedRequest`` into single-image (or ``max_images_per_request``-image) HTTP calls
run concurrently behind a shared ``RateLimiter``, retries what is worth retrying and maps the rest onto the error
tree:

- 429 → wait ``Retry-After`` (at most ``RetryPolicy.max_retry_after``), pause every caller of the same account
  (``RateLimiter.penalize``) and retry; still 429 after ``max_busy_retries`` → ``RemoteBusyError``. A wait shorter
  than one image interval means our bucket ran a little ahead of the service's: it is trimmed by that much and the
  retry goes first without paying again; a longer one means the service counts images we did not (another client
  on the same token): the retry pays again and queues;
- 5xx, timeouts, connection errors → bounded retries with exponential backoff and jitter, then
  ``RemoteServiceError`` (5xx) or ``BackendUnavailableError`` (unreachable / no answer);
- 401 / 403 → ``RemoteAuthError`` ("The IONOS token was rejected: check the admin settings.");
- any other 4xx, or a 200 whose images are missing, undecodable or of the wrong size → ``RemoteServiceError``.

``RemoteBackendPool`` hands out one backend per account (base URL + model + SHA-256 of the token) so the task worker
and the ``/v1`` API share one limiter. The token lives in a ``SecretStr`` and is never put in a log line, an error
message or a repr; error details quoted from the server are scrubbed of it too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx2
from PIL import Image, UnidentifiedImageError
from pydantic import SecretStr

from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    RemoteAuthError,
    RemoteBusyError,
    RemoteServiceError,
)
from ..imaging import ImageSize
from ..ratelimit import RateLimiter
from . import MAX_IMAGES, GeneratedImage, GenerationControl, ModelInfo, ResolvedRequest

logger = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 30 * 1024 * 1024  # one downloaded or decoded image
MAX_ERROR_BODY_BYTES = 64 * 1024  # what we read of an error answer
UNLIMITED_CONCURRENCY = 8  # images in flight at once for a service without a client-side limit (OpenAI's)
MAX_CONNECTIONS = 128  # the shared client's, for all accounts: well above the images in flight at the presets' limits
_DETAIL_CHARS = 300
_CANCEL_POLL_SECONDS = 0.25
# How much later than our limiter the service may count a request (network, its queue): the limiter keeps this much
# of the image rate in reserve. 0.1 s is 1/60 image at IONOS's 10 images/min: free in throughput.
CLOCK_SKEW_SECONDS = 0.1


def _sizes(*texts: str) -> tuple[ImageSize, ...]:
    return tuple(ImageSize.parse(text) for text in texts)


@dataclass(frozen=True)
class RemotePreset:
    """What one kind of remote service accepts and allows; the admin picks one and may override URL/model/limits."""

    id: str
    provider: str  # shown to users: "The <provider> token was rejected…"
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
    sizes=_sizes("1024x1024", "768x768", "512x512", "1024x768", "768x1024", "1280x720", "720x1280"),
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
    sizes=_sizes("1024x1024", "768x768", "512x512", "1024x768", "768x1024", "1280x720", "720x1280"),
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
    sizes: tuple[ImageSize, ...] = ()  # empty: the preset's

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
        sizes: tuple[ImageSize, ...] = (),
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
        limits = RemoteLimits(
            images_per_minute=rate,
            burst=burst or defaults.burst or (1 if rate else None),
            requests_per_second=defaults.requests_per_second,
            max_prompt_length=defaults.max_prompt_length,
            max_images_per_request=defaults.max_images_per_request,
        )
        return cls(preset=source, base_url=url, api_key=key, model=chosen_model, limits=limits, sizes=sizes)

    @property
    def supported_sizes(self) -> tuple[ImageSize, ...]:
        return self.sizes or self.preset.sizes

    def model_info(self) -> ModelInfo:
        """What the service accepts, as ``resolve`` checks it: no steps, guidance or negative prompt; a seed only
        where the preset is known to take one."""
        sizes = self.supported_sizes
        default_size = self.preset.default_size if self.preset.default_size in sizes else sizes[0]
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


@dataclass(frozen=True)
class RetryPolicy:
    """How hard we try: attempts for 5xx / timeouts / connection errors, and for 429s."""

    max_attempts: int = 4  # first try included
    backoff_base: float = 1.0  # seconds before the 2nd attempt (then doubled, with jitter)
    backoff_max: float = 20.0
    max_busy_retries: int = 8  # 429s tolerated per request
    max_retry_after: float = 60.0  # cap on a server's Retry-After
    default_retry_after: float = 6.0  # a 429 without Retry-After


PROBE_TIMEOUT = 0.8
"""Seconds a readiness probe of the service may take, all phases together."""
PROBE_RETRY = RetryPolicy(max_attempts=1, max_busy_retries=0)


def remote_http_client() -> httpx2.AsyncClient:
    """The shared client for remote backends (created in the app lifespan, closed there).

    The rate limiter, not the connection pool, sets the pace: a request it lets through must find a connection.
    One connection per image in flight: the burst plus the rate times the service time (IONOS: 20 + 10/min × 6 s
    ≈ 21; a service allowing 600/min at 5 s an image, like the time-scaled IONOS imitation: ~70).
    """
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(connect=10.0, read=120.0, write=30.0, pool=60.0),
        limits=httpx2.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=16),
        follow_redirects=False,
        headers={"User-Agent": "text2image_hub"},
    )


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: httpx2.Headers
    body: bytes


class RemoteBackend:
    """An OpenAI-compatible image service behind a shared rate limiter (see the module docstring)."""

    def __init__(
        self,
        account: RemoteAccount,
        http: httpx2.AsyncClient,
        *,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._account = account
        self._http = http
        self._limiter = limiter if limiter is not None else limiter_for(account.limits)
        self._retry = retry if retry is not None else RetryPolicy()
        self._rng = rng if rng is not None else random.Random()  # jitter, not secrets  # noqa: S311
        self._model = account.model_info()

    def __repr__(self) -> str:
        return (
            f"RemoteBackend(preset={self._account.preset.id!r}, base_url={self._account.base_url!r}, "
            f"model={self._account.model!r})"
        )

    @property
    def name(self) -> str:
        return "remote"

    @property
    def model(self) -> ModelInfo:
        return self._model

    @property
    def account(self) -> RemoteAccount:
        return self._account

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the app."""

    async def list_models(self, *, probe: bool = False) -> list[str]:
        """The model ids the service offers (``GET {base_url}/models``).

        ``probe``: one attempt within ``PROBE_TIMEOUT`` seconds, no retries (readiness checks must answer fast).
        """
        answer = await self._call("GET", "/models", None, images=0, control=None, probe=probe)
        if answer is None:  # cannot happen: without a control nothing cancels
            raise RemoteServiceError(f"{self._where()}: listing models was cancelled")
        payload = self._json(answer.body)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise RemoteServiceError(f"{self._where()} answered /models without a data list")
        return [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]

    async def generate(
        self, request: ResolvedRequest, control: GenerationControl, *, wait_limit: float | None = None
    ) -> list[GeneratedImage]:
        """Fan the request out into calls of at most ``max_images_per_request`` images (one per seed when the
        service takes seeds), concurrently behind the shared limiter (whose queue is no reason to give up:
        ``wait_limit`` does not apply)."""
        limits = self._account.limits
        per_request = 1 if request.seeds is not None else max(1, min(limits.max_images_per_request, self._burst))
        chunks = [(first, min(per_request, request.count - first)) for first in range(0, request.count, per_request)]
        logger.debug(
            "remote generation: %d image(s) %s on %s/%s in %d request(s)",
            request.count,
            request.size,
            self._account.preset.id,
            self._account.model,
            len(chunks),
        )
        progress = _Progress(control, request.count)
        tasks = [
            asyncio.create_task(self._generate_chunk(request, first, count, control, progress))
            for first, count in chunks
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        control.raise_if_cancelled()
        images: list[GeneratedImage] = []
        for chunk_images in results:
            if chunk_images is None:  # only a cancelled generation has such chunks, and it raised above
                raise RemoteServiceError("a remote request ended without images")
            images.extend(chunk_images)
        return images

    @property
    def _burst(self) -> int:
        return self._limiter.max_images or MAX_IMAGES

    async def _generate_chunk(
        self, request: ResolvedRequest, first: int, count: int, control: GenerationControl, progress: _Progress
    ) -> list[GeneratedImage] | None:
        seeds = request.seeds[first : first + count] if request.seeds is not None else None
        body: dict[str, object] = {
            "model": self._account.model,
            "prompt": request.prompt,
            "size": str(request.size),
            "n": count,
        }
        if self._account.preset.response_format is not None:
            body["response_format"] = self._account.preset.response_format
        if seeds is not None:
            body["seed"] = seeds[0]
        answer = await self._call("POST", "/images/generations", body, images=count, control=control)
        if answer is None:
            return None
        payload = self._json(answer.body)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != count:
            found = len(data) if isinstance(data, list) else "no"
            raise RemoteServiceError(f"{self._where()} answered {found} image(s) where {count} were asked for")
        images: list[GeneratedImage] = []
        for index, item in enumerate(data):
            raw = await self._image_bytes(item)
            image = await asyncio.to_thread(_decode_image, raw, request.size, self._where())
            images.append(GeneratedImage(image=image, seed=seeds[index] if seeds is not None else None))
            progress.add(1)
        return images

    async def _image_bytes(self, item: object) -> bytes:
        if isinstance(item, dict) and isinstance(item.get("b64_json"), str):
            text: str = item["b64_json"]
            if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
                raise RemoteServiceError(f"{self._where()} answered an image over {MAX_IMAGE_BYTES} bytes")
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise RemoteServiceError(f"{self._where()} answered invalid base64 image data") from exc
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            return await self._download(item["url"])
        raise RemoteServiceError(f"{self._where()} answered an image entry with neither b64_json nor url")

    async def _download(self, url: str) -> bytes:
        """Fetch an image the service left at ``url`` (no token sent: such URLs are pre-signed), with retries."""
        if not url.startswith(("http://", "https://")):
            raise RemoteServiceError(f"{self._where()} answered an image URL that is not http(s)")
        attempt = 0
        while True:
            attempt += 1
            failure: str
            try:
                async with self._http.stream("GET", url, follow_redirects=True) as response:
                    if response.status_code == 200:
                        return await _read_capped(response, MAX_IMAGE_BYTES, self._where())
                    failure = f"HTTP {response.status_code}"
                    if response.status_code < 500 and response.status_code != 429:
                        raise RemoteServiceError(f"downloading an image from {self._where()} failed: {failure}")
            except httpx2.TimeoutException as exc:
                failure = f"timeout ({type(exc).__name__})"
            except httpx2.TransportError as exc:
                failure = f"connection error ({type(exc).__name__})"
            if attempt >= self._retry.max_attempts:
                raise RemoteServiceError(
                    f"downloading an image from {self._where()} failed after {attempt} attempts: {failure}"
                )
            delay = self._backoff(attempt)
            logger.warning(
                "downloading an image from %s failed (%s); retrying in %.1f s", self._where(), failure, delay
            )
            await asyncio.sleep(delay)

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, object] | None,
        *,
        images: int,
        control: GenerationControl | None,
        probe: bool = False,
    ) -> _Answer | None:
        """One logical call with retries; a 2xx answer, None if cancelled before sending, or a mapped error."""
        retry = PROBE_RETRY if probe else self._retry
        timeout = httpx2.Timeout(PROBE_TIMEOUT) if probe else None
        url = self._account.base_url + path
        attempt = 0
        busy = 0
        charge = images  # images to take from the limiter before this attempt
        priority = False  # retry of a 429 whose images are already paid for: goes before the queue
        while True:
            if not await self._acquire(charge, control, priority=priority):
                return None
            failure: str
            unreachable = False
            server_delay: float | None = None
            try:
                answer = await self._send(method, url, body, images, timeout)
            except httpx2.TimeoutException as exc:
                failure, unreachable = f"no answer in time ({type(exc).__name__})", True
            except httpx2.TransportError as exc:
                failure, unreachable = f"unreachable ({type(exc).__name__}: {self._scrub(str(exc))})", True
            else:
                if answer.status < 300:
                    return answer
                server_delay = self._retry_after(answer.headers)
                if answer.status == 429:
                    busy += 1
                    delay = server_delay if server_delay is not None else retry.default_retry_after
                    if busy > retry.max_busy_retries:
                        raise RemoteBusyError(
                            f"{self._where()} still answered 429 (too many requests) after {busy} tries: "
                            f"{self._detail(answer)}",
                            retry_after=delay,
                        )
                    logger.info("%s answered 429; every request waits %.3f s", self._where(), delay)
                    if self._image_budget_behind(server_delay):
                        self._limiter.penalize(delay)
                        charge, priority = images, False
                    else:
                        self._limiter.penalize(delay, images=self._shortfall(delay))
                        charge, priority = 0, True
                    continue
                if answer.status in (401, 403):
                    raise RemoteAuthError(
                        f"{self._where()} rejected the token (HTTP {answer.status}): {self._detail(answer)}",
                        user_message=f"The {self._account.preset.provider} token was rejected: check the admin "
                        "settings.",
                    )
                if answer.status < 500:
                    raise RemoteServiceError(
                        f"{self._where()} refused the request (HTTP {answer.status}): {self._detail(answer)}"
                    )
                failure = f"HTTP {answer.status}: {self._detail(answer)}"
            attempt += 1
            if attempt >= retry.max_attempts:
                message = f"{self._where()} failed after {attempt} attempts: {failure}"
                if unreachable:
                    raise BackendUnavailableError(message)
                raise RemoteServiceError(message)
            delay = max(self._backoff(attempt), server_delay or 0.0)
            logger.warning("%s: %s; retrying in %.1f s", self._where(), failure, delay)
            charge, priority = images, False  # the service may have counted the failed attempt
            await asyncio.sleep(delay)

    def _image_budget_behind(self, retry_after: float | None) -> bool:
        """Whether a 429 says the service counts images we did not (another client on the same token, a stricter
        limit): a wait of at least one image interval, or none given. Then the retry pays for its images again and
        queues like any request, which brings our bucket down towards the service's.

        A shorter wait is the request rate, or our bucket running a little ahead of the service's (network jitter
        between our clock and its): the images this call took still stand for it, ``_shortfall`` trims our bucket
        by what the service still lacked, and the retry goes first once the wait is over.
        """
        rate = self._limiter.images_per_minute
        if retry_after is None or rate is None:
            return True
        return retry_after >= 60.0 / rate

    def _shortfall(self, retry_after: float) -> float:
        """The images the service lacked, read from its short ``Retry-After`` (one image per interval)."""
        rate = self._limiter.images_per_minute
        return retry_after * rate / 60.0 if rate is not None else 0.0

    async def _acquire(self, images: int, control: GenerationControl | None, *, priority: bool = False) -> bool:
        """Wait for the limiter; False (nothing taken) if the user cancels meanwhile."""
        if control is None:
            await self._limiter.acquire(images, priority=priority)
            return True
        if control.cancelled:
            return False
        waiter = asyncio.ensure_future(self._limiter.acquire(images, priority=priority))
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=_CANCEL_POLL_SECONDS)
                if not waiter.done() and control.cancelled:
                    waiter.cancel()
                    return False
        finally:
            if not waiter.done():
                waiter.cancel()
        waiter.result()
        return not control.cancelled

    async def _send(
        self, method: str, url: str, body: dict[str, object] | None, images: int, limits: httpx2.Timeout | None = None
    ) -> _Answer:
        headers = {"Accept": "application/json"}
        secret = self._account.api_key.get_secret_value()
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        chosen = limits if limits is not None else httpx2.USE_CLIENT_DEFAULT
        async with self._http.stream(method, url, json=body, headers=headers, timeout=chosen) as response:
            cap = MAX_IMAGE_BYTES * 2 * max(1, images) if response.status_code < 300 else MAX_ERROR_BODY_BYTES
            content = await _read_capped(response, cap, self._where(), truncate=response.status_code >= 300)
            return _Answer(response.status_code, response.headers, content)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: about base·2^(attempt-1), between half and all of it, capped."""
        ceiling = min(self._retry.backoff_max, self._retry.backoff_base * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _retry_after(self, headers: httpx2.Headers) -> float | None:
        """``Retry-After`` in seconds (delta or HTTP date), capped at ``max_retry_after``; None if absent/invalid."""
        value = headers.get("retry-after")
        if value is None:
            return None
        seconds: float | None
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
            except (TypeError, ValueError, IndexError):
                seconds = None
        if seconds is None or seconds != seconds:  # absent or NaN
            return None
        return min(max(seconds, 0.0), self._retry.max_retry_after)

    def _json(self, body: bytes) -> object:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RemoteServiceError(f"{self._where()} answered something that is not JSON") from exc

    def _detail(self, answer: _Answer) -> str:
        return self._scrub(_error_detail(answer.body))

    def _scrub(self, text: str) -> str:
        secret = self._account.api_key.get_secret_value()
        return text.replace(secret, "***") if secret else text

    def _where(self) -> str:
        return f"{self._account.preset.provider} ({self._account.base_url})"


@dataclass
class _Progress:
    control: GenerationControl
    total: int
    done: int = field(default=0)

    def add(self, images: int) -> None:
        self.done += images
        self.control.report_progress(self.done / self.total)


class RemoteBackendPool:
    """One ``RemoteBackend`` (and so one rate limiter) per account, shared by the task worker and the /v1 API."""

    def __init__(self, http: httpx2.AsyncClient, *, retry: RetryPolicy | None = None) -> None:
        self._http = http
        self._retry = retry
        self._backends: dict[tuple[str, str, str], RemoteBackend] = {}

    def backend_for(self, account: RemoteAccount) -> RemoteBackend:
        """The backend for ``account``; the same one (same limiter) while URL, model and token stay the same."""
        key = account.key
        existing = self._backends.get(key)
        if existing is not None and existing.account == account:
            return existing
        limiter = None
        if existing is not None and existing.account.limits == account.limits:
            limiter = existing.limiter  # e.g. only the size list changed: keep the budget already spent
        backend = RemoteBackend(account, self._http, limiter=limiter, retry=self._retry)
        self._backends[key] = backend
        return backend

    async def aclose(self) -> None:
        self._backends.clear()


def limiter_for(limits: RemoteLimits) -> RateLimiter:
    return RateLimiter(
        images_per_minute=limits.images_per_minute,
        burst=limits.burst,
        requests_per_second=limits.requests_per_second,
        skew=CLOCK_SKEW_SECONDS,
    )


async def _read_capped(response: httpx2.Response, cap: int, where: str, *, truncate: bool = False) -> bytes:
    """Read at most ``cap`` bytes of the body: more is a ``RemoteServiceError`` (or cut off when ``truncate``)."""
    declared = response.headers.get("content-length")
    if not truncate and declared is not None and declared.isdigit() and int(declared) > cap:
        raise RemoteServiceError(f"{where} answered {declared} bytes, over the {cap}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            if truncate:
                chunks.append(chunk[: len(chunk) - (size - cap)])
                break
            raise RemoteServiceError(f"{where} answered more than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_image(raw: bytes, size: ImageSize, where: str) -> Image.Image:
    """Decode and check the image (runs in a thread)."""
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise RemoteServiceError(f"{where} answered image data that does not decode: {exc}") from exc
    if image.size != (size.width, size.height):
        raise RemoteServiceError(f"{where} answered a {image.width}x{image.height} image where {size} was asked for")
    return image


def _error_detail(body: bytes) -> str:
    """The admin-readable message of an error answer: OpenAI's envelope, IONOS's ``messages``, or plain text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return _shorten(text) or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            code = error.get("code") or error.get("type")
            return _shorten(f"{error['message']}" + (f" ({code})" if code else ""))
        if isinstance(error, str) and error:
            return _shorten(error)
        messages = payload.get("messages")
        if isinstance(messages, list) and messages:
            parts = [
                f"{item.get('errorCode', '?')}: {item.get('message', '')}" if isinstance(item, dict) else str(item)
                for item in messages
            ]
            return _shorten("; ".join(parts))
        for key in ("detail", "message"):
            if payload.get(key):
                return _shorten(str(payload[key]))
    return _shorten(text)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


__all__ = [
    "CUSTOM",
    "IONOS",
    "OPENAI",
    "PRESETS",
    "RemoteAccount",
    "RemoteBackend",
    "RemoteBackendPool",
    "RemoteLimits",
    "RemotePreset",
    "RetryPolicy",
    "preset",
    "remote_http_client",
]
