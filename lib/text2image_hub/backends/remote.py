"""The remote backend: an OpenAI-compatible ``/images/generations`` client for one ``RemoteAccount`` (presets.py).

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
- 401 / 403 → ``RemoteAuthError`` (the user is asked to have the administrator check the token);
- any other 4xx → ``RemoteRejectedError`` (the request itself was refused: the user is told to change it);
- no complete answer within the account's deadline (a trickle, a late answer) → ``RemoteTimeoutError``, and a
  generation that may have reached the service is never sent twice;
- a 200 whose images are missing, undecodable or of the wrong size → ``RemoteServiceError``.

What an answer says (its images, ``Retry-After``, a refusal) is read by ``answers.py``.
``registry.RemoteBackendPool`` hands out one backend per account (base URL + model + SHA-256 of the token) so the
task worker and the ``/v1`` API share one limiter. The token lives in a ``SecretStr`` and is never put in a log line,
an error message or a repr; error details quoted from the server are scrubbed of it too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field

import httpx2

from ..errors import BackendUnavailableError, RemoteBusyError, RemoteServiceError, RemoteTimeoutError
from ..imaging import ImageRejectedError, decode_image
from ..ratelimit import RateLimiter
from . import MAX_IMAGES, GeneratedImage, GenerationControl, ModelInfo, ResolvedRequest
from .answers import (
    MAX_ERROR_BODY_BYTES,
    MAX_IMAGE_BYTES,
    Answer,
    error_detail,
    image_entries,
    inline_image,
    json_payload,
    raise_refusal,
    read_capped,
    retry_after,
)
from .presets import RemoteAccount

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 128  # the shared client's, for all accounts: well above the images in flight at the presets' limits
_CANCEL_POLL_SECONDS = 0.25


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
        self._limiter = limiter if limiter is not None else account.limits.new_limiter()
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
        payload = json_payload(answer.body, self._where())
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
        data = image_entries(json_payload(answer.body, self._where()), count, self._where())
        images: list[GeneratedImage] = []
        for index, item in enumerate(data):
            raw = await self._image_bytes(item)
            try:
                image = await asyncio.to_thread(decode_image, raw, request.size)
            except ImageRejectedError as exc:
                raise RemoteServiceError(f"{self._where()} answered an unusable image: {exc}") from exc
            images.append(GeneratedImage(image=image, seed=seeds[index] if seeds is not None else None))
            progress.add(1)
        return images

    async def _image_bytes(self, item: object) -> bytes:
        image = inline_image(item, self._where())
        return image if isinstance(image, bytes) else await self._download(image)

    async def _download(self, url: str) -> bytes:
        """Fetch an image the service left at ``url`` (no token sent: such URLs are pre-signed), with retries."""
        attempt = 0
        while True:
            attempt += 1
            failure: str
            try:
                async with (
                    asyncio.timeout(self._account.deadline),
                    self._http.stream("GET", url, follow_redirects=True) as response,
                ):
                    if response.status_code == 200:
                        return await read_capped(response, MAX_IMAGE_BYTES, self._where())
                    failure = f"HTTP {response.status_code}"
                    if response.status_code < 500 and response.status_code != 429:
                        raise RemoteServiceError(f"downloading an image from {self._where()} failed: {failure}")
            except (TimeoutError, httpx2.TimeoutException) as exc:
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
    ) -> Answer | None:
        """One logical call with retries; a 2xx answer, None if cancelled before sending, or a mapped error.

        Every attempt must be answered, body included, within the account's deadline (``PROBE_TIMEOUT`` for a
        probe): a service that trickles or answers late is given up, not waited for. A generation that may have
        reached the service (a timeout or a broken connection after sending) is not sent again: no preset's service
        is known to be idempotent, and each generation is paid for. One that never left (no connection) is.
        """
        retry = PROBE_RETRY if probe else self._retry
        deadline = PROBE_TIMEOUT if probe else self._account.deadline
        repeatable = method == "GET" or self._account.preset.idempotent
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
                async with asyncio.timeout(deadline):
                    answer = await self._send(method, url, body, images)
            except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:  # never left: send again
                failure, unreachable = f"unreachable ({type(exc).__name__}: {self._scrub(str(exc))})", True
            except (TimeoutError, httpx2.TimeoutException, httpx2.TransportError) as exc:
                failure, unreachable = self._lost(exc, deadline), True
                if not repeatable:
                    raise RemoteTimeoutError(
                        f"{self._where()}: {failure}; not sent again, the service may be making the image already"
                    ) from exc
            else:
                if answer.status < 300:
                    return answer
                server_delay = retry_after(answer.headers, self._retry.max_retry_after)
                if answer.status == 429:
                    busy += 1
                    charge, priority = await self._busy(answer, server_delay, busy, retry, images, control)
                    continue
                detail = self._detail(answer)
                raise_refusal(answer, self._where(), self._account.preset.provider, detail)
                failure = f"HTTP {answer.status}: {detail}"
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

    def _lost(self, exc: BaseException, deadline: float) -> str:
        if isinstance(exc, TimeoutError):
            return f"no complete answer within {deadline:g} s"
        if isinstance(exc, httpx2.TimeoutException):
            return f"no answer in time ({type(exc).__name__})"
        return f"the connection failed after the request was sent ({type(exc).__name__}: {self._scrub(str(exc))})"

    async def _busy(
        self,
        answer: Answer,
        server_delay: float | None,
        busy: int,
        retry: RetryPolicy,
        images: int,
        control: GenerationControl | None,
    ) -> tuple[int, bool]:
        """A 429: how the refused request goes again (images to take, whether before the queue); or the end."""
        delay = server_delay if server_delay is not None else retry.default_retry_after
        if busy > retry.max_busy_retries:
            raise RemoteBusyError(
                f"{self._where()} still answered 429 (too many requests) after {busy} tries: {self._detail(answer)}",
                retry_after=delay,
            )
        if self._limiter.refused(server_delay, delay):
            logger.info("%s answered 429: every request of the account waits %.3f s", self._where(), delay)
            return images, False
        logger.debug("%s answered 429: this request waits %.3f s", self._where(), delay)
        await self._pause(delay, control)
        return 0, True

    async def _pause(self, seconds: float, control: GenerationControl | None) -> None:
        """Sleep ``seconds``, or less if the generation is cancelled meanwhile."""
        await _unless_cancelled(asyncio.sleep(seconds), control)

    async def _acquire(self, images: int, control: GenerationControl | None, *, priority: bool = False) -> bool:
        """Wait for the limiter; False if the user cancels first (nothing is taken while waiting)."""
        if control is not None and control.cancelled:
            return False
        taken = await _unless_cancelled(self._limiter.acquire(images, priority=priority), control)
        return taken and not (control is not None and control.cancelled)

    async def _send(self, method: str, url: str, body: dict[str, object] | None, images: int) -> Answer:
        headers = {"Accept": "application/json"}
        secret = self._account.api_key.get_secret_value()
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        async with self._http.stream(method, url, json=body, headers=headers) as response:
            cap = MAX_IMAGE_BYTES * 2 * max(1, images) if response.status_code < 300 else MAX_ERROR_BODY_BYTES
            content = await read_capped(response, cap, self._where(), truncate=response.status_code >= 300)
            return Answer(response.status_code, response.headers, content)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: about base·2^(attempt-1), between half and all of it, capped."""
        ceiling = min(self._retry.backoff_max, self._retry.backoff_base * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _detail(self, answer: Answer) -> str:
        return self._scrub(error_detail(answer.body))

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


async def _unless_cancelled(work: Awaitable[None], control: GenerationControl | None) -> bool:
    """Await ``work``, giving up (and cancelling it) once ``control`` is cancelled; True when it completed."""
    future = asyncio.ensure_future(work)
    try:
        while not future.done():
            if control is not None and control.cancelled:
                return False
            await asyncio.wait({future}, timeout=_CANCEL_POLL_SECONDS)
    finally:
        if not future.done():
            future.cancel()
    future.result()
    return True
